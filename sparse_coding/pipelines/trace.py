"""trace.py's pipeline: config -> model and transcoders -> attribution graph -> graph files.

TRANSCODERS replace every MLP of MODEL_DIR; the graph explains the next token
after TRACE_PROMPT (else PROMPT), with TRACE_* shaping pruning, logit nodes
and batching (`algorithms.trace_graph`). `pipelines.trace_publish` turns the
result into the project's Graph and writes it.
"""

import dataclasses
import logging

from sparse_coding.algorithms.trace_graph import TraceGraph, TraceOptions, trace_graph
from sparse_coding.config import Config
from sparse_coding.errors import ConfigError
from sparse_coding.models.bos import settle_prepend_bos, warn_bos_mismatch
from sparse_coding.models.gpt2 import load_model, resolve_device, resolve_dtype, tokenize_prompt
from sparse_coding.models.transformer import GPT2
from sparse_coding.pipelines.downloads import Download
from sparse_coding.pipelines.loading import load_config_transcoders
from sparse_coding.pipelines.preflight import model_layer_count
from sparse_coding.runtime.phases import PhaseTimer
from sparse_coding.text.tokenizer import Tokenizer
from sparse_coding.transcoders.sources import hub_files, release_layers, resolve_layer, transcoders_bos
from sparse_coding.transcoders.transcoder import TranscoderSet

logger = logging.getLogger(__name__)


def trace_prompt(config: Config) -> str:
    """The text trace.py explains the next token of."""
    return config.TRACE_PROMPT if config.TRACE_PROMPT is not None else config.PROMPT


def transcoder_downloads(config: Config) -> list[Download]:
    """Every hub download TRANSCODERS needs, one per layer (for preflight's offline check)."""
    if not config.TRANSCODERS:
        raise ConfigError("TRANSCODERS is unset; trace.py needs transcoders, e.g. 'gpt2-small-transcoders'")
    n_layers = model_layer_count(config) or 12  # unknown before download: GPT-2 small's
    downloads = []
    for layer in release_layers(config.TRANSCODERS, n_layers):
        resolved = resolve_layer(config.TRANSCODERS, layer)
        if needed := hub_files(resolved):
            names = tuple(name for _, name in needed)
            downloads.append(Download(f"transcoder {resolved.description}", needed[0][0], names, names, None))
    return downloads


def trace_prepend_bos(config: Config, *, warn: bool = False) -> bool:
    """PREPEND_BOS for trace.py: unset, as TRANSCODERS were trained (`sources.trained_prepend_bos`;
    True when nothing records it, as circuit-tracer always prepends it); set, the key (`warn`:
    saying so when the transcoders were trained the other way)."""
    trained = {} if not config.TRANSCODERS else transcoders_bos(config.TRANSCODERS)
    value, mismatched = settle_prepend_bos(config.PREPEND_BOS, trained)
    if warn:
        warn_bos_mismatch(value, mismatched)
    return value


def compute_trace(
    config: Config, phases: PhaseTimer | None = None
) -> tuple[TraceGraph, GPT2, Tokenizer, TranscoderSet]:
    """The attribution graph of the config's prompt, with the model, tokenizer and transcoders it used."""
    phases = phases or PhaseTimer()
    device = resolve_device(config.DEVICE)
    dtype = resolve_dtype(config.DTYPE)
    with phases.phase("model load"):
        model, tokenizer = load_model(config.MODEL_DIR, device, dtype)
    with phases.phase("transcoder load"):
        transcoders = load_config_transcoders(config, model, device, resolve_dtype(config.SAE_DTYPE, dtype))
    prepend_bos = trace_prepend_bos(config)
    ids = tokenize_prompt(
        tokenizer, trace_prompt(config), prepend_bos=prepend_bos, max_len=model.config.n_positions
    )[0].to(device)
    with phases.phase("compute: attribution graph"):
        bos = tokenizer.bos_token_id if prepend_bos else None
        graph = trace_graph(
            model, transcoders, ids, bos_token_id=bos, options=config.options(TraceOptions, prefix="TRACE_")
        )
    for name, seconds in graph.phases.items():
        logger.info("trace %s: %.1fs", name, seconds)
    return graph, model, tokenizer, transcoders


def run_trace(config: Config, phases: PhaseTimer | None = None, *, new_graph: bool = False) -> str:
    """Build trace.py's graph and merge it into TRACE_DOT_FILE (+ .json, image, viewer); the closing line."""
    from sparse_coding.pipelines.trace_publish import publish_trace

    phases = phases or PhaseTimer()
    config = dataclasses.replace(config, PREPEND_BOS=trace_prepend_bos(config, warn=True))
    graph, model, tokenizer, transcoders = compute_trace(config, phases)
    return publish_trace(graph, config, model, tokenizer, transcoders, phases=phases, new_graph=new_graph)
