"""Weight files of the model and the SAEs: headers checked first, tensors cast before they reach the device.

A safetensors header holds every tensor's name, shape and dtype, so a wrong or
truncated file is found before any data is read. Tensors are then read one at
a time on the CPU, cast to the run's dtype there and only then moved, so the
device never holds a stored-dtype copy beside the cast one (an fp32 SAE file
loaded for a bfloat16 run would otherwise need 1.5x its final size there).
"""

import pickle
from pathlib import Path

import torch
from torch import Tensor

from sparse_coding.errors import SparseCodingError

# What each reader of weights reports in its errors.
SAFETENSORS_HINT = (
    "a safetensors file as the hub serves it; a truncated download is fixed by downloading again"
)


def safetensors_shapes(path: Path, error: type[SparseCodingError], what: str) -> dict[str, tuple[int, ...]]:
    """name -> shape of every tensor in a safetensors file, from its header alone.

    Raises:
        error: the file cannot be read as safetensors (truncated, damaged, another format).
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as file:
            return {name: tuple(file.get_slice(name).get_shape()) for name in file.keys()}
    except (SafetensorError, OSError) as e:
        raise error(
            f"{what}: {path} is not a readable safetensors file ({e}); expected {SAFETENSORS_HINT}"
        ) from e


def load_safetensors(
    path: Path,
    names: list[str],
    device: torch.device,
    dtype: torch.dtype | None,
    error: type[SparseCodingError],
) -> dict[str, Tensor]:
    """The tensors `names` of a safetensors file on `device`, floating ones cast to `dtype` first."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as file:
            return {name: _placed(file.get_tensor(name), device, dtype) for name in names}
    except (SafetensorError, OSError) as e:
        raise error(f"{path} could not be read ({e}); expected {SAFETENSORS_HINT}") from e


def load_pickled(path: Path, device: torch.device, dtype: torch.dtype | None, what: str) -> dict[str, Tensor]:
    """A PyTorch pickle of tensors (`pytorch_model.bin`), read as weights only (no code runs)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as e:
        raise SparseCodingError(
            f"{what}: {path} is not a PyTorch weights file that can be read safely ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); give the folder a model.safetensors (the hub's "
            f"format) or a pytorch_model.bin saved by torch.save of the state dict"
        ) from e
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise SparseCodingError(
            f"{what}: {path} holds a {type(state).__name__}, not a state dict of tensors; give the folder "
            f"a model.safetensors (the hub's format)"
        )
    return {name: _placed(tensor, device, dtype) for name, tensor in state.items()}


def _placed(tensor: Tensor, device: torch.device, dtype: torch.dtype | None) -> Tensor:
    if dtype is not None and tensor.is_floating_point():
        tensor = tensor.to(dtype)
    return tensor.to(device)
