"""Checks of the config keys that name files and servers: what a run writes and where it connects.

- Output names (GRAPH_FILE, GRAPH_DOT_FILE, GRADS_FILE, GRADS_DOT_FILE,
  TRACE_FILE, TRACE_DOT_FILE) are
  one file name inside DATA_DIR/<model>/ (no folder part, not ``.`` or
  ``..``), or an absolute path the user chose; an image name ends in a format
  Graphviz draws here (``.svg``, ``.png``).
- No path holds a NUL byte, which no file system accepts.
- NEURONPEDIA_URL is an http(s) URL with a host.
"""

from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any
from urllib.parse import urlsplit

from sparse_coding.config.yaml_file import shown
from sparse_coding.errors import ConfigError

IMAGE_KEYS = ("GRAPH_FILE", "GRADS_FILE", "TRACE_FILE")
OUTPUT_KEYS = (*IMAGE_KEYS, "GRAPH_DOT_FILE", "GRADS_DOT_FILE", "TRACE_DOT_FILE")
IMAGE_SUFFIXES = (".svg", ".png")
SAE_KEYS = ("RESID_SAES", "ATTN_SAES", "MLP_SAES")
PATH_KEYS = (*OUTPUT_KEYS, *SAE_KEYS, "DATA_DIR", "MODEL_DIR", "DATASET", "PAIRS_FILE", "TRANSCODERS")


def check_path_text(key: str, value: str, where: str) -> None:
    """A path value without a NUL byte (no file system accepts one)."""
    if "\x00" in value:
        raise ConfigError(
            f"Config key {key}{where} holds a NUL byte (\\x00): {shown(value)}; no file or folder name can "
            f"contain one. Write the path without it"
        )


def check_output_name(key: str, value: str, where: str) -> None:
    """One file name (written inside DATA_DIR/<model>/) or an absolute path; images .svg or .png."""
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
    if key in IMAGE_KEYS and Path(value).suffix.lower() not in IMAGE_SUFFIXES:
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
            f"'https://www.neuronpedia.org'"
        ) from e
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"Config key {key}{where} is {shown(value)}; give an http(s) URL with a host, such as "
            f"'https://www.neuronpedia.org'"
        )


def check_files_and_servers(values: dict[str, Any], where: str) -> None:
    """Every output name and the Neuronpedia URL (`values`: key -> value of a Config)."""
    for key in OUTPUT_KEYS:
        check_output_name(key, values[key], where)
    check_server_url("NEURONPEDIA_URL", values["NEURONPEDIA_URL"], where)
