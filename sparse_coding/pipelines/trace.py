"""trace.py's pipeline: config -> model and transcoders -> attribution graph -> graph files.

TRANSCODERS replace every MLP of MODEL_DIR; the graph explains the next token
after TRACE_PROMPT (else PROMPT), with TRACE_* shaping pruning, logit nodes
and batching (`algorithms.trace_graph`).

Only the pruned graph goes into the files: its nodes (ids as in
`sparse_coding.nodes`) and its edges, each with the signed direct effect.
Node values: `activation` (a feature's activation, a logit's probability, an
error node's norm), `attribution` (influence on the logits). Labels:
features' top-activating contexts on DATASET (else the prompt) and logit
cells (their decoder rows through the unembedding); the token of each
embedding and logit node as its explanation; Neuronpedia explanations where
a Neuronpedia set holds the transcoders' features (`sources.neuronpedia_set`:
Dunefsky et al.'s, as ``gpt2-small/{layer}-tres-dc``), fetched as for SAE
graphs (NEURONPEDIA). The graph's metadata holds the sign convention, the
replacement and completeness scores, the logit targets, the prompt's tokens
and each kept node's cumulative influence share (circuit-tracer's pruning
score, which a Neuronpedia export carries).
"""

import dataclasses
import logging

import torch

from sparse_coding.algorithms.trace_graph import TraceGraph, TraceOptions, trace_graph
from sparse_coding.config import Config
from sparse_coding.errors import ConfigError
from sparse_coding.graphs.graph import Graph, Node
from sparse_coding.graphs.graph_files import update_graph_files
from sparse_coding.labels.logit_lens import set_logit_cells
from sparse_coding.labels.transcoder_contexts import collect_transcoder_contexts
from sparse_coding.models.bos import settle_prepend_bos, warn_bos_mismatch
from sparse_coding.models.gpt2 import load_model, resolve_device, resolve_dtype, tokenize_prompt
from sparse_coding.models.transformer import GPT2
from sparse_coding.nodes import embed_id, error_id, feature_id, logit_id, site_key, with_position
from sparse_coding.pipelines.downloads import Download
from sparse_coding.pipelines.inputs import config_batches
from sparse_coding.pipelines.loading import load_config_transcoders
from sparse_coding.pipelines.preflight import model_layer_count
from sparse_coding.pipelines.publish import closing_line, neuronpedia_answers, run_metadata, save_caches
from sparse_coding.runtime.phases import PhaseTimer
from sparse_coding.text.tokenizer import Tokenizer
from sparse_coding.text.tokens import token_text
from sparse_coding.transcoders.sources import (
    hub_files,
    neuronpedia_set,
    release_layers,
    resolve_layer,
    transcoders_bos,
)
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
    phases = phases or PhaseTimer()
    config = dataclasses.replace(config, PREPEND_BOS=trace_prepend_bos(config, warn=True))
    graph, model, tokenizer, transcoders = compute_trace(config, phases)
    return publish_trace(graph, config, model, tokenizer, transcoders, phases=phases, new_graph=new_graph)


def node_records(tg: TraceGraph, tokenizer: Tokenizer, source: str = "") -> list[Node]:
    """Every node of the (unpruned) graph, in adjacency order, with its values; feature nodes carry
    their Neuronpedia set when TRANSCODERS `source` has one."""
    rep = tg.replacement
    n_layers, n_pos = rep.errors.shape[:2]
    nodes = [
        Node(with_position(feature_id(tg.kind, layer, index), pos), tg.kind, layer, index, activation=act,
             hook=f"blocks.{layer}.hook_mlp_out", neuronpedia_id=neuronpedia_set(source, layer))
        for layer, pos, index, act in zip(*(column.tolist() for column in tg.features), strict=True)
    ]  # fmt: skip
    norms = rep.errors.norm(dim=-1).tolist()  # (n_layers, pos)
    nodes += [
        Node(with_position(error_id("mlp", layer), pos), "mlp", layer, None, activation=norms[layer][pos],
             hook=f"blocks.{layer}.hook_mlp_out")
        for layer in range(n_layers) for pos in range(n_pos)
    ]  # fmt: skip
    nodes += [
        Node(embed_id(pos), "embed", 0, token, explanation=f"token {pos}: {token_text(tokenizer, token)!r}")
        for pos, token in enumerate(rep.input_ids.tolist())
    ]
    for node, influence in zip(nodes, tg.influence.tolist(), strict=False):
        node.attribution = influence
    logits = zip(tg.logits.token_ids.tolist(), tg.logits.probabilities.tolist(), strict=True)
    nodes += [
        Node(logit_id(token), "logit", n_layers, token, activation=prob,
             explanation=f"output {token_text(tokenizer, token)!r} (p={prob:.3f})")
        for token, prob in logits
    ]  # fmt: skip
    return nodes


def to_graph(tg: TraceGraph, tokenizer: Tokenizer, source: str = "") -> Graph:
    """The pruned graph: kept nodes, and kept edges source -> target with their direct effect."""
    nodes = node_records(tg, tokenizer, source)
    graph = Graph()
    for i in torch.nonzero(tg.pruned.node_mask).flatten().tolist():
        graph.add_node(nodes[i])
    targets, sources = torch.nonzero(tg.pruned.edge_mask, as_tuple=True)
    effects = tg.adjacency[targets, sources].tolist()
    for t, s, effect in zip(targets.tolist(), sources.tolist(), effects, strict=True):
        graph.add_edge(nodes[s].id, nodes[t].id, effect)
    return graph


@torch.no_grad()
def add_logit_cells(
    graph: Graph, tg: TraceGraph, transcoders: TranscoderSet, model: GPT2, tokenizer: Tokenizer, n_tokens: int
) -> None:
    """Most promoted and suppressed next tokens of every feature node: its decoder rows (summed over
    the layers it writes to) through the final layer norm's gain and the unembedding, as the
    dashboards rank them (`labels.logit_lens`), all features in one product per layer."""
    features = [node for node in graph.nodes.values() if node.site == tg.kind]
    if n_tokens == 0 or not features:
        return
    for layer in {node.layer for node in features}:
        chosen = [node for node in features if node.layer == layer]
        index = torch.tensor([node.feature for node in chosen])
        rows = sum(transcoders.decoder_rows(layer, t, index) for t in transcoders.targets(layer))
        set_logit_cells(chosen, rows, model, tokenizer, n_tokens=n_tokens)


def add_contexts(
    graph: Graph,
    tg: TraceGraph,
    transcoders: TranscoderSet,
    model: GPT2,
    tokenizer: Tokenizer,
    config: Config,
) -> None:
    """Top-activating contexts (TOP_K of the SEQ_PER_DIM_CAP collected, VIEW either side) of feature nodes."""
    nodes = [node for node in graph.nodes.values() if node.site == tg.kind]
    wanted: dict[int, list[int]] = {}
    for node in nodes:
        wanted.setdefault(node.layer, []).append(node.feature)
    if not wanted:
        return
    cache = collect_transcoder_contexts(
        model,
        transcoders,
        tokenizer,
        config_batches(config, tokenizer, model),
        features=wanted,
        per_feature=config.SEQ_PER_DIM_CAP,
        view=config.VIEW,
    )
    for node in nodes:
        node.contexts = cache.contexts(site_key(tg.kind, node.layer), node.feature, config.TOP_K)


def trace_metadata(tg: TraceGraph, config: Config, tokenizer: Tokenizer, transcoders: TranscoderSet) -> dict:
    """What shaped the graph and what its numbers mean (the run's record once merged)."""
    top = [
        {"token_id": int(t), "token": token_text(tokenizer, int(t)), "probability": round(float(p), 6)}
        for t, p in zip(tg.logits.token_ids, tg.logits.probabilities, strict=True)
    ]
    kept_nodes, kept_edges = int(tg.pruned.node_mask.sum()), int(tg.pruned.edge_mask.sum())
    summary = (
        f"explains {top[0]['token']!r} (p={top[0]['probability']:.3f}) and {len(top) - 1} more next tokens; "
        f"{kept_nodes} of {tg.counts.total} nodes kept; replacement score {tg.replacement_score:.3f}, "
        f"completeness score {tg.completeness_score:.3f}"
    )
    kept = torch.nonzero(tg.pruned.node_mask[: tg.counts.total - tg.counts.logits]).flatten().tolist()
    ids = [node.id for node in node_records(tg, tokenizer)]
    return run_metadata(config, {"transcoders": config.TRANSCODERS}, "trace.py") | {
        "prompt": trace_prompt(config),
        "prompt_tokens": [token_text(tokenizer, int(t)) for t in tg.replacement.input_ids],
        "transcoders": transcoders.describe(),
        "replacement_score": tg.replacement_score,
        "completeness_score": tg.completeness_score,
        "logit_targets": top,
        "counts": {
            "active_features": len(tg.replacement.features.layer),
            **tg.counts._asdict(),
            "kept_nodes": kept_nodes,
            "kept_edges": kept_edges,
        },  # fmt: skip
        "summary": summary,
        "cumulative_influence": {ids[i]: round(float(tg.pruned.cumulative[i]), 6) for i in kept},
    }


def publish_trace(
    tg: TraceGraph, config: Config, model: GPT2, tokenizer: Tokenizer, transcoders: TranscoderSet, *,
    phases: PhaseTimer, new_graph: bool = False,
) -> str:  # fmt: skip
    """Label the pruned graph and merge it into DATA_DIR/<model>/TRACE_DOT_FILE (+ .json, image, viewer)."""
    graph = to_graph(tg, tokenizer, config.TRANSCODERS)
    with phases.phase("labels: contexts"):
        add_contexts(graph, tg, transcoders, model, tokenizer, config)
    with phases.phase("labels: logit cells"):
        add_logit_cells(graph, tg, transcoders, model, tokenizer, config.LOGIT_TOKENS)
    with phases.phase("labels: Neuronpedia"):
        answers = neuronpedia_answers(graph, config)
    graph.metadata = trace_metadata(tg, config, tokenizer, transcoders)
    graph.metadata["phases"] = phases.metadata() | {f"trace: {k}": round(v, 3) for k, v in tg.phases.items()}
    out_dir = config.model_data_dir(config.MODEL_DIR)
    dot_path, image_path = out_dir / config.TRACE_DOT_FILE, out_dir / config.TRACE_FILE
    with phases.phase("write and render"):
        merged = update_graph_files(graph, dot_path, image_path, new_graph=new_graph)
    save_caches(answers)  # after the graph: a failed run leaves the cache as it was
    return closing_line("trace.py", graph, merged, dot_path, image_path)
