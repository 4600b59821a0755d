"""Label a freshly computed pipe.py or fast.py graph and merge it into the run's graph files
(trace.py shares `closing_line` and `save_caches`).

The caches the labels grew (contexts, Neuronpedia answers) are written only
after the graph files are committed, so a run that fails changes nothing; a
cache that cannot be written then is a warning, since the run's result is
saved.
"""

import logging
import shutil
from pathlib import Path
from typing import Any

from sparse_coding.config import Config
from sparse_coding.errors import StorageError
from sparse_coding.files import cache as caches
from sparse_coding.graphs.conventions import sentences
from sparse_coding.graphs.graph import Graph
from sparse_coding.graphs.graph_files import json_path_for, update_graph_files, viewer_path_for
from sparse_coding.labels.context_cache import ContextCache, contexts_cache
from sparse_coding.labels.contexts import collect_contexts
from sparse_coding.labels.logit_lens import add_logit_effects
from sparse_coding.pipelines.inputs import config_batches, expected_batches
from sparse_coding.pipelines.resume import site_identity
from sparse_coding.runtime import distributed
from sparse_coding.runtime.phases import PhaseTimer
from sparse_coding.sharing.wandb_runs import log_run, wandb_settings
from sparse_coding.splicing.splice import SplicedModel
from sparse_coding.text.tokenizer import Tokenizer

logger = logging.getLogger(__name__)


def run_metadata(
    config: Config, sae_sources: dict[str, str], script: str, selection: str | None = None
) -> dict:
    """What shaped a graph: script, prompt, model, SAE sources, config values, and what its numbers mean.

    `selection` is the graph's ``down_node_selection`` (fast.py: "thresholds" when hist.py chose them).
    """
    settings = config.to_metadata()
    return {
        "script": script,
        "world_size": distributed.world_size(),
        "sign_convention": sentences(script, settings | {"down_node_selection": selection}),
        "prompt": config.PROMPT,
        "model": config.MODEL_DIR,
        "sae_sources": sae_sources,
        "config": settings,
    }


def publish_graph(
    graph: Graph,
    config: Config,
    spliced: SplicedModel,
    tokenizer: Tokenizer,
    *,
    dot_name: str,
    image_name: str,
    script: str,
    phases: PhaseTimer | None = None,
    new_graph: bool = False,
) -> str:
    """Annotate `graph` and merge it into DATA_DIR/<model>/<dot_name> (+ .json and the image); returns
    the terminal's closing line ("" on the other ranks under torchrun).

    `phases` times the labels and the writing; the phases up to writing go
    into the graph's metadata (``phases``, seconds). `new_graph` sets the
    stored graph aside and starts a new one (``--new-graph``).
    """
    phases = phases or PhaseTimer()
    sources = {site.key: site.sae.cfg.source for site in spliced.sites}
    graph.metadata.update(run_metadata(config, sources, script, graph.metadata.get("down_node_selection")))
    out_dir = config.model_data_dir(config.MODEL_DIR)
    with phases.phase("labels: contexts"):
        contexts, grown = collect_missing(config, spliced, tokenizer, features=wanted_features(graph))
        if not distributed.is_main():  # under torchrun the other ranks share the contexts pass, no more
            return ""
        add_contexts(graph, contexts, config.TOP_K)
    with phases.phase("labels: logit cells"):
        add_logit_effects(graph, spliced, tokenizer, n_tokens=config.LOGIT_TOKENS)
    with phases.phase("labels: Neuronpedia"):
        answers = neuronpedia_answers(graph, config)
    graph.metadata["phases"] = phases.metadata()
    dot_path, image_path = out_dir / dot_name, out_dir / image_name
    with phases.phase("write and render"):
        merged = update_graph_files(graph, dot_path, image_path, new_graph=new_graph)
    save_caches([grown, *answers])  # after the graph: a failed run leaves every cache as it was
    log_config_run(
        config,
        script=script,
        summary=run_summary(graph, merged),
        files=[json_path_for(dot_path), viewer_path_for(dot_path, image_path)],
        image=image_path,
        out_dir=out_dir,
    )
    return closing_line(script, graph, merged, dot_path, image_path)


def closing_line(script: str, graph: Graph, merged: Graph, dot_path: Path, image_path: Path) -> str:
    """The terminal's line for a run's graph merged into `merged`: sizes, summary, the files written."""
    written = [str(dot_path), json_path_for(dot_path).name]
    if shutil.which("dot") is not None:  # without Graphviz save_graph skips the image (and warns)
        written.append(image_path.name)
    written.append(viewer_path_for(dot_path, image_path).name)
    return (
        f"{script}: {len(graph.nodes)} nodes, {len(graph.edges)} edges this run ({len(merged.nodes)} nodes, "
        f"{len(merged.edges)} edges in the graph); {graph.metadata.get('summary', '')}; "
        f"wrote {', '.join(written)}"
    )


def neuronpedia_answers(graph: Graph, config: Config) -> list[tuple[caches.Cache, Any]]:
    """Annotate `graph` from Neuronpedia (when NEURONPEDIA is on); returns the answers to cache."""
    if not config.NEURONPEDIA:
        logger.info("Neuronpedia annotations off (NEURONPEDIA: false)")
        return []
    from sparse_coding.labels.neuronpedia import annotate_graph  # only runs that ask import requests

    cache_dir = config.DATA_DIR / "neuronpedia_cache"
    return annotate_graph(graph, base_url=config.NEURONPEDIA_URL, cache_dir=cache_dir).answers


def log_config_run(config: Config, **run: Any) -> None:
    """`wandb_runs.log_run` with the config's W&B keys and values (nothing without a project)."""
    settings = wandb_settings(config.WANDB_PROJECT, config.WANDB_ENTITY, config.WANDB_MODE)
    log_run(settings, run_config=config.to_metadata(), **run)


def run_summary(graph: Graph, merged: Graph) -> dict[str, Any]:
    """A run's summary numbers for W&B: this run's and the merged graph's size, explained share, timings."""
    summary = {
        "nodes": len(graph.nodes),
        "edges": len(graph.edges),
        "graph_nodes": len(merged.nodes),
        "graph_edges": len(merged.edges),
    }
    if graph.metadata.get("fraction_explained") is not None:
        summary["fraction_explained"] = graph.metadata["fraction_explained"]
    phases = graph.metadata.get("phases") or {}
    timings = {f"seconds/{name}": value for name, value in phases.items() if isinstance(value, (int, float))}
    return summary | timings


def wanted_features(graph: Graph) -> dict[str, list[int]]:
    """Site key -> the features of `graph`'s nodes that have no contexts yet."""
    wanted: dict[str, list[int]] = {}
    for node in graph.nodes.values():
        if node.feature is not None and not node.contexts:
            wanted.setdefault(node.site_key, []).append(node.feature)
    return wanted


def add_contexts(graph: Graph, contexts: ContextCache, top_k: int) -> None:
    """Top-activating contexts on every feature node that has none."""
    for node in graph.nodes.values():
        if node.feature is not None and not node.contexts:
            node.contexts = contexts.contexts(node.site_key, node.feature, top_k)


def save_caches(pending: list[tuple[caches.Cache, Any] | None]) -> None:
    """Write the caches this run grew, now that its graph is committed; a failure only warns."""
    for item in pending:
        if item is None:
            continue
        cache, value = item
        try:
            cache.save(value)
        except StorageError as e:
            logger.warning("the graph was saved, but the cache %s was not: %s", cache.path, e)


def fingerprint(config: Config, spliced: SplicedModel) -> dict[str, Any]:
    """What a cache's contexts depend on (`cache.cache_fingerprint`): model, SAEs, text and its settings."""
    keys = ("DATASET_CONFIG", "DATASET_SPLIT", "DATASET_TEXT_COLUMN", "NUM_SEQUENCES_EVALED", "MAX_SEQ_LEN")
    text = {key: getattr(config, key) for key in keys} if config.DATASET else {"PROMPT": config.PROMPT}
    saes = {site.key: site_identity(site) for site in spliced.sites}
    return caches.cache_fingerprint(
        model=config.MODEL_DIR,
        saes=saes,
        dataset=config.DATASET,
        settings={"text": text | {"PREPEND_BOS": config.PREPEND_BOS}},
    )


def cache_path(config: Config) -> Path:
    """DATA_DIR/<model>/contexts/top_contexts.npz (arrays and header in one file)."""
    return config.model_data_dir(config.MODEL_DIR) / "contexts" / "top_contexts.npz"


def load_or_collect(
    config: Config,
    spliced: SplicedModel,
    tokenizer: Tokenizer,
    *,
    features: dict[str, list[int]],
) -> ContextCache:
    """Contexts of `features` (site key -> indices), from the cache where it has them; the cache
    is grown and saved at once (`collect_missing` leaves the saving to its caller)."""
    cache, grown = collect_missing(config, spliced, tokenizer, features=features)
    save_caches([grown])
    return cache


def collect_missing(
    config: Config,
    spliced: SplicedModel,
    tokenizer: Tokenizer,
    *,
    features: dict[str, list[int]],
) -> tuple[ContextCache, tuple[caches.Cache, ContextCache] | None]:
    """Contexts of `features` (site key -> indices) on the config's text, from the cache where it has them.

    The features the cache lacks (or holds from another SAE source) are
    collected in one pass over the text and merged in, so the cache grows with
    what the graphs ask for and a rerun of the same graph reads no text.
    Under torchrun rank 0 reads and saves the cache and every rank shares the
    pass; the other ranks get the fresh contexts only.

    Returns:
        The contexts, and (cache file, grown value) to save once the run's
        outputs are written, or None when nothing new was collected.
    """
    current = fingerprint(config, spliced)
    store = contexts_cache(
        cache_path(config),
        current,
        per_feature=config.SEQ_PER_DIM_CAP,
        view=config.VIEW,
        inside=config.DATA_DIR,
    )
    cache = _usable_cache(store, config, current) if distributed.is_main() else None
    missing = distributed.broadcast(_missing(cache, features, spliced) if cache is not None else None)
    if not missing:
        logger.info("Contexts of all %d asked features are cached in %s", _count(features), store.path)
        return cache, None
    logger.info(
        "Collecting contexts of %d features (%d cached)", _count(missing), _count(features) - _count(missing)
    )
    fresh = collect_contexts(
        spliced,
        tokenizer,
        config_batches(config, tokenizer, spliced.model),
        features=missing,
        per_feature=config.SEQ_PER_DIM_CAP,
        view=config.VIEW,
        total=expected_batches(config),
    )
    fresh.fingerprint = current | {"saes": {key: current["saes"][key] for key in fresh.arrays}}
    if cache is None:
        return fresh, None
    cache = cache.merged(fresh)
    return cache, (store, cache)


def _missing(
    cache: ContextCache, features: dict[str, list[int]], spliced: SplicedModel
) -> dict[str, list[int]]:
    """Site key -> the asked features of spliced sites that `cache` lacks (sites with none left out)."""
    missing = {key: cache.missing(key, dims) for key, dims in features.items() if key in spliced.by_key}
    return {key: dims for key, dims in missing.items() if dims}


def _usable_cache(store: caches.Cache, config: Config, current: dict[str, Any]) -> ContextCache:
    """The stored cache less what `current` (its fingerprint for this run) rules out; else an empty one."""
    lookup = store.load()
    if lookup.value is not None:
        return lookup.value.for_saes(current["saes"])
    if lookup.problem.startswith("unreadable"):
        logger.warning("Context cache %s is %s; collecting again", store.path, lookup.problem)
    elif lookup.problem != "absent":
        logger.info("Context cache %s is %s; collecting again", store.path, lookup.problem)
    return ContextCache(config.VIEW, config.SEQ_PER_DIM_CAP, fingerprint=current | {"saes": {}})


def _count(features: dict[str, list[int]]) -> int:
    return sum(map(len, features.values()))
