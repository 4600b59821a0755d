"""Reading transcoder weight files: safetensors (whole, or rows on demand) and Dunefsky's pickles.

Rows on demand (`SafetensorsRows`) are hand-written on purpose: a cross-layer
transcoder's decoders (3.9 GB for GPT-2 small) need not fit in memory, a graph
reads only the rows of its active features, and safetensors' own slice API
takes index lists in some versions and not in others. A .safetensors file is
an 8-byte little-endian header length, a JSON header (dtype, shape, byte
offsets per tensor) and the raw data, so a read-only NumPy memory map of one
tensor is the whole reader.

Dunefsky et al.'s original files are pickles of ``{"cfg": <their config
class>, "state_dict": ...}``; `load_pickled_state` opens them with torch's
weights-only unpickler, allowing only that config class, bound to an inert
stand-in that just receives the pickled attributes.
"""

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from torch import Tensor

from sparse_coding.errors import TranscoderLoadError

# safetensors dtype -> (NumPy dtype of the stored bytes, torch dtype they mean).
_DTYPES = {
    "F64": (np.float64, torch.float64),
    "F32": (np.float32, torch.float32),
    "F16": (np.float16, torch.float16),
    "BF16": (np.uint16, torch.bfloat16),
}


class SafetensorsRows:
    """One 2-D tensor of a .safetensors file whose rows are read when indexed (memory-mapped)."""

    def __init__(self, path: Path, name: str) -> None:
        self.path, self.name = Path(path), name
        header_len, header = _header(self.path)
        if name not in header:
            raise TranscoderLoadError(f"{self.path} has no tensor {name!r}; it holds {sorted(header)}")
        info = header[name]
        if info["dtype"] not in _DTYPES or len(info["shape"]) != 2:
            raise TranscoderLoadError(
                f"{self.path}: {name} is {info['dtype']} {info['shape']}; rows are read from 2-D "
                f"tensors of {', '.join(_DTYPES)}"
            )
        stored, self.dtype = _DTYPES[info["dtype"]]
        self.shape = tuple(info["shape"])
        start = 8 + header_len + info["data_offsets"][0]
        self._array = np.memmap(self.path, dtype=stored, mode="r", offset=start, shape=self.shape)

    def __getitem__(self, rows: Tensor) -> Tensor:
        """The rows at `rows` (n,), as a CPU tensor (n, width)."""
        picked = np.ascontiguousarray(self._array[rows.cpu().numpy()])
        tensor = torch.from_numpy(picked)
        return tensor.view(torch.bfloat16) if self.dtype == torch.bfloat16 else tensor


def _header(path: Path) -> tuple[int, dict[str, Any]]:
    """(length, contents) of a .safetensors file's JSON header."""
    try:
        with open(path, "rb") as f:
            length = int.from_bytes(f.read(8), "little")
            return length, json.loads(f.read(length))
    except (OSError, ValueError) as e:
        raise TranscoderLoadError(f"{path} is not a readable safetensors file: {e}") from e


def tensor_names(path: Path) -> dict[str, list[int]]:
    """Name -> shape of every tensor in a .safetensors file (from its header alone)."""
    return {name: info["shape"] for name, info in _header(path)[1].items() if name != "__metadata__"}


def load_tensors(path: Path, skip: str | None = None) -> dict[str, Tensor]:
    """The tensors of a .safetensors file on the CPU, all but `skip`."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {name: f.get_tensor(name) for name in f.keys() if name != skip}
    except Exception as e:  # safetensors raises its own error types
        raise TranscoderLoadError(f"{path} is not a readable safetensors file: {e}") from e


class PickledConfig:
    """Stands in for Dunefsky et al.'s ``sae_training.config.LanguageModelSAERunnerConfig``:
    holds the pickled attributes, runs nothing."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


PickledConfig.__module__ = "sae_training.config"
PickledConfig.__qualname__ = PickledConfig.__name__ = "LanguageModelSAERunnerConfig"


def load_pickled_state(path: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(cfg attributes, state dict) of a ``{"cfg", "state_dict"}`` pickle, weights-only, on the CPU."""
    try:
        with torch.serialization.safe_globals([PickledConfig]):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError...
        raise TranscoderLoadError(
            f"{path} could not be read as Dunefsky et al.'s transcoder pickle with torch.load("
            f"weights_only=True): {str(e).splitlines()[0]}"
        ) from e
    if not isinstance(data, dict) or not isinstance(data.get("state_dict"), dict):
        raise TranscoderLoadError(f"{path} holds no 'state_dict' mapping; expected {{'cfg', 'state_dict'}}")
    cfg = data.get("cfg")
    return (dict(vars(cfg)) if cfg is not None else {}), dict(data["state_dict"])
