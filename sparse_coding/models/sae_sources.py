"""Where SAEs come from: known releases (data), `{layer}` templates, cfg spellings.

A source (the value of RESID_SAES / ATTN_SAES / MLP_SAES) is one of:
- a known release name, e.g. ``gpt2-small-res-jb`` (see RELEASES);
- a hub template ``owner/repo/folder_{layer}``;
- a local template ``/path/to/folder_{layer}`` (or ``./...``, ``~/...``).
Each resolved folder holds SAELens' ``cfg.json`` + ``sae_weights.safetensors``.
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparse_coding.config.yaml_file import shown
from sparse_coding.errors import SAELoadError
from sparse_coding.nodes import hook_position

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"


@dataclass(frozen=True)
class Release:
    """A published SAE set: hub repo, folder and Neuronpedia templates."""

    repo_id: str
    folder: str
    site: str
    neuronpedia: str | None
    # TransformerLens loaded the model with centred writing weights when
    # training these SAEs, so their inputs have zero mean over d_model.
    center_writing_weights: bool


def _oai(width: str, kind: str, site: str, folder_suffix: str, neuronpedia_set: str) -> Release:
    return Release(
        repo_id=f"jbloom/GPT2-Small-OAI-v5-{width}-{kind}-SAEs",
        folder=f"v5_{width}_layer_{{layer}}{folder_suffix}",
        site=site,
        neuronpedia=f"gpt2-small/{{layer}}-{neuronpedia_set}_{width}-oai",
        center_writing_weights=False,
    )


RELEASES: dict[str, Release] = {
    "gpt2-small-res-jb": Release(
        repo_id="jbloom/GPT2-Small-SAEs-Reformatted",
        folder="blocks.{layer}.hook_resid_pre",
        site="resid",
        neuronpedia="gpt2-small/{layer}-res-jb",
        center_writing_weights=True,
    ),
    # The resid-post 32k folders alone keep a ".pt" suffix on the hub.
    "gpt2-small-resid-post-v5-32k": _oai("32k", "resid-post", "resid", ".pt", "res_post"),
    "gpt2-small-resid-post-v5-128k": _oai("128k", "resid-post", "resid", "", "res_post"),
    "gpt2-small-attn-out-v5-32k": _oai("32k", "attn-out", "attn", "", "att"),
    "gpt2-small-attn-out-v5-128k": _oai("128k", "attn-out", "attn", "", "att"),
    "gpt2-small-mlp-out-v5-32k": _oai("32k", "mlp-out", "mlp", "", "mlp"),
    "gpt2-small-mlp-out-v5-128k": _oai("128k", "mlp-out", "mlp", "", "mlp"),
}


@dataclass(frozen=True)
class ResolvedSource:
    """One layer's SAE folder: local path or (hub repo, folder in it)."""

    description: str
    local_dir: Path | None
    repo_id: str | None
    folder: str | None
    neuronpedia_id: str | None
    center_writing_weights: bool | None  # None: read from cfg.json


def resolve_source(source: str, layer: int) -> ResolvedSource:
    """Turn a source string and a layer into the folder that holds that SAE."""
    if source in RELEASES:
        release = RELEASES[source]
        folder = release.folder.format(layer=layer)
        neuronpedia = release.neuronpedia.format(layer=layer) if release.neuronpedia else None
        return ResolvedSource(
            f"{source} layer {layer} ({release.repo_id}/{folder})",
            None,
            release.repo_id,
            folder,
            neuronpedia,
            release.center_writing_weights,
        )
    if "{layer}" not in source:
        raise SAELoadError(
            f"SAE source {source!r} is neither a known release nor a template with '{{layer}}'; "
            f"known releases: {', '.join(RELEASES)}; or 'owner/repo/folder_{{layer}}' (hub) "
            f"or '/path/to/folder_{{layer}}' (local)"
        )
    filled = source.format(layer=layer)
    local = Path(filled).expanduser()
    if source.startswith(("/", ".", "~")) or local.is_dir():
        return ResolvedSource(f"{filled}", local, None, None, None, None)
    parts = filled.split("/")
    if len(parts) < 3:
        raise SAELoadError(
            f"SAE source {source!r}: {filled!r} is no local folder and no hub path "
            f"'owner/repo/folder' (a hub template needs a folder inside the repo)"
        )
    return ResolvedSource(
        f"{source} layer {layer} ({filled})", None, "/".join(parts[:2]), "/".join(parts[2:]), None, None
    )


def fetch_file(resolved: ResolvedSource, name: str) -> Path:
    """The path of `name` (CFG_FILE or WEIGHTS_FILE) of the SAE folder, downloading it if needed.

    Raises:
        SAELoadError: a local folder lacks it, the hub has none, or it is not cached and the hub
            cannot be asked (offline or unreachable: said at once, not after the hub library's retries).
    """
    if resolved.local_dir is not None:
        path = resolved.local_dir / name
        if not path.is_file():
            raise SAELoadError(
                f"SAE folder {resolved.local_dir} has no {path.name}; an SAELens folder holds "
                f"{CFG_FILE} and {WEIGHTS_FILE}"
            )
        return path
    from sparse_coding.files.hub_files import hub_file

    try:
        path = hub_file(
            resolved.repo_id,
            f"{resolved.folder}/{name}",
            what=f"SAE {resolved.description}",
            error=SAELoadError,
        )
    except OSError as e:
        raise SAELoadError(
            f"Could not fetch SAE {resolved.description} from the hub: {e}. Check the repo id and "
            f"folder, network access, and HF_TOKEN for private repos"
        ) from e
    if path is None:
        raise SAELoadError(
            f"SAE {resolved.description}: the hub repo {resolved.repo_id} has no {resolved.folder}/{name}; "
            f"check the folder template (an SAELens folder holds {CFG_FILE} and {WEIGHTS_FILE})"
        )
    return path


def read_cfg(resolved: ResolvedSource) -> dict[str, Any]:
    """The SAE folder's cfg.json in one form (`normalize_cfg`); no weights.

    Raises:
        SAELoadError: the cfg is missing, not JSON, or not an SAELens cfg of a supported hook.
    """
    cfg_path = fetch_file(resolved, CFG_FILE)
    try:
        raw = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SAELoadError(
            f"SAE cfg {cfg_path} is not readable JSON ({type(e).__name__}: {e}); an SAELens cfg.json is a "
            f"JSON object with d_in, d_sae and hook_name (or hook_point)"
        ) from e
    norm = normalize_cfg(raw, str(cfg_path))
    try:
        hook_position(norm["hook_name"])
    except ValueError as e:
        raise SAELoadError(f"SAE cfg {cfg_path}: {e}") from e
    return norm


def _mapping(cfg: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    """An optional object field of the cfg ({} when absent or null)."""
    value = cfg.get(key) or {}
    if not isinstance(value, dict):
        raise SAELoadError(f"SAE cfg {where}: {key} must be an object, got {shown(value)}")
    return value


def _size(cfg: dict[str, Any], key: str, where: str) -> int:
    """A positive integer size (d_in, d_sae); JSON may write it as 768.0."""
    value = cfg[key]
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not number or value != int(value) or value < 1:
        raise SAELoadError(f"SAE cfg {where}: {key} must be a positive integer, got {shown(value)}")
    return int(value)


# Old SAELens spelling -> current spelling.
_RENAMED_KEYS = {
    "hook_point": "hook_name",
    "hook_point_layer": "hook_layer",
    "hook_point_head_index": "hook_head_index",
}


def normalize_cfg(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """One form for old and new SAELens cfg.json spellings.

    Returns keys: d_in, d_sae, hook_name, activation ("relu"|"topk"|"jumprelu"),
    k, normalize_activations ("none"|"layer_norm"), apply_b_dec_to_input,
    prepend_bos, center_writing_weights (None if the cfg does not say),
    neuronpedia_id.
    """
    if not isinstance(raw, dict):
        raise SAELoadError(f"SAE cfg {where} must be a JSON object, got {shown(raw)}")
    cfg = {**raw, **_mapping(raw, "metadata", where)}
    cfg |= {new: cfg[old] for old, new in _RENAMED_KEYS.items() if old in cfg and new not in cfg}
    for key in ("d_in", "d_sae", "hook_name"):
        if key not in cfg:
            raise SAELoadError(
                f"SAE cfg {where} lacks {key!r}; an SAELens cfg.json has d_in, d_sae, hook_name"
            )
    kwargs = _mapping(cfg, "activation_fn_kwargs", where)
    d_in, d_sae = _size(cfg, "d_in", where), _size(cfg, "d_sae", where)
    activation = _activation(cfg, where)
    k = kwargs.get("k", cfg.get("k"))
    if activation == "topk" and (not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= d_sae):
        raise SAELoadError(
            f"SAE cfg {where}: a TopK SAE needs activation_fn_kwargs.k, an int in 1..d_sae={d_sae}, "
            f"got {shown(k)}"
        )
    norm = cfg.get("normalize_activations") or "none"
    norm = "none" if norm in (False, "False", "none", "None") else str(norm)
    if norm not in ("none", "layer_norm"):
        raise SAELoadError(
            f"SAE cfg {where}: normalize_activations {norm!r} is not supported; supported: none, layer_norm"
        )
    model_kwargs = _mapping(cfg, "model_from_pretrained_kwargs", where)
    if not isinstance(cfg["hook_name"], str):
        raise SAELoadError(f"SAE cfg {where}: hook_name must be a string, got {shown(cfg['hook_name'])}")
    return {
        "d_in": d_in,
        "d_sae": d_sae,
        "hook_name": cfg["hook_name"],
        "activation": activation,
        "k": k if activation == "topk" else None,
        "normalize_activations": norm,
        "apply_b_dec_to_input": bool(cfg.get("apply_b_dec_to_input", True)),
        "prepend_bos": bool(cfg.get("prepend_bos", True)),
        "center_writing_weights": model_kwargs.get("center_writing_weights"),
        "neuronpedia_id": cfg["neuronpedia_id"] if isinstance(cfg.get("neuronpedia_id"), str) else None,
    }


def _activation(cfg: dict[str, Any], where: str) -> str:
    """ "relu", "topk" or "jumprelu", from a cfg's architecture and activation function."""
    architecture = str(cfg.get("architecture") or "standard").lower()
    activation_fn = str(cfg.get("activation_fn_str") or cfg.get("activation_fn") or "relu").lower()
    if architecture in ("jumprelu", "jump_relu"):
        return "jumprelu"
    if architecture == "topk" or activation_fn == "topk":
        return "topk"
    if architecture == "standard" and activation_fn == "relu":
        return "relu"
    raise SAELoadError(
        f"SAE cfg {where}: architecture {architecture!r} with activation {activation_fn!r} is not "
        f"supported; supported: standard+relu, topk, jumprelu"
    )
