"""One frozen, validated config object for every script.

`load_config(path)` reads `central_config.yaml`, checks every key once and
returns a `Config`. `null`, `None` and a missing key all mean "unset". Unknown
keys warn with the nearest valid key, so a typo never silently does nothing.
Checks that need the model or the SAEs (layer range, SAE width) are methods
here too, called once those are loaded.
"""

import dataclasses
import difflib
import logging
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sparse_coding.errors import ConfigError
from sparse_coding.nodes import parse_site_key

logger = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG_PATH = PACKAGE_DIR / "config" / "central_config.yaml"
DEFAULT_DATA_DIR = PACKAGE_DIR / "data"
DTYPE_NAMES = ("float32", "float16", "bfloat16", "float64")
# Keys with a fixed set of values (the algorithms that read them check the same names).
CHOICES = {
    "METRIC": ("cross_entropy", "logit_diff", "logprob"),
    "BASELINE": ("zero", "patch", "mean"),
    "SELECTION": ("topk", "threshold"),
    "NODE_ESTIMATOR": ("gradient", "exact"),
}


@dataclass(frozen=True)
class Config:
    """Every key of central_config.yaml; see the comments there for meaning.

    A key typed `X | None` is unset (None) when missing or null; other keys
    fall back to the defaults below.
    """

    # Key hyperparameters.
    ACTS_LAYERS_SLICE: str = "9:12"
    INIT_THINNING_FACTOR: float = 1.0
    NUM_SEQUENCES_INTERPED: int = 1
    THRESHOLD_EXP: float | None = None
    DIMS_PINNED: dict[str, int] | None = None
    NUM_UP_NODES: int = 5
    NUM_DOWN_NODES: int = 5
    VALIDATION_DIMS_PINNED: dict[str, list[int]] | None = None
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
    # Model, prompt and data.
    MODEL_DIR: str = "openai-community/gpt2"
    PROMPT: str = "Copyright (C)"
    DATASET: str | None = None
    DATASET_CONFIG: str | None = None
    DATASET_SPLIT: str = "train"
    DATASET_TEXT_COLUMN: str = "text"
    NUM_SEQUENCES_EVALED: int = 100
    MAX_SEQ_LEN: int = 128
    MAX_SEQ_INTERPED_LEN: int = 64
    BATCH_SIZE: int = 8
    PREPEND_BOS: bool = True
    SEED: int = 0
    # SAEs per site.
    RESID_SAES: str | None = None
    ATTN_SAES: str | None = None
    MLP_SAES: str | None = None
    # Output files.
    DATA_DIR: Path = DEFAULT_DATA_DIR
    GRAPH_FILE: str = "cognition_graph.svg"
    GRAPH_DOT_FILE: str = "cognition_graph.dot"
    GRADS_FILE: str = "cognition_graph_grads.svg"
    GRADS_DOT_FILE: str = "cognition_graph_grads.dot"
    # Labels.
    LOGIT_TOKENS: int = 10
    TOP_K: int = 6
    VIEW: int = 5
    SEQ_PER_DIM_CAP: int = 10
    NEURONPEDIA: bool = True
    NEURONPEDIA_URL: str = "https://www.neuronpedia.org"
    # hist.py preclustering.
    NUM_CLUSTERS: int = 8
    KEEPER_CLUSTER_INDEX: int = 0
    # Hardware.
    DEVICE: str | None = None
    DTYPE: str = "float32"
    SAE_DTYPE: str | None = None
    source_path: Path | None = field(default=None, compare=False)

    def layer_range(self, n_layers: int) -> range:
        """The layers ACTS_LAYERS_SLICE selects in a model of `n_layers` blocks."""
        start, stop = _parse_slice(self.ACTS_LAYERS_SLICE)
        start = 0 if start is None else start
        stop = n_layers if stop is None else stop
        start, stop = (start + n_layers if start < 0 else start), (stop + n_layers if stop < 0 else stop)
        if not (0 <= start < stop <= n_layers):
            raise ConfigError(
                f"ACTS_LAYERS_SLICE {self.ACTS_LAYERS_SLICE!r} selects no layers of a model "
                f"with {n_layers} layers; valid slices lie within '0:{n_layers}', "
                f"e.g. '{max(0, n_layers - 3)}:{n_layers}' or ':'"
            )
        return range(start, stop)

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
        """DATA_DIR/<sanitised model name>/, where every output of a run goes."""
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model_name.strip("/"))
        return self.DATA_DIR / safe.strip("._")

    def to_metadata(self) -> dict[str, Any]:
        """JSON-ready key values, for graph and result metadata."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values.pop("source_path")
        values["DATA_DIR"] = str(self.DATA_DIR)
        return values


def load_config(path: str | Path | None = None) -> Config:
    """Read and validate a YAML config (default: the central config)."""
    path = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    if not path.is_file():
        raise ConfigError(f"Config file {path} does not exist; pass --config PATH to a YAML file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"Config file {path} is not valid YAML{where}: {problem}") from e
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"Config file {path} must be a mapping of KEY: value, got {type(raw).__name__}")
    return config_from_dict(raw, source_path=path)


def config_from_dict(raw: dict[str, Any], source_path: Path | None = None) -> Config:
    """Validate a mapping of keys (as in the YAML) into a Config."""
    where = f" in {source_path}" if source_path else ""
    known = {f.name: f for f in dataclasses.fields(Config) if f.name != "source_path"}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            logger.warning("Unknown config key %r%s ignored%s", key, where, hint)
            continue
        if _is_unset(value):
            if _is_optional(known[key].type):
                values[key] = None
            continue
        values[key] = _coerce(key, value, known[key].type, where)
    if "DATA_DIR" in values:
        data_dir = Path(values["DATA_DIR"]).expanduser()
        base = source_path.parent if source_path else Path.cwd()
        values["DATA_DIR"] = (data_dir if data_dir.is_absolute() else base / data_dir).resolve()
    config = Config(**values, source_path=source_path)
    _check_values(config, where)
    return config


def _is_unset(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() in ("", "None", "null"))


def _coerce(key: str, value: Any, annotation: Any, where: str) -> Any:
    """Check `value` against the field type; name key, type and value when wrong."""
    target = _strip_optional(annotation)
    bad = ConfigError(f"Config key {key}{where} must be {_type_name(target)}, got {value!r}")
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
        return float(value)
    if target in (str, Path):
        if not isinstance(value, str):
            raise ConfigError(
                f"Config key {key}{where} must be {_type_name(target)}, got {value!r} "
                f'({type(value).__name__}); quote it in YAML, e.g. {key}: "9:12"'
            )
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
        raise ConfigError(f"Config key {key}{where} must be a mapping {shape}, e.g. {example}; got {value!r}")
    result: dict[str, Any] = {}
    for layer_key, dims in value.items():
        try:
            site, layer = parse_site_key(layer_key)
        except ValueError as e:
            raise ConfigError(f"Config key {key}{where}: {e}") from e
        items = dims if isinstance(dims, list) else [dims]
        if not items or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in items):
            raise ConfigError(
                f"Config key {key}{where}: {layer_key!r} must map to "
                f"{'a list of non-negative ints' if wants_list else 'one non-negative int'}, "
                f"got {dims!r}; e.g. {example}"
            )
        if not wants_list and len(items) != 1:
            raise ConfigError(
                f"Config key {key}{where}: {layer_key!r} pins {items}; pipe.py pins one feature "
                f"per layer, e.g. {example}"
            )
        if f"{site}_{layer}" in result:
            raise ConfigError(
                f"Config key {key}{where} names site {site}_{layer} twice ({layer_key!r} repeats it; "
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
    parts = text.split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        return tuple(int(p) if p.strip() else None for p in parts)  # type: ignore[return-value]
    except ValueError:
        raise ConfigError(
            f"ACTS_LAYERS_SLICE {text!r} is not a slice; write 'start:stop' like a Python "
            f"slice, e.g. '9:12', '0:12' or ':'"
        ) from None


def _check_values(config: Config, where: str) -> None:
    """Range checks that need no model."""
    _parse_slice(config.ACTS_LAYERS_SLICE)
    positive = (
        "NUM_SEQUENCES_INTERPED",
        "NUM_UP_NODES",
        "NUM_DOWN_NODES",
        "IG_STEPS",
        "NUM_EXAMPLES",
        "NUM_SEQUENCES_EVALED",
        "MAX_SEQ_LEN",
        "MAX_SEQ_INTERPED_LEN",
        "BATCH_SIZE",
        "TOP_K",
        "SEQ_PER_DIM_CAP",
        "NUM_CLUSTERS",
    )
    for key in positive:
        if getattr(config, key) < 1:
            raise ConfigError(f"Config key {key}{where} must be at least 1, got {getattr(config, key)}")
    for key in ("LOGIT_TOKENS", "VIEW", "KEEPER_CLUSTER_INDEX"):
        if getattr(config, key) < 0:
            raise ConfigError(f"Config key {key}{where} must be at least 0, got {getattr(config, key)}")
    if not 0 < config.INIT_THINNING_FACTOR <= 1:
        raise ConfigError(
            f"Config key INIT_THINNING_FACTOR{where} must lie in (0, 1] (the kept fraction "
            f"of first-layer features), got {config.INIT_THINNING_FACTOR}"
        )
    if config.KEEPER_CLUSTER_INDEX >= config.NUM_CLUSTERS:
        raise ConfigError(
            f"Config key KEEPER_CLUSTER_INDEX{where} is {config.KEEPER_CLUSTER_INDEX}, but "
            f"NUM_CLUSTERS is {config.NUM_CLUSTERS}; valid: 0..{config.NUM_CLUSTERS - 1}"
        )
    for key, valid in CHOICES.items():
        if getattr(config, key) not in valid:
            raise ConfigError(
                f"Config key {key}{where} is {getattr(config, key)!r}; valid: {', '.join(valid)}"
            )
    _check_examples(config, where)
    for key in ("DTYPE", "SAE_DTYPE"):
        value = getattr(config, key)
        if value is not None and value not in DTYPE_NAMES:
            raise ConfigError(f"Config key {key}{where} is {value!r}; valid: {', '.join(DTYPE_NAMES)}")
    if not config.sae_sources:
        raise ConfigError(
            f"RESID_SAES, ATTN_SAES and MLP_SAES{where} are all unset; set at least one SAE source"
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
