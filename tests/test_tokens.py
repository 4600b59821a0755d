"""Tokens are distinguishable: a byte of a split character is shown as <0xE2>, not as U+FFFD."""

import pytest
from transformers import AutoTokenizer

from sparse_coding.text.tokens import token_text


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _byte_token(tokenizer, byte: int) -> int:
    """The one-byte token of a printable latin-1 `byte` (it stands for itself in GPT-2's alphabet)."""
    assert 0xA1 <= byte <= 0xAC or 0xAE <= byte <= 0xFF
    return tokenizer.convert_tokens_to_ids(chr(byte))


@pytest.mark.parametrize("byte", [0xE2, 0xF0, 0xC3, 0xA2])
def test_a_byte_of_a_multibyte_character_is_shown_as_its_value(tokenizer, byte):
    token_id = _byte_token(tokenizer, byte)
    assert tokenizer.decode([token_id]) == "\ufffd"  # what a plain decode shows for every such byte
    assert token_text(tokenizer, token_id) == f"<0x{byte:02X}>"


def test_different_split_bytes_are_shown_differently(tokenizer):
    shown = {token_text(tokenizer, _byte_token(tokenizer, byte)) for byte in (0xE2, 0xF0, 0xC3, 0xA2)}
    assert len(shown) == 4


def test_whole_characters_decode_as_themselves(tokenizer):
    for text in ("the", " John", "a"):
        for token_id in tokenizer(text)["input_ids"]:
            assert token_text(tokenizer, token_id) == tokenizer.decode([token_id])
