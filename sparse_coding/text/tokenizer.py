"""GPT-2's tokenizer through the `tokenizers` library, without importing transformers.

Why: `import transformers` indexes every model module, a large share of a short script's start
(docs/benchmarks.md); `tokenizers`, the Rust library it wraps, does not. `Tokenizer` gives what
transformers 5's `AutoTokenizer.from_pretrained(model_dir)` gives (ids, decoding, special tokens)
for a local folder or hub repo with a tokenizer.json and a config.json of model_type gpt2, when
`tokenizer_class` (tokenizer_config.json's, else config.json's) is `TokenizersBackend` or
`PreTrainedTokenizerFast` (the demo model: tokenizer.json as it is), or `GPT2Tokenizer`,
`GPT2TokenizerFast` or none (the hub's openai-community/gpt2: rebuilt, see `_gpt2_backend`); the
added and special tokens are combined as transformers combines them (`_added_and_special_tokens`).
Anything else (no tokenizer.json, another class, a tokenizer_config.json key outside `_KNOWN_KEYS`
or at a value not reproduced, such as add_bos_token true, truncation or padding in tokenizer.json)
raises `UnreproducedTokenizer`; `load_tokenizer` loads those with transformers.
tests/test_tokenizer.py checks both against AutoTokenizer.
"""

import functools
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenizers import AddedToken, decoders, pre_tokenizers, processors
from tokenizers import Tokenizer as Backend
from tokenizers.models import BPE

from sparse_coding.errors import ConfigError
from sparse_coding.files.hub_files import hub_file, why_hub_cannot_be_asked

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

# tokenizer_class values (tokenizer_config.json, else config.json) whose tokenizer.json loads as it is,
# and those for which transformers rebuilds a GPT-2 byte-level BPE from it.
_AS_IS = {"TokenizersBackend", "PreTrainedTokenizerFast"}
_GPT2 = {None, "GPT2Tokenizer", "GPT2TokenizerFast"}

# transformers' named special tokens (`SPECIAL_TOKENS_ATTRIBUTES`), in its order.
_SPECIAL = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# tokenizer_config.json keys that transformers 5 reads without effect on ids, decoding or special tokens.
_IGNORED_KEYS = {
    "backend",
    "chat_template",
    "errors",
    "is_local",
    "local_files_only",
    "merges_file",
    "model_input_names",
    "model_max_length",
    "name_or_path",
    "padding_side",
    "processor_class",
    "special_tokens_map_file",
    "tokenizer_file",
    "truncation_side",
    "vocab_file",
}
# Keys that are reproduced (or ignored) only at these values; any other value is unreproduced.
_FALSE_ONLY = (
    "add_bos_token",
    "add_eos_token",
    "split_special_tokens",
    "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output",
)
_EMPTY_ONLY = ("additional_special_tokens", "extra_special_tokens", "init_inputs")
_KNOWN_KEYS = (
    _IGNORED_KEYS
    | set(_SPECIAL)
    | set(_FALSE_ONLY)
    | set(_EMPTY_ONLY)
    | {"tokenizer_class", "added_tokens_decoder", "add_prefix_space", "clean_up_tokenization_spaces"}
)
_ADDED_TOKEN_FIELDS = {"content", "single_word", "lstrip", "rstrip", "normalized", "special"}


class UnreproducedTokenizer(Exception):
    """The tokenizer files ask for something `Tokenizer` does not reproduce; the message says what."""


class Tokenizer:
    """The part of a Hugging Face tokenizer the package uses, with the same signatures.

    The package's hints name this class; a transformers tokenizer has the same
    members and works wherever one is expected. A tokenizer without a pad
    token pads with its eos token.
    """

    def __init__(self, backend: Backend, special_tokens: dict[str, str | None]) -> None:
        self._backend = backend
        self.bos_token = special_tokens.get("bos_token")
        self.eos_token = special_tokens.get("eos_token")
        self.pad_token = special_tokens.get("pad_token") or self.eos_token

    @property
    def bos_token_id(self) -> int | None:
        return self._id(self.bos_token)

    @property
    def eos_token_id(self) -> int | None:
        return self._id(self.eos_token)

    @property
    def pad_token_id(self) -> int | None:
        return self._id(self.pad_token)

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self._backend.token_to_id(token)

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": self._backend.encode(text, add_special_tokens=add_special_tokens).ids}

    def decode(self, token_ids: "Sequence[int] | torch.Tensor") -> str:
        """Text of `token_ids`: a list of ints or a 1-D tensor."""
        ids = token_ids.tolist() if hasattr(token_ids, "tolist") else list(token_ids)
        return self._backend.decode(ids, skip_special_tokens=False)

    def convert_ids_to_tokens(
        self, ids: "int | Sequence[int] | torch.Tensor"
    ) -> str | None | list[str | None]:
        """The vocabulary entry of one id, or of each id in a list or 1-D tensor."""
        if isinstance(ids, int):
            return self._backend.id_to_token(ids)
        return [self._backend.id_to_token(int(i)) for i in ids]

    def __len__(self) -> int:
        """The vocabulary with the added tokens, as `len()` of a transformers tokenizer."""
        return self._backend.get_vocab_size(with_added_tokens=True)

    @classmethod
    def from_pretrained(cls, model_dir: str) -> "Tokenizer":
        """The tokenizer of a local folder or hub repo, as transformers 5 builds it (see the module).

        Raises UnreproducedTokenizer for files outside the reproduced cases,
        OSError when the hub cannot be asked and the cache lacks a file, ValueError
        for a file that is not a JSON object.
        """
        files = {name: model_file(model_dir, name) for name in ("config.json", "tokenizer.json")}
        missing = [name for name, path in files.items() if path is None]
        if missing and not Path(model_dir).is_dir() and (why := why_hub_cannot_be_asked()) is not None:
            # transformers would retry the hub for each file: say it now
            raise OSError(f"the Hugging Face cache lacks {' and '.join(missing)} of {model_dir}, and {why}")
        if missing:
            raise UnreproducedTokenizer(f"{model_dir} has no {' and no '.join(missing)}")
        config_file, json_file = files["config.json"], files["tokenizer.json"]
        config = _read_json(config_file)
        if config.get("model_type") != "gpt2":
            raise UnreproducedTokenizer(
                f"{config_file}: model_type is {config.get('model_type')!r}, not 'gpt2'"
            )
        settings_file = model_file(model_dir, "tokenizer_config.json")
        settings = _read_json(settings_file) if settings_file is not None else {}
        where = settings_file or "tokenizer_config.json"
        _check_settings(settings, where)
        tokenizer_class = settings.get("tokenizer_class") or config.get("tokenizer_class")
        if tokenizer_class not in _AS_IS | _GPT2:
            raise UnreproducedTokenizer(f"{where}: tokenizer_class {tokenizer_class!r}")
        rebuild = tokenizer_class in _GPT2
        serialized = _read_json(json_file)
        for key in ("truncation", "padding"):
            if serialized.get(key) is not None:
                raise UnreproducedTokenizer(f"{json_file}: {key} is set ({serialized[key]!r})")

        added, special = _added_and_special_tokens(model_dir, settings, serialized, json_file, rebuild)
        backend = (
            _gpt2_backend(serialized, settings, json_file) if rebuild else Backend.from_file(str(json_file))
        )
        if settings.get("clean_up_tokenization_spaces") and type(backend.model).__name__ != "BPE":
            raise UnreproducedTokenizer(f"{where}: clean_up_tokenization_spaces true for a non-BPE model")
        if backend.post_processor is None:  # TokenizersBackend.update_post_processor, no bos/eos added
            backend.post_processor = processors.TemplateProcessing(single="$A:0", pair="$A:0 $B:1")
        _add_tokens(backend, added, special)
        return cls(backend, {key: None if value is None else str(value) for key, value in special.items()})


def model_file(model_dir: str, name: str) -> Path | None:
    """`name` in MODEL_DIR, a local folder or hub repo (cached or downloaded); None where it has
    none, or where the cache lacks it and the hub cannot be asked (offline or unreachable: one
    short probe, not a retry per file). OSError when the hub answers with an error."""
    folder = Path(model_dir)
    if folder.is_dir():
        return folder / name if (folder / name).is_file() else None
    return hub_file(model_dir, name, what=f"MODEL_DIR {model_dir}", required=False)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} could not be read as JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}, not an object")
    return data


def _check_settings(settings: dict, where: Path | str) -> None:
    """Every tokenizer_config.json key is one transformers reads as `Tokenizer` does."""
    unknown = sorted(set(settings) - _KNOWN_KEYS)
    if unknown:
        raise UnreproducedTokenizer(f"{where}: key(s) {', '.join(unknown)}")
    for key in _FALSE_ONLY:
        if settings.get(key):
            raise UnreproducedTokenizer(f"{where}: {key} is {settings[key]!r}")
    for key in _EMPTY_ONLY:
        if settings.get(key):
            raise UnreproducedTokenizer(f"{where}: {key} is not empty")
    if not isinstance(settings.get("add_prefix_space", False), bool):
        raise UnreproducedTokenizer(f"{where}: add_prefix_space is {settings['add_prefix_space']!r}")


def _added_token(fields: Any, where: str, **flags: bool) -> AddedToken:
    """An AddedToken from its serialized fields (those of tokenizer.json's `added_tokens`)."""
    if not isinstance(fields, dict) or not set(fields) <= _ADDED_TOKEN_FIELDS or "content" not in fields:
        raise UnreproducedTokenizer(f"{where}: {fields!r} is not an added token")
    return AddedToken(**(fields | flags))


def _special_value(value: Any, where: str) -> str | AddedToken | None:
    """A special token as transformers takes it: a string, null, or a serialized AddedToken."""
    if value is None or isinstance(value, str | AddedToken):
        return value
    if isinstance(value, dict) and value.get("__type") == "AddedToken":
        return _added_token({k: v for k, v in value.items() if k != "__type"}, where)
    raise UnreproducedTokenizer(f"{where}: {value!r} is not a special token")


def _added_and_special_tokens(
    model_dir: str, settings: dict, serialized: dict, json_file: Path, rebuild: bool
) -> tuple[dict[int, AddedToken], dict[str, str | AddedToken | None]]:
    """The added tokens (by id) and named special tokens transformers passes to the tokenizer class
    (`PreTrainedTokenizerBase._from_pretrained`; `GPT2Tokenizer`'s bos/eos/unk default: `<|endoftext|>`).

    tokenizer_config.json's `added_tokens_decoder` wins; without it, transformers reads
    special_tokens_map.json (its values override tokenizer_config.json's) and tokenizer.json's
    `added_tokens`. A named special token whose text is an added token becomes that AddedToken (the
    same object, as transformers).
    """
    values = {key: settings[key] for key in _SPECIAL if key in settings}
    added: dict[int, AddedToken] = {}
    if "added_tokens_decoder" in settings:
        for index, fields in settings["added_tokens_decoder"].items():
            added[int(index)] = _added_token(fields, "tokenizer_config.json added_tokens_decoder")
    else:
        map_file = model_file(model_dir, "special_tokens_map.json")
        for key, value in (_read_json(map_file) if map_file is not None else {}).items():
            if key not in _SPECIAL:
                raise UnreproducedTokenizer(f"{map_file}: key {key}")
            if isinstance(value, dict):
                value = _added_token(
                    {k: v for k, v in value.items() if k != "special"}, str(map_file), special=True
                )
            values[key] = value
        if model_file(model_dir, "added_tokens.json") is not None:
            raise UnreproducedTokenizer(f"{model_dir} has a legacy added_tokens.json")
        for entry in serialized.get("added_tokens", []):
            fields = {k: v for k, v in entry.items() if k != "id"}
            added[entry["id"]] = _added_token(fields, f"{json_file} added_tokens")
    by_text = {str(token): token for token in added.values()}
    defaults = dict.fromkeys(("bos_token", "eos_token", "unk_token"), "<|endoftext|>") if rebuild else {}
    special: dict[str, str | AddedToken | None] = {}
    for key in _SPECIAL:
        if key not in values:
            special[key] = defaults.get(key)  # the class's default, not looked up in `added`
            continue
        value = _special_value(values[key], f"tokenizer_config.json {key}")
        special[key] = by_text.get(str(value), value) if value is not None else None
    return added, special


def _gpt2_backend(serialized: dict, settings: dict, json_file: Path) -> Backend:
    """tokenizer.json's vocab, merges and post-processor in the pipeline `GPT2Tokenizer.__init__` builds:
    a plain BPE, no normalizer, a byte-level pre-tokenizer whose add_prefix_space is
    tokenizer_config.json's (default false), not the json's, and a byte-level decoder."""
    model = serialized.get("model", {})
    # tokenizers before 0.9 wrote no model type; the hub's openai-community/gpt2 file (2020) is such a
    # BPE: vocab and merges only.
    untyped_bpe = "type" not in model and {"vocab", "merges"} <= set(model)
    if model.get("type") != "BPE" and not untyped_bpe:
        raise UnreproducedTokenizer(f"{json_file}: model type {model.get('type')!r} for a GPT2Tokenizer")
    vocab = model["vocab"]
    if isinstance(vocab, list):
        vocab = {token[0] if isinstance(token, list) else token: i for i, token in enumerate(vocab)}
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]
    backend = Backend(
        BPE(
            vocab=vocab,
            merges=merges,
            dropout=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
        )
    )
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=settings.get("add_prefix_space", False))
    backend.decoder = decoders.ByteLevel()
    # The post-processor alone, as transformers reads it: the json without its vocabulary.
    empty = serialized | {"model": model | {"vocab": {}, "merges": []}, "added_tokens": []}
    backend.post_processor = Backend.from_str(json.dumps(empty)).post_processor
    return backend


def _add_tokens(
    backend: Backend, added: dict[int, AddedToken], special: dict[str, str | AddedToken | None]
) -> None:
    """Add the added tokens, then the named special tokens the backend lacks, as
    `TokenizersBackend.__init__` does: every entry of `added` in id order (its
    check against the backend's own compares ids with tokens and never
    matches), as non-special `add_tokens`."""
    tokens = [token for _, token in sorted(added.items())]
    known = [token.content for _, token in sorted(backend.get_added_tokens_decoder().items())]
    known += [str(token) for token in tokens]
    for value in special.values():
        if value is not None and str(value) not in known and value not in tokens:
            tokens.append(value)
    named = [str(value) for value in special.values() if value]
    for i, token in enumerate(tokens):
        if isinstance(token, str):
            tokens[i] = AddedToken(token, special=True)
        elif not token.special and str(token) in named:
            token.special = True
    if tokens:
        backend.add_tokens(tokens)


# Text any GPT-2 tokenizer encodes to at least one token.
_PROBE_TEXT = "the"


def check_tokenizer(
    tokenizer: "Tokenizer", model_dir: str, *, vocab_size: int, bos_token_id: int | None
) -> None:
    """The tokenizer can encode text and belongs to the model of config.json (`vocab_size`,
    `bos_token_id`), else a message naming MODEL_DIR's tokenizer and what it needs.

    A folder without tokenizer files gets an empty tokenizer from transformers
    (every text becomes no token); one copied from another model has other ids.

    Raises:
        ConfigError: the tokenizer is empty or belongs to another model.
    """
    files = "tokenizer.json (or vocab.json and merges.txt) of the model, as on the hub"
    if len(tokenizer) < 2 or not tokenizer(_PROBE_TEXT, add_special_tokens=False)["input_ids"]:
        raise ConfigError(
            f"MODEL_DIR {model_dir!r} has no usable tokenizer (it encodes {_PROBE_TEXT!r} to no token, "
            f"{len(tokenizer)} entries); the folder needs the {files}"
        )
    if len(tokenizer) > vocab_size:
        raise ConfigError(
            f"MODEL_DIR {model_dir!r}: its tokenizer has {len(tokenizer)} tokens but the model's embedding "
            f"(config.json vocab_size) only {vocab_size}; the tokenizer belongs to another model; the "
            f"folder needs the {files}"
        )
    if bos_token_id is not None and tokenizer.bos_token_id != bos_token_id:
        raise ConfigError(
            f"MODEL_DIR {model_dir!r}: its tokenizer's BOS token {tokenizer.bos_token!r} has id "
            f"{tokenizer.bos_token_id}, but config.json says bos_token_id {bos_token_id}; the tokenizer "
            f"belongs to another model; the folder needs the {files}"
        )


def load_tokenizer(model_dir: str) -> Tokenizer:
    """MODEL_DIR's tokenizer, read once per process: preflight checks PROMPT with it (before
    torch is imported) and `load_model` reuses it. A tokenizer without a pad token pads with
    its eos token.

    `Tokenizer` unless the files are a case it does not reproduce (see
    this module's docstring); those load with transformers, imported only then.
    """
    if Path(model_dir).is_dir():
        return _load_tokenizer(model_dir, None)
    from huggingface_hub import constants

    return _load_tokenizer(model_dir, constants.HF_HUB_CACHE)  # a hub id means what that cache holds


@functools.lru_cache(maxsize=4)
def _load_tokenizer(model_dir: str, hub_cache: str | None) -> Tokenizer:
    try:
        return Tokenizer.from_pretrained(model_dir)
    except UnreproducedTokenizer as e:
        logger.debug("MODEL_DIR %r: %s; loading its tokenizer with transformers", model_dir, e)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
