"""Load the language model and tokenizer; decide device and dtype in one place."""

import logging
import time
from pathlib import Path

import torch

from sparse_coding.config.schema import DtypeName
from sparse_coding.errors import ConfigError, SparseCodingError
from sparse_coding.models.transformer import GPT2, GPT2Config, check_shapes, checkpoint_names
from sparse_coding.models.weights import load_pickled, load_safetensors, safetensors_shapes
from sparse_coding.text.batches import text_ids
from sparse_coding.text.tokenizer import Tokenizer, check_tokenizer, load_tokenizer, model_file

logger = logging.getLogger(__name__)


def resolve_device(name: str | None = None) -> torch.device:
    """`name` if given (DEVICE key) and usable here, else CUDA, then MPS, then CPU."""
    mps = getattr(torch.backends, "mps", None)
    available = {"cuda": torch.cuda.is_available(), "mps": bool(mps and mps.is_available()), "cpu": True}
    usable = [kind for kind, ok in available.items() if ok]
    if not name:
        return torch.device(usable[0])
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"DEVICE {name!r} is not a torch device; valid here: {', '.join(usable)}") from e
    if device.type not in usable:
        raise ConfigError(
            f"DEVICE is {name!r} but {device.type} is not available here; unset DEVICE or use one of "
            f"{', '.join(usable)}"
        )
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ConfigError(f"DEVICE is {name!r}; this machine has {count} CUDA device(s), cuda:0..{count - 1}")
    return device


def resolve_dtype(name: DtypeName | None, default: torch.dtype = torch.float32) -> torch.dtype:
    """Torch dtype of a DTYPE / SAE_DTYPE value (the config checked it); `default` when unset."""
    return default if name is None else getattr(torch, name)


def load_model(
    model_dir: str, device: torch.device, dtype: torch.dtype = torch.float32
) -> tuple[GPT2, Tokenizer]:
    """A GPT-2 (hub id or local folder in Hugging Face format) in eval mode, and its tokenizer.

    config.json, the tokenizer and the weights' shapes are checked before any
    weight is read (`models.weights`); the model is built on the meta device,
    so nothing is initialised and then overwritten.

    Raises:
        SparseCodingError: the folder or repo lacks a file, or a file does not fit the others.
    """
    start = time.perf_counter()
    where = f"MODEL_DIR {model_dir!r}"
    try:
        tokenizer = load_tokenizer(model_dir)
        config_path, weights_path = _model_files(model_dir)
    except (OSError, ValueError) as e:
        raise SparseCodingError(
            f"{where} could not be loaded as a Hugging Face GPT-2 "
            f"(a hub id such as 'openai-community/gpt2' or a local folder with config.json): {e}"
        ) from e
    config = GPT2Config.from_file(config_path)
    check_tokenizer(tokenizer, model_dir, vocab_size=config.vocab_size, bos_token_id=config.bos_token_id)
    model = _read_model(config, weights_path, device, dtype, f"{where} ({weights_path.name})")
    logger.info("Loaded %s on %s (%s) in %.1fs", model_dir, device, dtype, time.perf_counter() - start)
    return model, tokenizer


def _read_model(config: GPT2Config, path: Path, device: torch.device, dtype: torch.dtype, where: str) -> GPT2:
    """The GPT2 of a weights file; a safetensors file's shapes are checked before its data is read."""
    if path.suffix != ".safetensors":
        return GPT2.from_state_dict(config, load_pickled(path, device, dtype, where), where)
    shapes = safetensors_shapes(path, SparseCodingError, where)
    mapping = checkpoint_names(list(shapes), config.tie_word_embeddings)
    with torch.device("meta"):
        check_shapes(GPT2(config), {ours: shapes[theirs] for theirs, ours in mapping.items()}, where)
    state = load_safetensors(path, list(mapping), device, dtype, SparseCodingError)
    return GPT2.from_state_dict(config, state, where)


# Weight files a Hugging Face GPT-2 folder may hold, preferred first.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _model_files(model_dir: str) -> tuple[Path, Path]:
    """config.json and the weights file of a local folder or a hub repo (cached or downloaded)."""
    config = model_file(model_dir, "config.json")
    weights = next((path for name in WEIGHT_FILES if (path := model_file(model_dir, name))), None)
    if config is None or weights is None:
        from sparse_coding.files.hub_files import why_hub_cannot_be_asked

        why = None if Path(model_dir).is_dir() else why_hub_cannot_be_asked()
        raise OSError(
            f"it needs config.json and one of {', '.join(WEIGHT_FILES)}"
            + (f" in the Hugging Face cache ({why})" if why else "")
        )
    return config, weights


def tokenize_prompt(
    tokenizer: Tokenizer, text: str, *, prepend_bos: bool, max_len: int | None = None
) -> torch.Tensor:
    """Token ids (1, pos) of one prompt, with BOS (`<|endoftext|>`) first when asked."""
    ids = text_ids(tokenizer, text, prepend_bos=prepend_bos)
    if not ids:
        raise ConfigError("PROMPT is empty; give it some text")
    if max_len is not None and len(ids) > max_len:
        raise ConfigError(
            f"PROMPT is {len(ids)} tokens long, more than the model's context of {max_len}; shorten it"
        )
    return torch.tensor([ids], dtype=torch.long)
