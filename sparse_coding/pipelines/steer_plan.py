"""What steer.py will do, decided and checked before the model and the SAEs load.

The interventions come from STEER, ``--node``, or a graph (``--from-graph``: its
`top` strongest feature nodes, by |attribution| (fast.py; trace.py's
influence) or else their largest |edge effect| (pipe.py), the graph's other
feature nodes watched); a response curve from CURVE (``--curve``). The prompts
are the texts pipe.py reads: PROMPT, or the first NUM_SEQUENCES_INTERPED rows
of DATASET (INTERP_SOURCE), each at most MAX_SEQ_INTERPED_LEN tokens. Every
check here raises one message naming the key, the value and what is valid.
"""

import itertools
import logging
from dataclasses import dataclass
from pathlib import Path

from sparse_coding.config import Config
from sparse_coding.config.steering import CurveSpec, FeatureEdit, Positions, parse_edit
from sparse_coding.errors import ConfigError, GraphFileError
from sparse_coding.graphs.graph import Graph
from sparse_coding.models.sae_sources import read_cfg, resolve_source
from sparse_coding.nodes import SITES, TRANSCODER_KINDS, parse_node_id
from sparse_coding.pipelines.circuit import read_graph
from sparse_coding.pipelines.inputs import interpreted_texts
from sparse_coding.pipelines.preflight import preflight, settled_prepend_bos
from sparse_coding.text.batches import TokenBatch, text_ids
from sparse_coding.text.corpus import iter_batches
from sparse_coding.text.tokenizer import Tokenizer, load_tokenizer
from sparse_coding.transcoders.transcoder import KINDS, TranscoderSet

logger = logging.getLogger(__name__)

DEFAULT_TOP = 5


@dataclass(frozen=True)
class CommandLineEdits:
    """Interventions given on the command line instead of STEER: ``--node ID ...`` or
    ``--from-graph PATH --top K``, each with ``--set V | --scale X | --add X`` (default set 0)."""

    nodes: tuple[str, ...] = ()
    graph: Path | None = None
    top: int = DEFAULT_TOP
    kind: str = "set"
    value: float = 0.0


@dataclass(frozen=True)
class SteerPlan:
    """The checked interventions, watched nodes, curve and prompts of one steer.py run."""

    edits: tuple[FeatureEdit, ...]
    watch: tuple[str, ...]  # other feature nodes whose activations are reported
    curve: CurveSpec | None  # set: draw a response curve instead of generating
    source: str  # where the interventions come from, in words
    texts: list[str]
    batch: TokenBatch  # the prompts, right-padded
    answer_id: int | None  # the curve's answer token
    nodes: list[str]  # every feature node the run reads, intervened first
    pairs: list[tuple[str, int]]  # the (site, layer) SAEs to load: those of the SAE nodes, no others
    transcoders: bool  # some node is a transcoder feature: TRANSCODERS is spliced too

    @property
    def prompts(self) -> list[list[int]]:
        """Each prompt's token ids, unpadded."""
        ids, lengths = self.batch.input_ids.tolist(), self.batch.lengths.tolist()
        return [row[:n] for row, n in zip(ids, lengths, strict=True)]


def plan_steering(
    config: Config, *, command_line: CommandLineEdits | None = None, curve: bool = False
) -> SteerPlan:
    """The run's plan, checked against the SAEs' cfg.json and the tokenized prompts."""
    edits, watch, source = _interventions(config, command_line, curve)
    curve_spec = config.CURVE if curve else None
    curve_nodes = [curve_spec.node, *curve_spec.watch] if curve else []
    nodes = list(dict.fromkeys([*(e.node for e in edits), *watch, *curve_nodes]))
    pairs = sae_pairs(nodes)
    check_sources_set(config, nodes, pairs, source)
    transcoders = any(parse_node_id(node).site in TRANSCODER_KINDS for node in nodes)
    downloads = []
    if transcoders:
        from sparse_coding.pipelines.trace import transcoder_downloads  # imports torch

        downloads = transcoder_downloads(config)
    preflight(config, sae_sites=pairs, extra_downloads=downloads)
    tokenizer = load_tokenizer(config.MODEL_DIR)
    texts = list(itertools.islice(interpreted_texts(config), config.NUM_SEQUENCES_INTERPED))
    plan = SteerPlan(
        edits=tuple(edits),
        watch=tuple(w for w in watch if w not in {e.node for e in edits}),
        curve=curve_spec,
        source=source,
        texts=texts,
        batch=_prompt_batch(
            config, tokenizer, texts, settled_prepend_bos(config, pairs, transcoders=transcoders)
        ),
        answer_id=_answer_id(tokenizer, curve_spec.answer) if curve and curve_spec.answer else None,
        nodes=nodes,
        pairs=pairs,
        transcoders=transcoders,
    )
    check_plan(config, plan)
    return plan


def _interventions(
    config: Config, command_line: CommandLineEdits | None, curve: bool
) -> tuple[list[FeatureEdit], list[str], str]:
    """(edits, watched nodes, where they come from): none for a curve, else the command line's or STEER."""
    if curve:
        if config.CURVE is None:
            raise ConfigError(
                "--curve draws the response curve of the CURVE key, which is unset; set it, e.g. "
                "CURVE: {node: 'mlp_0.4', from: 0.0, to: 1.0, steps: 11, watch: ['mlp_1.6'], answer: ' hot'}"
            )
        return [], [], "CURVE"
    if command_line is not None and command_line.graph is not None:
        return graph_edits(command_line)
    if command_line is not None:
        return node_edits(command_line), [], "--node"
    if not config.STEER:
        raise ConfigError(
            "Nothing to steer: STEER is empty; give interventions, e.g. STEER: [{node: 'resid_9.331', "
            "set: 0.0}], or --node ID, or --from-graph GRAPH, or --curve for the CURVE key"
        )
    return list(config.STEER), [], "STEER"


def _prompt_batch(config: Config, tokenizer: Tokenizer, texts: list[str], prepend_bos: bool) -> TokenBatch:
    batches = iter_batches(
        texts,
        tokenizer,
        batch_size=max(1, len(texts)),
        max_len=config.MAX_SEQ_INTERPED_LEN,
        prepend_bos=prepend_bos,
    )
    batch = next(batches, None)
    if batch is None:
        raise ConfigError(f"{config.interp_source.upper()} gives no text with tokens to steer; check it")
    return batch


def _answer_id(tokenizer: Tokenizer, answer: str) -> int:
    ids = text_ids(tokenizer, answer, prepend_bos=False)
    if len(ids) != 1:
        raise ConfigError(
            f"CURVE answer {answer!r} is {len(ids)} tokens ({ids}); give one token, with its leading "
            f"space where the text has one (e.g. ' hot')"
        )
    return ids[0]


def sae_pairs(nodes: list[str]) -> list[tuple[str, int]]:
    """The (site, layer) of every SAE feature node, once each (transcoder nodes have none)."""
    parsed = (parse_node_id(node) for node in nodes)
    return list(dict.fromkeys(node[:2] for node in parsed if node.site in SITES))


def check_sources_set(config: Config, nodes: list[str], pairs: list[tuple[str, int]], source: str) -> None:
    """Every SAE node's site has an SAE source (RESID_SAES, ATTN_SAES, MLP_SAES); transcoder nodes
    have TRANSCODERS."""
    tc_nodes = [node for node in nodes if parse_node_id(node).site in TRANSCODER_KINDS]
    if tc_nodes and not config.TRANSCODERS:
        raise ConfigError(
            f"{source} names the transcoder feature(s) {', '.join(dict.fromkeys(tc_nodes))}, but TRANSCODERS "
            f"is unset; set it to the transcoders the graph was traced with, e.g. 'gpt2-small-transcoders'"
        )
    unset = sorted({f"{site.upper()}_SAES" for site, _ in pairs if site not in config.sae_sources})
    if unset:
        named = [node for node in nodes if f"{parse_node_id(node).site.upper()}_SAES" in unset]
        raise ConfigError(
            f"{source} names {', '.join(dict.fromkeys(named))}, but {', '.join(unset)} is unset; set it"
        )


def check_plan(config: Config, plan: SteerPlan) -> None:
    """Every SAE node's index lies within its SAE's width; every position lies within every prompt."""
    widths = {pair: sae_width(config.sae_sources[pair[0]], pair[1]) for pair in plan.pairs}
    for node in plan.nodes:
        site, layer, feature = parse_node_id(node)
        if site in TRANSCODER_KINDS:
            continue
        if feature >= widths[site, layer]:
            raise ConfigError(
                f"{plan.source} names {node}, beyond its SAE ({config.sae_sources[site]} layer {layer} has "
                f"{widths[site, layer]} features: valid indices 0..{widths[site, layer] - 1})"
            )
    positioned = [(e.node, e.positions) for e in plan.edits]
    if plan.curve is not None:
        positioned.append((plan.curve.node, plan.curve.positions))
    for node, positions in positioned:
        _check_positions(plan, node, positions)


def _check_positions(plan: SteerPlan, node: str, positions: Positions) -> None:
    if isinstance(positions, str):
        return
    for text, n in zip(plan.texts, plan.batch.lengths.tolist(), strict=True):
        outside = [p for p in positions if not -n <= p < n]
        if outside:
            raise ConfigError(
                f"{plan.source}: {node} at position(s) {outside}, beyond the prompt {text[:60]!r} "
                f"({n} tokens, BOS = 0): valid {-n}..{n - 1} (negative counts from its end); "
                f"use 'generated' for the new tokens"
            )


def check_transcoder_nodes(config: Config, plan: SteerPlan, transcoders: TranscoderSet | None) -> None:
    """Every transcoder node is of the loaded set's kind (``tc_`` per-layer, ``clt_`` cross-layer),
    reads a layer it holds, and lies within its width."""
    for node in plan.nodes:
        kind, layer, feature = parse_node_id(node)
        if kind not in TRANSCODER_KINDS or transcoders is None:
            continue
        what = f"{plan.source} names {node}, but TRANSCODERS {config.TRANSCODERS!r}"
        if kind != transcoders.kind:
            raise ConfigError(
                f"{what} holds {KINDS[transcoders.kind]}, whose features are "
                f"'{transcoders.kind}_{{layer}}.{{index}}'; set TRANSCODERS to the set the node comes from"
            )
        if layer not in transcoders.layers:
            raise ConfigError(f"{what} has no transcoder at layer {layer}; it has {list(transcoders.layers)}")
        if feature >= transcoders.d_sae:
            raise ConfigError(
                f"{what} has {transcoders.d_sae} features per layer: valid indices 0..{transcoders.d_sae - 1}"
            )


def sae_width(source: str, layer: int) -> int:
    """d_sae of one layer's SAE, from its cfg.json (no weights read)."""
    return read_cfg(resolve_source(source, layer))["d_sae"]


def node_edits(choice: CommandLineEdits) -> list[FeatureEdit]:
    """--node ids, each with the command line's intervention (a repeated id once)."""
    edits = [parse_edit({"node": node, choice.kind: choice.value}, f"--node {node}") for node in choice.nodes]
    return list(dict.fromkeys(edits))


def graph_edits(choice: CommandLineEdits) -> tuple[list[FeatureEdit], list[str], str]:
    """The graph's `top` strongest feature nodes as edits, its other feature nodes as watched ones."""
    path = choice.graph
    graph = read_graph(path)
    ranked = sorted(_feature_strengths(graph).items(), key=lambda item: (-item[1], item[0]))
    if not ranked:
        raise GraphFileError(
            f"graph file {path} has no feature nodes ({', '.join(SITES + TRANSCODER_KINDS)}) to steer"
        )
    edits = []
    for node_id, _ in ranked[: choice.top]:
        node, _, position = node_id.partition("@")
        positions: Positions = (int(position),) if position else "all"
        edits.append(FeatureEdit(node, choice.kind, choice.value, positions))
    watch = [node_id.partition("@")[0] for node_id, _ in ranked[choice.top :]]
    how = "|attribution|" if any(n.attribution is not None for n in graph.nodes.values()) else "|effect|"
    source = f"graph file {path} (its {len(edits)} strongest feature nodes by {how})"
    logger.info("%s: steering %s", source, ", ".join(e.node for e in edits))
    return edits, list(dict.fromkeys(watch)), source


def _feature_strengths(graph: Graph) -> dict[str, float]:
    """Feature node id -> |attribution| when the graph has attributions, else its largest |edge effect|."""
    features = {}
    for node_id, node in graph.nodes.items():
        try:
            _, _, feature = parse_node_id(node_id)
        except ValueError:  # a logit, embedding or other non-feature node
            continue
        if feature is not None:
            features[node_id] = node
    if any(node.attribution is not None for node in features.values()):
        return {node_id: abs(node.attribution or 0.0) for node_id, node in features.items()}
    strengths = dict.fromkeys(features, 0.0)
    for edge in graph.edges.values():
        for end in (edge.source, edge.target):
            if end in strengths:
                strengths[end] = max(strengths[end], abs(edge.effect))
    return strengths
