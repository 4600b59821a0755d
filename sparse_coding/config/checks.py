"""Checks of single config values that need more than a type and a range (`schema.key`'s `check`
and `parse`), and `check_together`: the rules that join keys.
"""

import functools
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sparse_coding.config.schema import NEURONPEDIA_URL
from sparse_coding.config.yaml_file import shown
from sparse_coding.errors import ConfigError
from sparse_coding.nodes import parse_site_key, site_key

IMAGE_SUFFIXES = (".svg", ".png")


def check_path_text(key: str, value: str, where: str) -> None:
    """A path value without a NUL byte (no file system accepts one)."""
    if "\x00" in value:
        raise ConfigError(
            f"Config key {key}{where} holds a NUL byte (\\x00): {shown(value)}; no file or folder name can "
            f"contain one. Write the path without it"
        )


def check_output_name(key: str, value: str, where: str) -> None:
    """One file name (written inside DATA_DIR/<model>/) or an absolute path."""
    check_path_text(key, value, where)
    absolute = Path(value).is_absolute()
    parts = PureWindowsPath(value).parts if "\\" in value else PurePosixPath(value).parts
    if not absolute and (len(parts) != 1 or parts[0] in (".", "..")):
        name = parts[-1] if parts and parts[-1] not in (".", "..") else "graph.svg"
        raise ConfigError(
            f"Config key {key}{where} is {shown(value)}; a relative output name is one file name, "
            f"written inside DATA_DIR/<model>/ (e.g. {name!r}). Give a name without a folder part, or an "
            f"absolute path to write elsewhere"
        )


def check_image_name(key: str, value: str, where: str) -> None:
    """An output name whose extension is an image format Graphviz draws here."""
    check_output_name(key, value, where)
    if Path(value).suffix.lower() not in IMAGE_SUFFIXES:
        raise ConfigError(
            f"Config key {key}{where} is {shown(value)}; its extension {Path(value).suffix!r} sets the "
            f"image format, which is one of {', '.join(IMAGE_SUFFIXES)} (e.g. {Path(value).stem + '.svg'!r})"
        )


def check_server_url(key: str, value: str, where: str) -> None:
    """An http(s) URL with a host (a self-hosted Neuronpedia, for instance)."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (parses the port: 'http://host:x' raises here)
    except ValueError as e:
        raise ConfigError(
            f"Config key {key}{where} is {shown(value)}, which is not a URL ({e}); give one such as "
            f"{NEURONPEDIA_URL!r}"
        ) from e
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"Config key {key}{where} is {shown(value)}; give an http(s) URL with a host, such as "
            f"{NEURONPEDIA_URL!r}"
        )


def redact_url(url: str) -> str:
    """`url` without credentials (``https://user:pass@host`` -> ``https://host``), for logs and files."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def parse_slice(text: str) -> tuple[int | None, int | None]:
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


def check_slice(key: str, value: str, where: str) -> None:
    parse_slice(value)


def _parse_pinned(value: Any, key: str, where: str, *, several: bool) -> dict[str, Any]:
    """Pinned dims: keys are int layers or 'site_layer'; values one int, or (`several`) int lists."""
    shape = "{layer: [index, ...]}" if several else "{layer: index}"
    example = "{9: [331, 12], 'attn_10': [5]}" if several else "{9: 331, 'mlp_10': 5}"
    if not isinstance(value, dict):
        raise ConfigError(
            f"Config key {key}{where} must be a mapping {shape}, e.g. {example}; got {shown(value)}"
        )
    result: dict[str, Any] = {}
    for layer_key, dims in value.items():
        try:
            site = site_key(*parse_site_key(layer_key))
        except ValueError as e:
            raise ConfigError(f"Config key {key}{where}: {e}") from e
        items = dims if isinstance(dims, list) else [dims]
        if not items or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in items):
            raise ConfigError(
                f"Config key {key}{where}: {shown(layer_key)} must map to "
                f"{'a list of non-negative ints' if several else 'one non-negative int'}, "
                f"got {shown(dims)}; e.g. {example}"
            )
        if not several and len(items) != 1:
            raise ConfigError(
                f"Config key {key}{where}: {shown(layer_key)} pins {shown(items)}; pipe.py pins one feature "
                f"per layer, e.g. {example}"
            )
        if site in result:
            raise ConfigError(
                f"Config key {key}{where} names site {site} twice ({shown(layer_key)} repeats it; "
                f"an int layer means resid_{site.rsplit('_', 1)[1]}); give each site one entry"
            )
        result[site] = list(items) if several else items[0]
    return result


parse_pinned_feature = functools.partial(_parse_pinned, several=False)  # DIMS_PINNED: site key -> feature
parse_pinned_features = functools.partial(_parse_pinned, several=True)  # VALIDATION_DIMS_PINNED


def check_together(values: dict[str, Any], where: str) -> None:
    """The rules that join keys (`values`: key -> value of a Config)."""
    if values["INTERP_SOURCE"] == "dataset" and values["DATASET"] is None:
        raise ConfigError(f"Config key INTERP_SOURCE{where} is 'dataset' but DATASET is unset; set DATASET")
    if values["KEEPER_CLUSTER_INDEX"] >= values["NUM_CLUSTERS"]:
        raise ConfigError(
            f"Config key KEEPER_CLUSTER_INDEX{where} is {values['KEEPER_CLUSTER_INDEX']}, but "
            f"NUM_CLUSTERS is {values['NUM_CLUSTERS']}; valid: 0..{values['NUM_CLUSTERS'] - 1}"
        )
    if not any(values[key] for key in ("RESID_SAES", "ATTN_SAES", "MLP_SAES", "TRANSCODERS")):
        raise ConfigError(
            f"RESID_SAES, ATTN_SAES, MLP_SAES and TRANSCODERS{where} are all unset; set at least one SAE "
            f"source (or TRANSCODERS, for trace.py alone)"
        )
    if values["NODE_ESTIMATOR"] == "exact" and values["NODE_POSITIONS"] == "each":
        raise ConfigError(
            f"NODE_ESTIMATOR exact{where} patches a feature at every position, so it checks summed nodes "
            "only; use NODE_POSITIONS sum with it, or NODE_ESTIMATOR gradient"
        )
    _check_examples(values, where)


def _check_examples(values: dict[str, Any], where: str) -> None:
    """fast.py's example keys: one source of examples, and what each metric/baseline needs."""
    pairs, patch, answer, patch_answer = (
        values[k] for k in ("PAIRS_FILE", "PATCH_PROMPT", "ANSWER", "PATCH_ANSWER")
    )
    if pairs is not None and patch is not None:
        raise ConfigError(
            f"PAIRS_FILE and PATCH_PROMPT{where} are both set; give pairs in PAIRS_FILE or one pair as "
            f"PROMPT + PATCH_PROMPT, not both"
        )
    if patch_answer is not None and patch is None:
        raise ConfigError(f"PATCH_ANSWER{where} is set without PATCH_PROMPT; set PATCH_PROMPT too")
    if patch is not None and (answer is None) != (patch_answer is None):
        raise ConfigError(
            f"ANSWER and PATCH_ANSWER{where}: set both (the prompts are inputs, the answers follow them) "
            f"or neither (each prompt's last token is its answer)"
        )
    for key, needs in (("METRIC", "logit_diff"), ("BASELINE", "patch")):
        if values[key] == needs and pairs is None and patch is None:
            raise ConfigError(
                f"Config key {key}{where} is {needs!r}, which needs patch prompts; set PATCH_PROMPT "
                f"or PAIRS_FILE"
            )
