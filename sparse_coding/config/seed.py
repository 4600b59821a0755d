"""Configs written for the seed tool ("sparse_circuit_discovery") load here.

The seed's central_config.yaml shares most keys with this tool and means the
same by them; the rest name things this tool does differently (SAE weight
files, intermediate data files) or does not do (SAE training, question
answering). Those are listed here with the reason, so a seed config loads
with one info line instead of a warning per key, and a key the seed knew is
never "corrected" to a different key of ours.
"""

from collections.abc import Iterable

# SAE weight files of one site: replaced by a source per site (RESID/ATTN/MLP_SAES).
_SAE_FILE_KEYS = ("ENCODER_FILE", "ENC_BIASES_FILE", "DECODER_FILE", "DEC_BIASES_FILE")

UNUSED_SEED_KEYS: dict[str, tuple[str, ...]] = {
    "SAE files are replaced by RESID_SAES/ATTN_SAES/MLP_SAES": (
        "PROJECTION_FACTOR",
        *_SAE_FILE_KEYS,
        *(f"{site}_{key}" for site in ("ATTN", "MLP") for key in _SAE_FILE_KEYS),
    ),
    "training keys have no counterpart: SAEs come trained": (
        "LAMBDA_L1",
        "LEARNING_RATE",
        "TRAINING_BATCH_SIZE",
        "NUM_WORKERS",
        "ACCUMULATE_GRAD_BATCHES",
        "LOG_EVERY_N_STEPS",
        "EPOCHS",
        "SYNC_DIST_LOGGING",
    ),
    "intermediate data files are caches under DATA_DIR/<model>/ here": (
        "PROMPT_IDS_FILE",
        "ACTS_DATA_FILE",
        "ATTN_DATA_FILE",
        "MLP_DATA_FILE",
        "TOP_K_INFO_FILE",
        "ATTN_TOKEN_FILE",
        "MLP_TOKEN_FILE",
    ),
    "the Jacobian graph has no counterpart; fast.py draws the gradient graph": (
        "JACOBIANS_FILE",
        "JACOBIANS_DOT_FILE",
    ),
    "question-answering evals have no counterpart": (
        "NUM_QUESTIONS_INTERPED",
        "NUM_SHOT",
    ),
}
_REASON = {key: reason for reason, keys in UNUSED_SEED_KEYS.items() for key in keys}
_SEED_MARKERS = set(UNUSED_SEED_KEYS["SAE files are replaced by RESID_SAES/ATTN_SAES/MLP_SAES"])

# The SAEs the seed ran on, used when a seed config names no SAE source (its
# own SAE file keys cannot be read here).
SEED_SAES = {
    "RESID_SAES": "gpt2-small-resid-post-v5-128k",
    "ATTN_SAES": "gpt2-small-attn-out-v5-128k",
    "MLP_SAES": "gpt2-small-mlp-out-v5-128k",
}


def is_unused_seed_key(key: str) -> bool:
    """A key the seed tool read that this tool deliberately does not use."""
    return key in _REASON


def is_seed_config(keys: Iterable[str]) -> bool:
    """Written for the seed: it names SAE weight files or PROJECTION_FACTOR."""
    return not _SEED_MARKERS.isdisjoint(keys)


def unused_seed_keys_line(keys: Iterable[str]) -> str | None:
    """One line naming the unused seed keys present, grouped by reason; None when there are none."""
    present = [key for key in keys if key in _REASON]
    groups = {reason: [key for key in present if _REASON[key] == reason] for reason in UNUSED_SEED_KEYS}
    line = "; ".join(f"{', '.join(keys)} ({reason})" for reason, keys in groups.items() if keys)
    return f"not used by sparse_coding: {line}" if line else None
