"""Label a freshly computed graph and merge it into the graph files of a run.

Shared by pipe.py and fast.py: metadata, top-activating contexts, direct
logit effects, Neuronpedia explanations, then
`graph_files.update_graph_files` (atomic .dot + .json + image).
"""

import logging
import shutil
from pathlib import Path
from typing import NamedTuple

from transformers import PreTrainedTokenizerBase

from sparse_coding.config import Config
from sparse_coding.graphs.graph import Graph
from sparse_coding.graphs.graph_files import update_graph_files
from sparse_coding.labels.context_cache import ContextCache
from sparse_coding.labels.contexts import load_or_collect
from sparse_coding.labels.logit_lens import add_logit_effects
from sparse_coding.labels.neuronpedia import annotate_graph
from sparse_coding.splicing.splice import SplicedModel

logger = logging.getLogger(__name__)


def run_metadata(config: Config, spliced: SplicedModel, script: str) -> dict:
    """What shaped a graph: script, prompt, model, SAE sources and config values."""
    return {
        "script": script,
        "prompt": config.PROMPT,
        "model": config.MODEL_DIR,
        "sae_sources": {site.key: site.sae.cfg.source for site in spliced.sites},
        "config": config.to_metadata(),
    }


class Published(NamedTuple):
    """What a run wrote: the merged graph, its .dot, and a line for the terminal."""

    merged: Graph
    dot_path: Path
    line: str


def publish_graph(
    graph: Graph,
    config: Config,
    spliced: SplicedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    dot_name: str,
    image_name: str,
    script: str,
) -> Published:
    """Annotate `graph` and merge it into DATA_DIR/<model>/<dot_name> (+ .json and the image)."""
    graph.metadata.update(run_metadata(config, spliced, script))
    out_dir = config.model_data_dir(config.MODEL_DIR)
    add_contexts(graph, load_or_collect(config, spliced, tokenizer), config.TOP_K)
    add_logit_effects(graph, spliced, tokenizer, n_tokens=config.LOGIT_TOKENS)
    annotate_graph(
        graph,
        enabled=config.NEURONPEDIA,
        base_url=config.NEURONPEDIA_URL,
        cache_dir=config.DATA_DIR / "neuronpedia_cache",
    )
    dot_path = out_dir / dot_name
    merged = update_graph_files(graph, dot_path, out_dir / image_name)
    written = [str(dot_path), dot_path.with_suffix(".json").name]
    if shutil.which("dot") is not None:  # without Graphviz save_graph skips the image (and warns)
        written.append(image_name)
    line = (
        f"{script}: {len(graph.nodes)} nodes, {len(graph.edges)} edges this run ({len(merged.nodes)} nodes, "
        f"{len(merged.edges)} edges in the graph); {graph.metadata.get('summary', '')}; "
        f"wrote {', '.join(written)}"
    )
    return Published(merged, dot_path, line)


def add_contexts(graph: Graph, contexts: ContextCache, top_k: int) -> None:
    """Top-activating contexts on every feature node that has none."""
    for node in graph.nodes.values():
        if node.feature is not None and not node.contexts:
            node.contexts = contexts.contexts(f"{node.site}_{node.layer}", node.feature, top_k)
