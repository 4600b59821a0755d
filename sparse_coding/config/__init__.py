"""One frozen, validated config object for every script: `Config`, whose fields are the schema.

`load_config(path)` reads `central_config.yaml`, checks every key once against its field
(`schema.key`: default, type, range, meaning) and returns a `Config`. A key left out takes its
default; `null` (or `None`, or empty) unsets a key typed ``X | None`` and keeps the default
elsewhere. An unknown key warns, naming the key it nearly spells; the seed tool's keys this tool
does not use share one info line (`seed.py`). Code that receives a Config trusts its values.
"""

import dataclasses
import difflib
import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from sparse_coding.config.checks import (
    check_image_name,
    check_output_name,
    check_path_text,
    check_server_url,
    check_slice,
    check_together,
    parse_pinned_feature,
    parse_pinned_features,
    parse_slice,
    redact_url,
)
from sparse_coding.config.paths import DEFAULT_DATA_DIR_NAME, PACKAGE_DIR, data_dir, resolve_paths
from sparse_coding.config.schema import (
    NEURONPEDIA_URL,
    SHARE,
    Baseline,
    Between,
    DtypeName,
    ErrorMode,
    Metric,
    NodePositions,
    Selection,
    is_optional,
    key,
    parse_value,
)
from sparse_coding.config.seed import SEED_SAES, is_seed_config, is_unused_seed_key, unused_seed_keys_line
from sparse_coding.config.steering import CurveSpec, FeatureEdit, parse_curve, parse_steer
from sparse_coding.config.yaml_file import read_yaml, shown
from sparse_coding.errors import ConfigError
from sparse_coding.nodes import parse_site_key

logger = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_CONFIG_PATH = PACKAGE_DIR / "config" / "central_config.yaml"
# difflib ratio above which an unknown key is a misspelling of a known one:
# NUM_UP_NODE -> NUM_UP_NODES (0.96), never NUM_WORKERS -> NUM_UP_NODES (0.61).
MISSPELLING_RATIO = 0.85
# Upper bounds of counts: far above any useful value, they keep a typo (an extra digit run) from
# becoming an out-of-memory error or an overflow deep inside a run.
COUNT, BIG, LABEL = Between(1, 100_000), Between(1, 10**9), Between(0, 1_000)
GRAPH_SCRIPTS = "pipe fast trace"  # the scripts that label and draw a graph
SAE_SCRIPTS = "pipe fast val hist steer"


@dataclass(frozen=True)
class Config:
    """Every key of central_config.yaml: its default, type, range and meaning (`schema.key`)."""

    # fmt: off
    # Key hyperparameters.
    ACTS_LAYERS_SLICE: str = key("9:12", SAE_SCRIPTS, check=check_slice,
        doc="layers to splice, a Python slice without a step (quote it: YAML reads 9:12 as 552)")
    INIT_THINNING_FACTOR: float = key(1.0, "pipe", between=SHARE,
        doc="pipe.py: fraction of the first layer's active features ablated (seeded by SEED)")
    NUM_SEQUENCES_INTERPED: int = key(1, "pipe steer", between=Between(1, 10_000),
        doc="pipe.py, steer.py: sequences the graph is built on, or generated from")
    THRESHOLD_EXP: float | None = key(5.0, "pipe", between=Between(-100.0, 100.0),
        doc="pipe.py: keep an edge when |effect| > 2**THRESHOLD_EXP; null keeps every non-zero one")
    DIMS_PINNED: dict[str, int] | None = key(None, "pipe", parse=parse_pinned_feature,
        doc='pipe.py: one feature per layer to trace from, `{9: 331}` or `{"resid_9": 331}`')
    NUM_UP_NODES: int = key(5, "fast", between=COUNT,
        doc="fast.py: kept edges per down-node and upstream site, most positive and most negative")
    NUM_DOWN_NODES: int = key(5, "fast", between=COUNT,
        doc="fast.py: down-nodes per site (largest |attribution|)")
    VALIDATION_DIMS_PINNED: dict[str, list[int]] | None = key(None, "val", parse=parse_pinned_features,
        doc='val.py: the circuit, `{9: [331, 12], "mlp_10": [5]}`')
    VALIDATION_ERRORS: ErrorMode = key("keep", "val",
        doc="val.py: SAE error terms kept in every run, or mean-ablated outside the circuit")
    IG_STEPS: int = key(1, "fast", between=Between(1, 1_000),
        doc="fast.py: 1 = attribution patching, > 1 = integrated-gradient steps")
    # fast.py: examples, metric, baseline, selection, estimator.
    PATCH_PROMPT: str | None = key(None, "fast",
        doc="fast.py: PROMPT's contrastive twin, of the same token length")
    ANSWER: str | None = key(None, "fast",
        doc="fast.py: PROMPT's answer (with PATCH_ANSWER); null: its last token")
    PATCH_ANSWER: str | None = key(None, "fast", doc="fast.py: PATCH_PROMPT's answer (with ANSWER)")
    PAIRS_FILE: str | None = key(None, "fast", check=check_path_text,
        doc="fast.py: JSONL rows `{clean_prefix, patch_prefix, clean_answer, patch_answer}`")
    NUM_EXAMPLES: int = key(32, "fast", between=BIG, doc="fast.py: rows of PAIRS_FILE read")
    METRIC: Metric = key("cross_entropy", "fast",
        doc="fast.py: what is explained; logit_diff = logit(patch answer) - logit(answer)")
    BASELINE: Baseline = key("zero", "fast",
        doc="fast.py: what a node moves to: zero, its patch-prompt value, or dataset means")
    SELECTION: Selection = key("topk", "fast",
        doc="fast.py: top-k nodes and edges, or Marks et al.'s thresholds below")
    NODE_THRESHOLD: float = key(0.1, "fast", between=Between(0.0),
        doc="fast.py, SELECTION threshold: nodes with |mean attribution| above it")
    EDGE_THRESHOLD: float = key(0.01, "fast", between=Between(0.0),
        doc="fast.py, SELECTION threshold: edges between such nodes with |mean effect| above it")
    NODE_ESTIMATOR: Literal["gradient", "exact"] = key("gradient", "fast",
        doc="fast.py: exact also patches each down-node and logs the estimates' correlation")
    NODE_POSITIONS: NodePositions = key("sum", "fast",
        doc="fast.py: a node is a feature summed over positions, or at each one (`resid_9.331@7`)")
    # Model, prompt and data.
    MODEL_DIR: str = key("openai-community/gpt2", check=check_path_text,
        doc="hub id or local folder of a GPT-2-style model")
    PROMPT: str = key("Copyright (C)",
        doc="pipe/val/steer explain the prediction after it; fast.py explains its last token")
    DATASET: str | None = key(None, check=check_path_text,
        doc="hub dataset or local .txt/.jsonl/.parquet: contexts, val.py, hist.py")
    DATASET_CONFIG: str | None = key(None, doc="the hub dataset's configuration (subset)")
    DATASET_SPLIT: str = key("train", doc="the hub dataset's split")
    DATASET_TEXT_COLUMN: str = key("text", doc="the column that holds the text")
    INTERP_SOURCE: Literal["prompt", "dataset"] | None = key(None, "pipe val steer",
        doc="what pipe.py, val.py and steer.py explain; null: the dataset when DATASET is set")
    NUM_SEQUENCES_EVALED: int = key(100, between=BIG,
        doc="dataset sequences read for contexts, val.py and hist.py")
    MAX_SEQ_LEN: int = key(128, between=Between(1, 1_000_000), doc="tokens per dataset sequence")
    MAX_SEQ_INTERPED_LEN: int = key(64, "pipe steer", between=Between(1, 1_000_000),
        doc="pipe.py, steer.py: tokens per interpreted sequence")
    BATCH_SIZE: int = key(8, between=Between(1, 65_536), doc="sequences per forward pass")
    PREPEND_BOS: bool | None = key(None,
        doc="prepend `<|endoftext|>`; null: as the SAEs were trained (refused when they disagree)")
    SEED: int = key(0, between=Between(0, 2**32 - 1), doc="seeds thinning, k-means and sampling")
    CHECKPOINT_EVERY: int = key(100, "pipe fast val hist", between=Between(0, 10**9),
        doc="dataset passes save their state every this many batches, for --resume; 0 = off")
    # SAEs per site.
    RESID_SAES: str | None = key("gpt2-small-resid-post-v5-32k", SAE_SCRIPTS, check=check_path_text,
        doc="resid SAEs: a release, or a hub or local `{layer}` template")
    ATTN_SAES: str | None = key("gpt2-small-attn-out-v5-32k", SAE_SCRIPTS, check=check_path_text,
        doc="attn SAEs, as RESID_SAES; null leaves the site out")
    MLP_SAES: str | None = key("gpt2-small-mlp-out-v5-32k", SAE_SCRIPTS, check=check_path_text,
        doc="mlp SAEs, as RESID_SAES")
    # trace.py: transcoders, pruning, logit nodes, batching.
    TRANSCODERS: str | None = key("gpt2-small-transcoders", "trace", check=check_path_text,
        doc="trace.py: transcoders replacing every MLP (release or `{layer}` template)")
    TRANSCODER_LAZY_DECODERS: bool | None = key(None, "trace",
        doc="trace.py: read decoder rows from disk when needed; null: for cross-layer sets")
    TRACE_PROMPT: str | None = key(None, "trace",
        doc="trace.py explains the next token after it; null: PROMPT")
    TRACE_NODE_THRESHOLD: float = key(0.8, "trace", between=SHARE,
        doc="trace.py: share of the total influence the kept nodes carry")
    TRACE_EDGE_THRESHOLD: float = key(0.98, "trace", between=SHARE,
        doc="trace.py: share of the edge influence the kept edges carry")
    TRACE_LOGIT_MASS: float = key(0.95, "trace", between=SHARE,
        doc="trace.py: logit nodes until their probability reaches this")
    TRACE_MAX_LOGITS: int = key(10, "trace", between=Between(1, 1_000),
        doc="trace.py: at most this many logit nodes")
    TRACE_MAX_FEATURE_NODES: int | None = key(2048, "trace", between=Between(1, 10**7),
        doc="trace.py: feature nodes attributed, most influential first; null: all")
    TRACE_BATCH_SIZE: int = key(256, "trace", between=Between(1, 65_536),
        doc="trace.py: target rows per batched backward pass")
    # Output files.
    DATA_DIR: Path = key(Path(DEFAULT_DATA_DIR_NAME), check=check_path_text,
        doc="outputs go to DATA_DIR/<model>/; relative to the config file's folder")
    GRAPH_FILE: str = key("cognition_graph.svg", "pipe", check=check_image_name,
        doc="pipe.py's image (.svg or .png)")
    GRAPH_DOT_FILE: str = key("cognition_graph.dot", "pipe", check=check_output_name,
        doc="pipe.py's graph (.dot; canonical: the .json beside it)")
    GRADS_FILE: str = key("grads_graph.svg", "fast", check=check_image_name, doc="fast.py's image")
    GRADS_DOT_FILE: str = key("grads_graph.dot", "fast", check=check_output_name, doc="fast.py's graph")
    TRACE_FILE: str = key("trace_graph.svg", "trace", check=check_image_name, doc="trace.py's image")
    TRACE_DOT_FILE: str = key("trace_graph.dot", "trace", check=check_output_name, doc="trace.py's graph")
    # Labels.
    LOGIT_TOKENS: int = key(10, between=LABEL,
        doc="next tokens shown per feature, most raised and most lowered")
    TOP_K: int = key(6, GRAPH_SCRIPTS, between=Between(1, 1_000), doc="contexts shown per feature")
    VIEW: int = key(5, GRAPH_SCRIPTS, between=LABEL, doc="context tokens shown either side of the peak")
    SEQ_PER_DIM_CAP: int = key(10, GRAPH_SCRIPTS, between=Between(1, 10_000),
        doc="contexts cached per feature")
    NEURONPEDIA: bool = key(True, GRAPH_SCRIPTS,
        doc="fetch Neuronpedia explanations (cached; never fails a run)")
    NEURONPEDIA_URL: str = key(NEURONPEDIA_URL, GRAPH_SCRIPTS, check=check_server_url,
        doc="the Neuronpedia server; NEURONPEDIA_API_KEY is sent to it alone")
    # Weights & Biases (the seed's keys): a project turns logging on.
    WANDB_PROJECT: str | None = key(None, "pipe fast val",
        doc="Weights & Biases project logging each run (null: $WANDB_PROJECT)")
    WANDB_ENTITY: str | None = key(None, "pipe fast val", doc="its entity (null: $WANDB_ENTITY)")
    WANDB_MODE: Literal["online", "offline", "disabled"] | None = key(None, "pipe fast val",
        doc="its mode (null: $WANDB_MODE)")
    # hist.py preclustering.
    NUM_CLUSTERS: int = key(8, "hist", between=COUNT, doc="hist.py: k-means clusters")
    KEEPER_CLUSTER_INDEX: int = key(0, "hist", between=Between(0, 100_000),
        doc="hist.py: the cluster whose sequences are kept")
    THRESHOLD_PERCENTILE: float = key(99.99, "hist", between=Between(0.0, 100.0),
        doc="hist.py: percentile of each feature's activation over the kept sequences")
    # steer.py: interventions (parsed by config/steering.py), generation, response curve.
    STEER: tuple[FeatureEdit, ...] = key((), "steer", parse=parse_steer,
        doc="steer.py: interventions `{node, set | scale | add, positions}`, applied together")
    CURVE: CurveSpec | None = key(None, "steer", parse=parse_curve,
        doc="steer.py --curve: `{node, kind, from, to, steps, watch, answer}`, one intervention swept")
    MAX_NEW_TOKENS: int = key(40, "steer", between=Between(1, 10**6),
        doc="steer.py: tokens generated per continuation")
    NUM_RETURN_SEQUENCES: int = key(1, "steer", between=Between(1, 10_000),
        doc="steer.py: continuations per prompt when sampling")
    TEMPERATURE: float = key(0.0, "steer", between=Between(0.0, 100.0),
        doc="steer.py: 0 = greedy; above, sampled (seeded by SEED)")
    TOP_P: float = key(1.0, "steer", between=SHARE, doc="steer.py: nucleus sampling's probability mass")
    # Hardware.
    DEVICE: str | None = key(None, doc="cpu, cuda, mps, ...; null: CUDA, else MPS, else CPU")
    DTYPE: DtypeName = key("float32", doc="the model's dtype")
    SAE_DTYPE: DtypeName | None = key(None,
        doc="SAE weights' dtype; null: DTYPE (bfloat16 halves SAE memory)")
    # fmt: on
    source_path: Path | None = field(default=None, compare=False)

    def layer_range(self, n_layers: int) -> range:
        """The layers ACTS_LAYERS_SLICE selects in a model of `n_layers` blocks, as Python slices.

        A bound past the model's layers is cut as Python cuts it ('1:12' on 3
        layers is 1..2), and the log says so; a slice selecting nothing is an error.
        """
        start, stop = parse_slice(self.ACTS_LAYERS_SLICE)
        layers = range(n_layers)[start:stop]
        if not layers:
            raise ConfigError(
                f"ACTS_LAYERS_SLICE {shown(self.ACTS_LAYERS_SLICE)} selects no layers of a model "
                f"with {n_layers} layers; valid slices lie within '0:{n_layers}', "
                f"e.g. '{max(0, n_layers - 3)}:{n_layers}' or ':'"
            )
        if any(bound is not None and not -n_layers <= bound <= n_layers for bound in (start, stop)):
            logger.info(
                "ACTS_LAYERS_SLICE %r on a model with %d layers selects layers %d..%d, as Python slices",
                self.ACTS_LAYERS_SLICE,
                n_layers,
                layers[0],
                layers[-1],
            )
        return layers

    @property
    def prepend_bos(self) -> bool:
        """PREPEND_BOS as a run uses it. An unset key is settled against the SAEs' cfg.json when
        they load (`pipelines.loading.settled`); reading it before then is an error, not a guess."""
        if self.PREPEND_BOS is None:
            raise ConfigError(
                "PREPEND_BOS is unset, so it follows the SAEs' cfg (prepend_bos), which is known once they "
                "load: use `settled(config, spliced)` (sparse_coding.pipelines.loading) after "
                "load_spliced_model, or set PREPEND_BOS to true or false"
            )
        return self.PREPEND_BOS

    @property
    def interp_source(self) -> str:
        """What pipe.py and val.py explain: INTERP_SOURCE, else the seed's rule (DATASET when set)."""
        return self.INTERP_SOURCE or ("dataset" if self.DATASET is not None else "prompt")

    @property
    def sae_sources(self) -> dict[str, str]:
        """Site -> SAE source for every site whose key is set."""
        sources = {"resid": self.RESID_SAES, "attn": self.ATTN_SAES, "mlp": self.MLP_SAES}
        return {site: source for site, source in sources.items() if source}

    @property
    def pinned_dims(self) -> dict[tuple[str, int], int]:
        """DIMS_PINNED as (site, layer) -> feature."""
        return {parse_site_key(key): value for key, value in (self.DIMS_PINNED or {}).items()}

    @property
    def validation_dims(self) -> dict[tuple[str, int], list[int]]:
        """VALIDATION_DIMS_PINNED as (site, layer) -> features."""
        return {parse_site_key(k): v for k, v in (self.VALIDATION_DIMS_PINNED or {}).items()}

    def model_data_dir(self, model_name: str) -> Path:
        """DATA_DIR/<sanitised model name>/, where every output of a run goes: a hub id as it is
        (``openai-community_gpt2``), a local folder by its last two parts (``demo_model``)."""
        name = "/".join(Path(model_name).parts[-2:]) if Path(model_name).is_absolute() else model_name
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name.strip("/"))
        return self.DATA_DIR / safe.strip("._")

    def options(self, cls: type[T], *, prefix: str = "", **given: Any) -> T:
        """An option object of `cls` (`GraphOptions`, `TraceOptions`, ...) from this config: each field
        from the key of its name upper-cased after `prefix` (``node_threshold`` <- TRACE_NODE_THRESHOLD
        with prefix ``TRACE_``); fields that name no key keep their default unless `given`."""
        keys = {f.name: prefix + f.name.upper() for f in dataclasses.fields(cls)}
        return cls(**{name: getattr(self, k) for name, k in keys.items() if hasattr(self, k)} | given)

    def to_metadata(self) -> dict[str, Any]:
        """JSON-ready key values, for graph and result metadata."""
        values = {f.name: getattr(self, f.name) for f in FIELDS}
        values["STEER"] = [edit.as_config() for edit in self.STEER]
        values["CURVE"] = None if self.CURVE is None else self.CURVE.as_config()
        values["DATA_DIR"] = str(self.DATA_DIR)
        values["NEURONPEDIA_URL"] = redact_url(self.NEURONPEDIA_URL)
        return values


DEFAULTS = Config()  # every key's default: option objects take theirs from here
FIELDS = tuple(f for f in dataclasses.fields(Config) if f.name != "source_path")  # the keys, in order


def load_config(path: str | Path | None = None) -> Config:
    """Read and validate a YAML config (default: the central config)."""
    path = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    raw = read_yaml(path)
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(
            f"Config file {path} must be a mapping of KEY: value lines, "
            f"got a {type(raw).__name__}: {shown(raw)}"
        )
    return config_from_dict(raw or {}, source_path=path)


def config_from_dict(raw: dict[str, Any], source_path: Path | None = None) -> Config:
    """Validate a mapping of keys (as in the YAML) into a Config."""
    where = f" in {source_path}" if source_path else ""
    known = {f.name: f for f in FIELDS}
    values: dict[str, Any] = _seed_sae_defaults(raw, where)
    for name, value in raw.items():
        if name not in known:
            _warn_unknown(str(name), known, where)
        elif not _is_unset(value):
            values[name] = parse_value(known[name], value, where)
        elif is_optional(known[name].type):
            values[name] = None
    base = source_path.resolve().parent if source_path else Path.cwd()
    values = resolve_paths(values, base) | {"DATA_DIR": data_dir(values.get("DATA_DIR"), base)}
    config = Config(**values, source_path=source_path)
    check_together({name: getattr(config, name) for name in known}, where)
    return config


def _seed_sae_defaults(raw: dict[str, Any], where: str) -> dict[str, str]:
    """Report the seed keys not used here; a seed config without SAE keys gets the seed's SAEs."""
    line = unused_seed_keys_line(map(str, raw))
    if line:
        logger.info("%s%s", line, where)
    if not is_seed_config(map(str, raw)) or any(name in raw for name in SEED_SAES):
        return {}
    logger.info(
        "Seed config%s names no SAE source: using the SAEs the seed ran on, %s",
        where,
        ", ".join(f"{name}: {source}" for name, source in SEED_SAES.items()),
    )
    return dict(SEED_SAES)


def _warn_unknown(name: str, known: Collection[str], where: str) -> None:
    """Warn about a key nobody reads; suggest a key only for a near-misspelling."""
    if is_unused_seed_key(name):
        return
    upper = name.upper()
    if upper in known:
        close = [upper]
    else:  # pasted text (a long key) is no misspelling, and slow to match
        close = difflib.get_close_matches(upper, known, cutoff=MISSPELLING_RATIO) if len(name) <= 100 else []
    hint = f"; did you mean {close[0]!r}?" if close else ""
    logger.warning("Unknown config key %s%s ignored%s", shown(name), where, hint)


def _is_unset(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() in ("", "None", "null"))
