"""One frozen, validated config object for every script.

`load_config(path)` reads `central_config.yaml`, checks every key once and
returns a `Config`. The dataclass below holds every default; the shipped YAML
only restates them. A key left out takes its default; `null` (or `None`, or
empty) unsets a key where unset means something (THRESHOLD_EXP, an SAE site,
DATASET...) and keeps the default elsewhere. An unknown key warns, with the
valid key it is a near-misspelling of; keys of the seed tool's config that
this tool does not use are named together in one info line (`seed.py`).
Checks that need the model or the SAEs (layer range, SAE width) are methods
here too, called once those are loaded.
"""

import dataclasses
import difflib
import logging
import math
import types
import typing
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sparse_coding.config.checks import PATH_KEYS, check_files_and_servers, check_path_text
from sparse_coding.config.paths import DEFAULT_DATA_DIR_NAME, PACKAGE_DIR, data_dir, resolve_paths
from sparse_coding.config.seed import SEED_SAES, is_seed_config, is_unused_seed_key, unused_seed_keys_line
from sparse_coding.config.steering import CurveSpec, FeatureEdit, parse_curve, parse_steer
from sparse_coding.config.yaml_file import read_yaml, shown
from sparse_coding.errors import ConfigError
from sparse_coding.nodes import parse_site_key

logger = logging.getLogger(__name__)

DEFAULT_CONFIG_PATH = PACKAGE_DIR / "config" / "central_config.yaml"
DTYPE_NAMES = ("float32", "float16", "bfloat16", "float64")
VALIDATION_ERROR_MODES = ("keep", "ablate")
INTERP_SOURCES = ("prompt", "dataset")
# Valid ranges of integer keys. The upper bounds are far above any useful
# value and keep a typo (an extra digit run) from becoming an out-of-memory
# error or an overflow deep inside a run: SEED seeds NumPy (< 2**32), VIEW and
# TOP_K size label tables, IG_STEPS multiplies the backward passes.
INT_RANGES = {
    "NUM_SEQUENCES_INTERPED": (1, 10_000),
    "NUM_UP_NODES": (1, 100_000),
    "NUM_DOWN_NODES": (1, 100_000),
    "IG_STEPS": (1, 1_000),
    "NUM_EXAMPLES": (1, 10**9),
    "NUM_SEQUENCES_EVALED": (1, 10**9),
    "MAX_SEQ_LEN": (1, 1_000_000),
    "MAX_SEQ_INTERPED_LEN": (1, 1_000_000),
    "BATCH_SIZE": (1, 65_536),
    "CHECKPOINT_EVERY": (0, 10**9),
    "TOP_K": (1, 1_000),
    "SEQ_PER_DIM_CAP": (1, 10_000),
    "NUM_CLUSTERS": (1, 100_000),
    "LOGIT_TOKENS": (0, 1_000),
    "VIEW": (0, 1_000),
    "KEEPER_CLUSTER_INDEX": (0, 100_000),
    "SEED": (0, 2**32 - 1),
    "MAX_NEW_TOKENS": (1, 1_000_000),
    "NUM_RETURN_SEQUENCES": (1, 10_000),
    "TRACE_MAX_LOGITS": (1, 1_000),
    "TRACE_BATCH_SIZE": (1, 65_536),
}
# |THRESHOLD_EXP| beyond this makes 2**THRESHOLD_EXP 0 or inf in float32 (2**128).
MAX_ABS_THRESHOLD_EXP = 100.0
# difflib ratio above which an unknown key is a misspelling of a known one:
# NUM_UP_NODE -> NUM_UP_NODES (0.96), never NUM_WORKERS -> NUM_UP_NODES (0.61).
MISSPELLING_RATIO = 0.85
# Keys with a fixed set of values (the algorithms that read them check the same names).
CHOICES = {
    "METRIC": ("cross_entropy", "logit_diff", "logprob"),
    "BASELINE": ("zero", "patch", "mean"),
    "SELECTION": ("topk", "threshold"),
    "NODE_ESTIMATOR": ("gradient", "exact"),
    "NODE_POSITIONS": ("sum", "each"),
}
# Keys that may be unset (null) but, when set, take one of these values.
OPTIONAL_CHOICES = {"WANDB_MODE": ("online", "offline", "disabled")}


@dataclass(frozen=True)
class Config:
    """Every key of central_config.yaml with its default; see the comments there for meaning.

    A missing key takes the default below. A key typed `X | None` is unset
    (None) when null; other keys keep their default when null.
    """

    # Key hyperparameters.
    ACTS_LAYERS_SLICE: str = "9:12"
    INIT_THINNING_FACTOR: float = 1.0
    NUM_SEQUENCES_INTERPED: int = 1
    THRESHOLD_EXP: float | None = 5.0
    DIMS_PINNED: dict[str, int] | None = None
    NUM_UP_NODES: int = 5
    NUM_DOWN_NODES: int = 5
    VALIDATION_DIMS_PINNED: dict[str, list[int]] | None = None
    VALIDATION_ERRORS: str = "keep"
    IG_STEPS: int = 1
    # fast.py: examples, metric, baseline, selection, estimator.
    PATCH_PROMPT: str | None = None
    ANSWER: str | None = None
    PATCH_ANSWER: str | None = None
    PAIRS_FILE: str | None = None
    NUM_EXAMPLES: int = 32
    METRIC: str = "cross_entropy"
    BASELINE: str = "zero"
    SELECTION: str = "topk"
    NODE_THRESHOLD: float = 0.1
    EDGE_THRESHOLD: float = 0.01
    NODE_ESTIMATOR: str = "gradient"
    NODE_POSITIONS: str = "sum"
    # Model, prompt and data.
    MODEL_DIR: str = "openai-community/gpt2"
    PROMPT: str = "Copyright (C)"
    DATASET: str | None = None
    DATASET_CONFIG: str | None = None
    DATASET_SPLIT: str = "train"
    DATASET_TEXT_COLUMN: str = "text"
    INTERP_SOURCE: str | None = None
    NUM_SEQUENCES_EVALED: int = 100
    MAX_SEQ_LEN: int = 128
    MAX_SEQ_INTERPED_LEN: int = 64
    BATCH_SIZE: int = 8
    PREPEND_BOS: bool | None = None
    SEED: int = 0
    CHECKPOINT_EVERY: int = 100
    # SAEs per site.
    RESID_SAES: str | None = "gpt2-small-resid-post-v5-32k"
    ATTN_SAES: str | None = "gpt2-small-attn-out-v5-32k"
    MLP_SAES: str | None = "gpt2-small-mlp-out-v5-32k"
    # trace.py: transcoders, pruning, logit nodes, batching.
    TRANSCODERS: str | None = "gpt2-small-transcoders"
    TRANSCODER_LAZY_DECODERS: bool | None = None
    TRACE_PROMPT: str | None = None
    TRACE_NODE_THRESHOLD: float = 0.8
    TRACE_EDGE_THRESHOLD: float = 0.98
    TRACE_LOGIT_MASS: float = 0.95
    TRACE_MAX_LOGITS: int = 10
    TRACE_MAX_FEATURE_NODES: int | None = 2048
    TRACE_BATCH_SIZE: int = 256
    # Output files.
    DATA_DIR: Path = Path(DEFAULT_DATA_DIR_NAME)  # beside the config file (`paths.data_dir`)
    GRAPH_FILE: str = "cognition_graph.svg"
    GRAPH_DOT_FILE: str = "cognition_graph.dot"
    GRADS_FILE: str = "grads_graph.svg"
    GRADS_DOT_FILE: str = "grads_graph.dot"
    TRACE_FILE: str = "trace_graph.svg"
    TRACE_DOT_FILE: str = "trace_graph.dot"
    # Labels.
    LOGIT_TOKENS: int = 10
    TOP_K: int = 6
    VIEW: int = 5
    SEQ_PER_DIM_CAP: int = 10
    NEURONPEDIA: bool = True
    NEURONPEDIA_URL: str = "https://www.neuronpedia.org"
    # Weights & Biases (the seed's keys): a project turns logging on.
    WANDB_PROJECT: str | None = None
    WANDB_ENTITY: str | None = None
    WANDB_MODE: str | None = None
    # hist.py preclustering.
    NUM_CLUSTERS: int = 8
    KEEPER_CLUSTER_INDEX: int = 0
    THRESHOLD_PERCENTILE: float = 99.99
    # steer.py: interventions (parsed by config/steering.py), generation, response curve.
    STEER: tuple[FeatureEdit, ...] = field(default=(), metadata={"parse": parse_steer})
    CURVE: CurveSpec | None = field(default=None, metadata={"parse": parse_curve})
    MAX_NEW_TOKENS: int = 40
    NUM_RETURN_SEQUENCES: int = 1
    TEMPERATURE: float = 0.0
    TOP_P: float = 1.0
    # Hardware.
    DEVICE: str | None = None
    DTYPE: str = "float32"
    SAE_DTYPE: str | None = None
    source_path: Path | None = field(default=None, compare=False)

    def layer_range(self, n_layers: int) -> range:
        """The layers ACTS_LAYERS_SLICE selects in a model of `n_layers` blocks, as Python slices.

        A bound past the model's layers is cut as Python cuts it ('1:12' on 3
        layers is 1..2), and the log says so; a slice selecting nothing is an error.
        """
        start, stop = _parse_slice(self.ACTS_LAYERS_SLICE)
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

    def to_metadata(self) -> dict[str, Any]:
        """JSON-ready key values, for graph and result metadata."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values.pop("source_path")
        values["STEER"] = [dataclasses.asdict(edit) for edit in self.STEER]
        values["CURVE"] = None if self.CURVE is None else dataclasses.asdict(self.CURVE)
        values["DATA_DIR"] = str(self.DATA_DIR)
        values["NEURONPEDIA_URL"] = redact_url(self.NEURONPEDIA_URL)
        return values


def redact_url(url: str) -> str:
    """`url` without credentials (``https://user:pass@host`` -> ``https://host``), for logs and files."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def load_config(path: str | Path | None = None) -> Config:
    """Read and validate a YAML config (default: the central config)."""
    path = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    raw = read_yaml(path)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"Config file {path} must be a mapping of KEY: value lines, "
            f"got a {type(raw).__name__}: {shown(raw)}"
        )
    return config_from_dict(raw, source_path=path)


def config_from_dict(raw: dict[str, Any], source_path: Path | None = None) -> Config:
    """Validate a mapping of keys (as in the YAML) into a Config."""
    where = f" in {source_path}" if source_path else ""
    known = {f.name: f for f in dataclasses.fields(Config) if f.name != "source_path"}
    values: dict[str, Any] = _seed_sae_defaults(raw, where)
    for key, value in raw.items():
        if key not in known:
            _warn_unknown(str(key), known, where)
            continue
        if _is_unset(value):
            if _is_optional(known[key].type):
                values[key] = None
            continue
        parse = known[key].metadata.get("parse")
        values[key] = parse(value, key, where) if parse else _coerce(key, value, known[key].type, where)
    base = source_path.resolve().parent if source_path else Path.cwd()
    values = resolve_paths(values, base) | {"DATA_DIR": data_dir(values.get("DATA_DIR"), base)}
    config = Config(**values, source_path=source_path)
    _check_values(config, where)
    return config


def _seed_sae_defaults(raw: dict[str, Any], where: str) -> dict[str, str]:
    """Report the seed keys not used here; a seed config without SAE keys gets the seed's SAEs."""
    line = unused_seed_keys_line(map(str, raw))
    if line:
        logger.info("%s%s", line, where)
    if not is_seed_config(map(str, raw)) or any(key in raw for key in SEED_SAES):
        return {}
    logger.info(
        "Seed config%s names no SAE source: using the SAEs the seed ran on, %s",
        where,
        ", ".join(f"{key}: {source}" for key, source in SEED_SAES.items()),
    )
    return dict(SEED_SAES)


def _warn_unknown(key: str, known: Collection[str], where: str) -> None:
    """Warn about a key nobody reads; suggest a key only for a near-misspelling."""
    if is_unused_seed_key(key):
        return
    upper = key.upper()
    if upper in known:
        close = [upper]
    else:  # pasted text (a long key) is no misspelling, and slow to match
        close = difflib.get_close_matches(upper, known, cutoff=MISSPELLING_RATIO) if len(key) <= 100 else []
    hint = f"; did you mean {close[0]!r}?" if close else ""
    logger.warning("Unknown config key %s%s ignored%s", shown(key), where, hint)


def _is_unset(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() in ("", "None", "null"))


def _coerce(key: str, value: Any, annotation: Any, where: str) -> Any:
    """Check `value` against the field type; name key, type and value when wrong."""
    target = _strip_optional(annotation)
    bad = ConfigError(f"Config key {key}{where} must be {_type_name(target)}, got {shown(value)}")
    if target is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if target is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if target is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        if not math.isfinite(value):  # YAML's .nan and .inf: no key means them, and JSON cannot hold them
            raise ConfigError(f"Config key {key}{where} must be a finite number, got {shown(value)}")
        return float(value)
    if target in (str, Path):
        if not isinstance(value, str):
            raise ConfigError(
                f"Config key {key}{where} must be {_type_name(target)}, got {shown(value)} "
                f'({type(value).__name__}); quote it in YAML, e.g. {key}: "9:12"'
            )
        if key in PATH_KEYS:
            check_path_text(key, value, where)
        return value
    if typing.get_origin(target) is dict:
        return _coerce_pinned(key, value, typing.get_args(target)[1], where)
    raise AssertionError(f"no coercion for {annotation}")


def _coerce_pinned(key: str, value: Any, value_type: Any, where: str) -> dict[str, Any]:
    """Pinned dims: keys are int layers or 'site_layer'; values ints or int lists."""
    wants_list = typing.get_origin(value_type) is list
    shape = "{layer: [index, ...]}" if wants_list else "{layer: index}"
    example = "{9: [331, 12], 'attn_10': [5]}" if wants_list else "{9: 331, 'mlp_10': 5}"
    if not isinstance(value, dict):
        raise ConfigError(
            f"Config key {key}{where} must be a mapping {shape}, e.g. {example}; got {shown(value)}"
        )
    result: dict[str, Any] = {}
    for layer_key, dims in value.items():
        try:
            site, layer = parse_site_key(layer_key)
        except ValueError as e:
            raise ConfigError(f"Config key {key}{where}: {e}") from e
        items = dims if isinstance(dims, list) else [dims]
        if not items or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in items):
            raise ConfigError(
                f"Config key {key}{where}: {shown(layer_key)} must map to "
                f"{'a list of non-negative ints' if wants_list else 'one non-negative int'}, "
                f"got {shown(dims)}; e.g. {example}"
            )
        if not wants_list and len(items) != 1:
            raise ConfigError(
                f"Config key {key}{where}: {shown(layer_key)} pins {shown(items)}; pipe.py pins one feature "
                f"per layer, e.g. {example}"
            )
        if f"{site}_{layer}" in result:
            raise ConfigError(
                f"Config key {key}{where} names site {site}_{layer} twice ({shown(layer_key)} repeats it; "
                f"an int layer means resid_{layer}); give each site one entry"
            )
        result[f"{site}_{layer}"] = list(items) if wants_list else items[0]
    return result


def _is_optional(annotation: Any) -> bool:
    return isinstance(annotation, types.UnionType) and type(None) in typing.get_args(annotation)


def _strip_optional(annotation: Any) -> Any:
    if isinstance(annotation, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0]
    return annotation


def _type_name(target: Any) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", Path: "a path"}
    return names.get(target, str(target))


def _parse_slice(text: str) -> tuple[int | None, int | None]:
    """'start:stop' as Python reads it; a step is refused, since every script needs consecutive layers."""
    parts = text.split(":")
    try:
        bounds = [int(p) if p.strip() else None for p in parts]
    except ValueError:
        bounds = []
    if len(parts) == 3 and len(bounds) == 3:
        raise ConfigError(
            f"ACTS_LAYERS_SLICE {shown(text)} has a step; pipe.py ablates each layer into the next and "
            f"fast.py connects adjacent sites, so the layers must be consecutive: write 'start:stop', "
            f"e.g. '9:12', '0:12' or ':'"
        )
    if len(parts) != 2 or len(bounds) != 2:
        raise ConfigError(
            f"ACTS_LAYERS_SLICE {shown(text)} is not a slice; write 'start:stop' like a Python "
            f"slice, e.g. '9:12', '0:12' or ':'"
        )
    return bounds[0], bounds[1]


def _check_values(config: Config, where: str) -> None:
    """Range checks that need no model."""
    _parse_slice(config.ACTS_LAYERS_SLICE)
    for key, (low, high) in INT_RANGES.items():
        value = getattr(config, key)
        if not low <= value <= high:
            raise ConfigError(f"Config key {key}{where} must lie in {low}..{high}, got {shown(value)}")
    if config.THRESHOLD_EXP is not None and not abs(config.THRESHOLD_EXP) <= MAX_ABS_THRESHOLD_EXP:
        raise ConfigError(
            f"Config key THRESHOLD_EXP{where} must lie in -{MAX_ABS_THRESHOLD_EXP}..{MAX_ABS_THRESHOLD_EXP} "
            f"(2**THRESHOLD_EXP is the edge threshold) or be null, got {config.THRESHOLD_EXP}"
        )
    if not 0 < config.INIT_THINNING_FACTOR <= 1:
        raise ConfigError(
            f"Config key INIT_THINNING_FACTOR{where} must lie in (0, 1] (the kept fraction "
            f"of first-layer features), got {config.INIT_THINNING_FACTOR}"
        )
    if config.INTERP_SOURCE not in (None, *INTERP_SOURCES):
        raise ConfigError(
            f"Config key INTERP_SOURCE{where} is {shown(config.INTERP_SOURCE)}; valid: "
            f"{', '.join(INTERP_SOURCES)} or null (DATASET when set, else PROMPT)"
        )
    if config.INTERP_SOURCE == "dataset" and config.DATASET is None:
        raise ConfigError(f"Config key INTERP_SOURCE{where} is 'dataset' but DATASET is unset; set DATASET")
    if config.KEEPER_CLUSTER_INDEX >= config.NUM_CLUSTERS:
        raise ConfigError(
            f"Config key KEEPER_CLUSTER_INDEX{where} is {config.KEEPER_CLUSTER_INDEX}, but "
            f"NUM_CLUSTERS is {config.NUM_CLUSTERS}; valid: 0..{config.NUM_CLUSTERS - 1}"
        )
    if not 0 <= config.THRESHOLD_PERCENTILE <= 100:
        raise ConfigError(
            f"Config key THRESHOLD_PERCENTILE{where} must lie in [0, 100], got {config.THRESHOLD_PERCENTILE}"
        )
    if config.VALIDATION_ERRORS not in VALIDATION_ERROR_MODES:
        raise ConfigError(
            f"Config key VALIDATION_ERRORS{where} is {config.VALIDATION_ERRORS!r}; "
            f"valid: {', '.join(VALIDATION_ERROR_MODES)}"
        )
    for key, valid in CHOICES.items():
        if getattr(config, key) not in valid:
            raise ConfigError(
                f"Config key {key}{where} is {getattr(config, key)!r}; valid: {', '.join(valid)}"
            )
    for key, valid in OPTIONAL_CHOICES.items():
        if getattr(config, key) not in (None, *valid):
            raise ConfigError(
                f"Config key {key}{where} is {getattr(config, key)!r}; valid: {', '.join(valid)} or null"
            )
    _check_examples(config, where)
    _check_generation(config, where)
    check_files_and_servers({f.name: getattr(config, f.name) for f in dataclasses.fields(config)}, where)
    for key in ("DTYPE", "SAE_DTYPE"):
        value = getattr(config, key)
        if value is not None and value not in DTYPE_NAMES:
            raise ConfigError(f"Config key {key}{where} is {shown(value)}; valid: {', '.join(DTYPE_NAMES)}")
    if not config.sae_sources and not config.TRANSCODERS:
        raise ConfigError(
            f"RESID_SAES, ATTN_SAES, MLP_SAES and TRANSCODERS{where} are all unset; set at least one SAE "
            f"source (or TRANSCODERS, for trace.py alone)"
        )
    _check_trace(config, where)


def _check_trace(config: Config, where: str) -> None:
    """trace.py's shares lie in (0, 1]; its node cap, when set, is positive."""
    for key in ("TRACE_NODE_THRESHOLD", "TRACE_EDGE_THRESHOLD", "TRACE_LOGIT_MASS"):
        if not 0 < getattr(config, key) <= 1:
            raise ConfigError(
                f"Config key {key}{where} is a share of the total and must lie in (0, 1], "
                f"got {getattr(config, key)}"
            )
    if config.TRACE_MAX_FEATURE_NODES is not None and not 1 <= config.TRACE_MAX_FEATURE_NODES <= 10**7:
        raise ConfigError(
            f"Config key TRACE_MAX_FEATURE_NODES{where} must lie in 1..10000000 or be null (every active "
            f"feature), got {config.TRACE_MAX_FEATURE_NODES}"
        )


def _check_generation(config: Config, where: str) -> None:
    """steer.py's sampling keys."""
    if not 0 <= config.TEMPERATURE <= 100:
        raise ConfigError(
            f"Config key TEMPERATURE{where} must lie in 0..100 (0 = greedy decoding), "
            f"got {config.TEMPERATURE}"
        )
    if not 0 < config.TOP_P <= 1:
        raise ConfigError(
            f"Config key TOP_P{where} must lie in (0, 1] (the probability mass sampled from), "
            f"got {config.TOP_P}"
        )


def _check_examples(config: Config, where: str) -> None:
    """fast.py's example keys: one source of examples, and what each metric/baseline needs."""
    if config.PAIRS_FILE is not None and config.PATCH_PROMPT is not None:
        raise ConfigError(
            f"PAIRS_FILE and PATCH_PROMPT{where} are both set; give pairs in PAIRS_FILE or one pair as "
            f"PROMPT + PATCH_PROMPT, not both"
        )
    if config.PATCH_ANSWER is not None and config.PATCH_PROMPT is None:
        raise ConfigError(f"PATCH_ANSWER{where} is set without PATCH_PROMPT; set PATCH_PROMPT too")
    if config.PATCH_PROMPT is not None and (config.ANSWER is None) != (config.PATCH_ANSWER is None):
        raise ConfigError(
            f"ANSWER and PATCH_ANSWER{where}: set both (the prompts are inputs, the answers follow them) "
            f"or neither (each prompt's last token is its answer)"
        )
    has_patch = config.PAIRS_FILE is not None or config.PATCH_PROMPT is not None
    for key, needs in (("METRIC", "logit_diff"), ("BASELINE", "patch")):
        if getattr(config, key) == needs and not has_patch:
            raise ConfigError(
                f"Config key {key}{where} is {needs!r}, which needs patch prompts; set PATCH_PROMPT "
                f"or PAIRS_FILE"
            )
    for key in ("NODE_THRESHOLD", "EDGE_THRESHOLD"):
        if getattr(config, key) < 0:
            raise ConfigError(f"Config key {key}{where} must be at least 0, got {getattr(config, key)}")
