"""Load the language model and tokenizer; decide device and dtype in one place."""

import functools
import logging
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from sparse_coding.config import DTYPE_NAMES
from sparse_coding.errors import ConfigError, SparseCodingError

logger = logging.getLogger(__name__)

# The dtype names the config validates, as torch dtypes.
DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in DTYPE_NAMES}


def available_devices() -> list[str]:
    """Device types usable on this machine, best first."""
    mps = getattr(torch.backends, "mps", None)
    return [
        name
        for name, usable in (
            ("cuda", torch.cuda.is_available()),
            ("mps", bool(mps and mps.is_available())),
            ("cpu", True),
        )
        if usable
    ]


def resolve_device(name: str | None = None) -> torch.device:
    """`name` if given (DEVICE key) and usable here, else CUDA, then MPS, then CPU."""
    usable = available_devices()
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


def resolve_dtype(name: str | None, default: torch.dtype = torch.float32) -> torch.dtype:
    """Torch dtype of a DTYPE / SAE_DTYPE value; `default` when unset."""
    if name is None:
        return default
    if name not in DTYPES:
        raise ConfigError(f"dtype {name!r} is not supported; valid: {', '.join(DTYPES)}")
    return DTYPES[name]


@functools.lru_cache(maxsize=4)
def load_tokenizer(model_dir: str) -> PreTrainedTokenizerBase:
    """MODEL_DIR's tokenizer, read once per process: preflight checks PROMPT with it and
    `load_model` reuses it. A tokenizer without a pad token pads with its eos token."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    model_dir: str, device: torch.device, dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM (hub id or local folder) in eval mode, and its tokenizer.

    Eager attention keeps every backward (including batched ones) supported.
    """
    start = time.perf_counter()
    try:
        tokenizer = load_tokenizer(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="eager")
    except (OSError, ValueError) as e:
        raise SparseCodingError(
            f"MODEL_DIR {model_dir!r} could not be loaded as a Hugging Face causal LM "
            f"(a hub id such as 'openai-community/gpt2' or a local folder with config.json): {e}"
        ) from e
    if len(tokenizer) > model.config.vocab_size:
        raise SparseCodingError(
            f"MODEL_DIR {model_dir!r}: its tokenizer has {len(tokenizer)} tokens but the model's "
            f"embedding only {model.config.vocab_size}; the tokenizer belongs to another model"
        )
    if not hasattr(model, "transformer") or not hasattr(model.transformer, "h"):
        raise SparseCodingError(
            f"MODEL_DIR {model_dir!r} is a {type(model).__name__}; SAE splicing supports GPT-2-style "
            f"models (model.transformer.h blocks), e.g. 'openai-community/gpt2'"
        )
    model.to(device).eval()
    model.requires_grad_(False)
    logger.info("Loaded %s on %s (%s) in %.1fs", model_dir, device, dtype, time.perf_counter() - start)
    return model, tokenizer


def tokenize_prompt(
    tokenizer: PreTrainedTokenizerBase, text: str, *, prepend_bos: bool, max_len: int | None = None
) -> torch.Tensor:
    """Token ids (1, pos) of one prompt, with BOS (`<|endoftext|>`) first when asked."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if prepend_bos:
        ids = [tokenizer.bos_token_id, *ids]
    if not ids:
        raise ConfigError("PROMPT is empty; give it some text")
    if max_len is not None and len(ids) > max_len:
        raise ConfigError(
            f"PROMPT is {len(ids)} tokens long, more than the model's context of {max_len}; shorten it"
        )
    return torch.tensor([ids], dtype=torch.long)
