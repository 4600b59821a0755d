"""Where a config's paths point: relative to the config file, never to the working directory.

Every relative path in a config (MODEL_DIR, DATASET, PAIRS_FILE, the SAE and transcoder
templates, DATA_DIR) is read against the folder of the config file that holds it (a config
given as a dict: the working directory), so a run gives the same result from any working
directory. A value is a path when it says so (``/``, ``~``, ``./``, ``../``), when it cannot
be a hub name (a MODEL_DIR with two slashes, a DATASET ending in ``.txt``/``.jsonl``/``.parquet``,
any PAIRS_FILE) or when it names something that exists there; anything else
(``openai-community/gpt2``, a release name, ``owner/repo/folder_{layer}``) is left for the hub.
An installed (site-packages) copy of this package is no place for a user's files: a DATA_DIR
inside one becomes ``sparse_coding_data`` in the working directory.
"""

import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR_NAME = "data"
INSTALLED_FALLBACK = "sparse_coding_data"
_EXPLICIT = ("/", "~", "./", "../")
_LOCAL_SUFFIXES = (".txt", ".jsonl", ".parquet")
_SAE_KEYS = ("RESID_SAES", "ATTN_SAES", "MLP_SAES", "TRANSCODERS")


def _is_path(key: str, value: str, base: Path) -> bool:
    """Whether config value `value` of `key` names a local file or folder (rules in the module doc)."""
    if key == "PAIRS_FILE" or value.startswith(_EXPLICIT) or value in (".", ".."):
        return True
    if key == "MODEL_DIR":
        return value.count("/") > 1 or (base / value).exists()
    if key == "DATASET":
        return Path(value).suffix in _LOCAL_SUFFIXES or (base / value).exists()
    if key in _SAE_KEYS and "{layer}" in value:
        return (base / value.format(layer=0)).parent.is_dir()
    return False


def resolve_paths(values: dict[str, Any], base: Path) -> dict[str, Any]:
    """`values` with every relative path of MODEL_DIR, DATASET, PAIRS_FILE and the SAE keys made
    absolute against `base` (the config file's folder); hub names are left as they are."""
    resolved = dict(values)
    for key in ("MODEL_DIR", "DATASET", "PAIRS_FILE", *_SAE_KEYS):
        value = values.get(key)
        if isinstance(value, str) and _is_path(key, value, base):
            path = Path(value).expanduser()
            resolved[key] = str(path if path.is_absolute() else (base / path).resolve())
    return resolved


def data_dir(value: str | Path | None, base: Path) -> Path:
    """DATA_DIR as an absolute folder: `value` (default ``data``) against `base`, moved out of an
    installed package."""
    path = Path(value if value is not None else DEFAULT_DATA_DIR_NAME).expanduser()
    path = (path if path.is_absolute() else base / path).resolve()
    installed = not {"site-packages", "dist-packages"}.isdisjoint(PACKAGE_DIR.parts)  # not a source checkout
    if installed and path.is_relative_to(PACKAGE_DIR):
        fallback = (Path.cwd() / INSTALLED_FALLBACK).resolve()
        logger.info(
            "DATA_DIR %s lies inside the installed package; writing to %s instead (set DATA_DIR to choose)",
            path,
            fallback,
        )
        return fallback
    return path
