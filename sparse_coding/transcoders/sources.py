"""Where transcoders come from: known releases (data), `{layer}` templates, the files of one layer.

A TRANSCODERS value is a known release name (see RELEASES) or a hub or local
``{layer}`` template as for SAEs (`models.sae_sources`), whose path may also
end in ``.pt``: one of Dunefsky et al.'s original pickles. A folder is read in
whichever layout its files make (`layouts.FOLDER_LAYOUTS`).

Each release records whether its transcoders were trained with a BOS
(``<|endoftext|>``) first (`trained_prepend_bos`; facts and sources:
docs/transcoders.md); a run tokenizes as they were trained (`models.bos`).
"""

import json
from dataclasses import dataclass, replace
from pathlib import Path

from sparse_coding.errors import TranscoderLoadError
from sparse_coding.transcoders.layouts import FOLDER_LAYOUTS, folder_layout

PICKLE_SUFFIX = ".pt"


@dataclass(frozen=True)
class TranscoderRelease:
    """A published transcoder set: hub repo, per-layer path template, layout, and layers held."""

    repo_id: str
    template: str
    layout: str
    layers: range | None  # None: one per model layer
    about: str
    prepend_bos: bool  # trained on contexts that start with BOS
    neuronpedia: str | None = None  # Neuronpedia set of its features, ``{layer}`` filled in


# Dunefsky et al.'s transcoders (all three packagings hold the same features) are Neuronpedia's
# "tres-dc" sets; no Neuronpedia set holds EleutherAI's (docs/transcoders.md).
_TRES_DC = "gpt2-small/{layer}-tres-dc"
RELEASES: dict[str, TranscoderRelease] = {
    "gpt2-small-transcoders": TranscoderRelease(
        "jacobdunefsky/gpt2small-transcoders", "gpt2-small-dun-chl-mlp-tc{layer}", "dunefsky", None,
        "Dunefsky et al. 2024 per-layer transcoders, 24576 ReLU features per layer", True, _TRES_DC,
    ),
    "gpt2-small-transcoders-original": TranscoderRelease(
        "pchlenski/gpt2-transcoders",
        "final_sparse_autoencoder_gpt2-small_blocks.{layer}.ln2.hook_normalized_24576.pt", "pickle", None,
        "the same transcoders as first published (pickles)", True, _TRES_DC,
    ),
    "gpt2-small-transcoders-arena": TranscoderRelease(
        "callummcdougall/arena-demos-transcoder", "gpt2-small-layer-{layer}-mlp-transcoder-folded-b_dec_out",
        "saelens", range(9), "the same transcoders in SAELens folders, layers 0-8 only", True, _TRES_DC,
    ),
    "gpt2-small-transcoders-relu-sp6-skip": TranscoderRelease(
        "EleutherAI/gpt2-mntss-transcoder-relu-sp6-skip", "h.{layer}.mlp", "sparsify", None,
        "EleutherAI per-layer skip transcoders (sparsify folders)", True,
    ),
    "gpt2-small-clt-relu-sp8": TranscoderRelease(
        "EleutherAI/gpt2-mntss-transcoder-clt-relu-sp8", "h.{layer}.mlp", "sparsify", None,
        "EleutherAI cross-layer transcoder, 16384 features per layer, 4.5 GB", True,
    ),
    "gpt2-small-clt-relu-sp10-1b": TranscoderRelease(
        "EleutherAI/gpt2-mntss-transcoder-clt-relu-sp10-1b", "h.{layer}.mlp", "sparsify", None,
        "EleutherAI cross-layer transcoder (sparsity 10, 1B tokens)", True,
    ),
}  # fmt: skip


@dataclass(frozen=True)
class ResolvedLayer:
    """One layer's transcoder: a local path, or a repo and a path in it; its layout when known."""

    description: str
    local: Path | None
    repo_id: str | None
    path: str | None
    layout: str | None


def release_layers(source: str, n_layers: int) -> range:
    """The layers `source` holds transcoders for, in a model of `n_layers` layers."""
    release = RELEASES.get(source)
    layers = release.layers if release and release.layers is not None else range(n_layers)
    return range(min(layers.start, n_layers), min(layers.stop, n_layers))


def trained_prepend_bos(source: str) -> bool | None:
    """Whether `source`'s transcoders were trained on contexts starting with BOS: the release's fact,
    else a SAELens cfg.json's ``prepend_bos`` (top level or under ``metadata``) of its first layer,
    local or in the Hugging Face cache; None when nothing records it."""
    if source in RELEASES:
        return RELEASES[source].prepend_bos
    try:
        resolved = resolve_layer(source, 0)
    except TranscoderLoadError:
        return None
    path = _cached_file(resolved, "cfg.json")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8")) if path is not None else {}
    except (OSError, ValueError):
        return None
    recorded = cfg.get("prepend_bos", (cfg.get("metadata") or {}).get("prepend_bos"))
    return recorded if isinstance(recorded, bool) else None


def transcoders_bos(source: str) -> dict[str, bool]:
    """{description: prepend_bos} of a TRANSCODERS value for `models.bos.settle_prepend_bos`; empty
    when nothing records its convention."""
    trained = trained_prepend_bos(source)
    return {} if trained is None else {f"TRANSCODERS {source}": trained}


def neuronpedia_set(source: str, layer: int) -> str | None:
    """The Neuronpedia set of a layer's features (``gpt2-small/8-tres-dc``), when one holds them."""
    release = RELEASES.get(source)
    return release.neuronpedia.format(layer=layer) if release and release.neuronpedia else None


def _cached_file(resolved: "ResolvedLayer", name: str) -> Path | None:
    """A file of a layer's folder, locally or from the Hugging Face cache (never downloaded)."""
    if resolved.local is not None:
        return resolved.local / name if (resolved.local / name).is_file() else None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(resolved.repo_id, f"{resolved.path}/{name}")
    return Path(found) if isinstance(found, str) else None


def resolve_layer(source: str, layer: int) -> ResolvedLayer:
    """Turn a TRANSCODERS value and a layer into where that layer's files are."""
    if source in RELEASES:
        release = RELEASES[source]
        path = release.template.format(layer=layer)
        where = f"{source} layer {layer} ({release.repo_id}/{path})"
        return ResolvedLayer(where, None, release.repo_id, path, release.layout)
    if "{layer}" not in source:
        raise TranscoderLoadError(
            f"TRANSCODERS {source!r} is neither a known release nor a template with '{{layer}}'; known "
            f"releases: {', '.join(RELEASES)}; or 'owner/repo/folder_{{layer}}' (hub) or "
            f"'/path/to/folder_{{layer}}' (local)"
        )
    filled = source.format(layer=layer)
    local = Path(filled).expanduser()
    pickle = "pickle" if filled.endswith(PICKLE_SUFFIX) else None
    if source.startswith(("/", ".", "~")) or local.exists():
        return ResolvedLayer(filled, local, None, None, pickle)
    parts = filled.split("/")
    if len(parts) < 3:
        raise TranscoderLoadError(
            f"TRANSCODERS {source!r}: {filled!r} is no local path and no hub path 'owner/repo/folder' "
            f"(a hub template needs a folder or file inside the repo)"
        )
    return ResolvedLayer(f"{source} layer {layer} ({filled})", None, "/".join(parts[:2]), "/".join(parts[2:]),
                         pickle)  # fmt: skip


def hub_files(resolved: ResolvedLayer) -> list[tuple[str, str]]:
    """(repo, file) of every hub file a layer of known layout needs ([] for local or unknown layouts)."""
    if resolved.repo_id is None or resolved.layout is None:
        return []
    if resolved.layout == "pickle":
        return [(resolved.repo_id, resolved.path)]
    return [(resolved.repo_id, f"{resolved.path}/{name}") for name in FOLDER_LAYOUTS[resolved.layout]]


def layer_files(resolved: ResolvedLayer) -> tuple[str, dict[str, Path]]:
    """(layout, file name -> local path) of one layer, downloading from the hub if needed."""
    if resolved.local is not None:
        return _local_files(resolved)
    layouts = [resolved.layout] if resolved.layout else list(FOLDER_LAYOUTS)
    problems = []
    for layout in layouts:
        try:
            return layout, _download(hub_files(replace(resolved, layout=layout)), layout)
        except TranscoderLoadError as e:
            problems.append(str(e))
    raise TranscoderLoadError(
        f"Could not fetch transcoder {resolved.description} from the hub: {'; '.join(problems)}. Check the "
        f"repo id and folder, network access (offline, the files must be in the Hugging Face cache), and "
        f"HF_TOKEN for private repos"
    )


def _local_files(resolved: ResolvedLayer) -> tuple[str, dict[str, Path]]:
    path = resolved.local
    if path.is_file() and path.name.endswith(PICKLE_SUFFIX):
        return "pickle", {path.name: path}
    names = {p.name for p in path.iterdir()} if path.is_dir() else set()
    layout = folder_layout(names)
    if layout is None:
        expected = "; ".join(f"{name}: {' + '.join(files)}" for name, files in FOLDER_LAYOUTS.items())
        found = f"holds {sorted(names)}" if path.is_dir() else "does not exist"
        raise TranscoderLoadError(
            f"Transcoder folder {path} {found}; a transcoder folder holds one of the layouts {expected}, "
            f"or give a '{PICKLE_SUFFIX}' file"
        )
    return layout, {name: path / name for name in FOLDER_LAYOUTS[layout]}


def _download(files: list[tuple[str, str]], layout: str) -> dict[str, Path]:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return {name.rsplit("/", 1)[-1]: Path(hf_hub_download(repo, name)) for repo, name in files}
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as e:
        raise TranscoderLoadError(f"{layout} layout: {str(e).splitlines()[0]}") from e
