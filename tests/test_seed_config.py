"""A config written for the seed tool (sparse_circuit_discovery v1.5) loads and means what it meant."""

import logging

import pytest

from sparse_coding.config import Config, load_config

# Every key of the seed's central_config.yaml, with its values (DATASET commented out, as shipped).
SEED_CONFIG = """\
# Key hyperparameters.
ACTS_LAYERS_SLICE: "9:12"
INIT_THINNING_FACTOR: 1.0
NUM_SEQUENCES_INTERPED: 1
THRESHOLD_EXP: 5.0
DIMS_PINNED: {9: [331]}
NUM_UP_NODES: 1
NUM_DOWN_NODES: 1
VALIDATION_DIMS_PINNED: {9: [331, 12]}
# Model setup.
MODEL_DIR: "openai-community/gpt2"
PROMPT: "Copyright (C)"
# DATASET: "Elriggs/openwebtext-100k"
PROJECTION_FACTOR: 32
# Save files.
ENCODER_FILE: "resid_encoder.pt"
ENC_BIASES_FILE: "resid_enc_biases.pt"
DECODER_FILE: "resid_decoder.pt"
DEC_BIASES_FILE: "resid_dec_biases.pt"
ATTN_ENCODER_FILE: "attn_encoder.pt"
ATTN_ENC_BIASES_FILE: "attn_enc_biases.pt"
ATTN_DECODER_FILE: "attn_decoder.pt"
ATTN_DEC_BIASES_FILE: "attn_dec_biases.pt"
MLP_ENCODER_FILE: "mlp_encoder.pt"
MLP_ENC_BIASES_FILE: "mlp_enc_biases.pt"
MLP_DECODER_FILE: "mlp_decoder.pt"
MLP_DEC_BIASES_FILE: "mlp_dec_biases.pt"
PROMPT_IDS_FILE: "prompt_ids.npy"
ACTS_DATA_FILE: "acts_data.pt"
ATTN_DATA_FILE: "attn_data.pt"
MLP_DATA_FILE: "mlp_data.pt"
TOP_K_INFO_FILE: "token_info.csv"
ATTN_TOKEN_FILE: "attn_tokens.pt"
MLP_TOKEN_FILE: "mlp_tokens.pt"
GRAPH_FILE: "cognition_graph.svg"
GRAPH_DOT_FILE: "cognition_graph.dot"
JACOBIANS_FILE: "jacobians_graph.svg"
JACOBIANS_DOT_FILE: "jacobians_graph.dot"
GRADS_FILE: "grads_graph.svg"
GRADS_DOT_FILE: "grads_graph.dot"
# Autoencoder training.
LAMBDA_L1: 1.0
LEARNING_RATE: 1.0e-4
TRAINING_BATCH_SIZE: 16
NUM_WORKERS: 0
ACCUMULATE_GRAD_BATCHES: 1
LOGIT_TOKENS: 10
WANDB_PROJECT: "sparse_coding"
WANDB_ENTITY: "someone"
WANDB_MODE: "offline"
SEED: 0
NUM_SEQUENCES_EVALED: 100
MAX_SEQ_LEN: 1000
NUM_CLUSTERS: 8
KEEPER_CLUSTER_INDEX: 0
LOG_EVERY_N_STEPS: 1
EPOCHS: 150
SYNC_DIST_LOGGING: true
# Interpretability.
TOP_K: 6
VIEW: 5
MAX_SEQ_INTERPED_LEN: 100
SEQ_PER_DIM_CAP: 10
# Evals.
NUM_QUESTIONS_INTERPED: 50
MAX_NEW_TOKENS: 1
NUM_RETURN_SEQUENCES: 1
NUM_SHOT: 6
"""
HONOURED = {
    "WANDB_PROJECT": "sparse_coding",
    "WANDB_ENTITY": "someone",
    "WANDB_MODE": "offline",
    "ACTS_LAYERS_SLICE": "9:12",
    "NUM_UP_NODES": 1,
    "NUM_DOWN_NODES": 1,
    "MAX_SEQ_INTERPED_LEN": 100,
    "MAX_SEQ_LEN": 1000,
    "GRADS_FILE": "grads_graph.svg",
    "GRADS_DOT_FILE": "grads_graph.dot",
    "VALIDATION_DIMS_PINNED": {"resid_9": [331, 12]},
    "DIMS_PINNED": {"resid_9": 331},
    "MAX_NEW_TOKENS": 1,
    "NUM_RETURN_SEQUENCES": 1,
}
UNUSED = [
    "PROJECTION_FACTOR",
    "MLP_DEC_BIASES_FILE",
    "LAMBDA_L1",
    "TRAINING_BATCH_SIZE",
    "NUM_WORKERS",
    "ACTS_DATA_FILE",
    "JACOBIANS_DOT_FILE",
    "NUM_SHOT",
]


def load(tmp_path, text: str, caplog) -> tuple[Config, list[logging.LogRecord]]:
    path = tmp_path / "central_config.yaml"
    path.write_text(text, encoding="utf-8")
    with caplog.at_level(logging.INFO, logger="sparse_coding"):
        config = load_config(path)
    return config, [r for r in caplog.records if r.name.startswith("sparse_coding.config")]


def test_a_seed_config_loads_with_its_values_and_no_warning(tmp_path, caplog):
    config, records = load(tmp_path, SEED_CONFIG, caplog)
    assert {key: getattr(config, key) for key in HONOURED} == HONOURED
    assert [r.getMessage() for r in records if r.levelno >= logging.WARNING] == []


def test_the_unused_seed_keys_are_named_in_one_info_line_with_their_reasons(tmp_path, caplog):
    _, records = load(tmp_path, SEED_CONFIG, caplog)
    lines = [r.getMessage() for r in records if "not used by sparse_coding" in r.getMessage()]
    assert len(lines) == 1
    assert all(key in lines[0] for key in UNUSED), lines[0]
    assert "RESID_SAES/ATTN_SAES/MLP_SAES" in lines[0] and "WANDB" not in lines[0]
    assert "NUM_UP_NODES" not in lines[0] and "GRADS_FILE" not in lines[0]


def test_a_seed_config_without_sae_keys_runs_on_the_seeds_128k_sets_and_says_so(tmp_path, caplog):
    config, records = load(tmp_path, SEED_CONFIG, caplog)
    assert config.sae_sources == {
        "resid": "gpt2-small-resid-post-v5-128k",
        "attn": "gpt2-small-attn-out-v5-128k",
        "mlp": "gpt2-small-mlp-out-v5-128k",
    }
    assert any(
        "gpt2-small-resid-post-v5-128k" in r.getMessage() for r in records if r.levelno == logging.INFO
    )


def test_a_seed_config_naming_an_sae_site_keeps_its_choice(tmp_path, caplog):
    config, _ = load(tmp_path, SEED_CONFIG + "RESID_SAES: gpt2-small-res-jb\nATTN_SAES: null\n", caplog)
    assert config.sae_sources == {"resid": "gpt2-small-res-jb", "mlp": Config.MLP_SAES}


def test_a_config_without_sae_keys_that_is_not_a_seeds_takes_the_default_releases(tmp_path, caplog):
    config, _ = load(tmp_path, 'ACTS_LAYERS_SLICE: "9:12"\n', caplog)
    assert config.sae_sources == {
        "resid": "gpt2-small-resid-post-v5-32k",
        "attn": "gpt2-small-attn-out-v5-32k",
        "mlp": "gpt2-small-mlp-out-v5-32k",
    }


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [("NUM_UP_NODE", "NUM_UP_NODES"), ("threshold_exp", "THRESHOLD_EXP"), ("PROMT", "PROMPT")],
)
def test_a_near_misspelling_is_warned_with_the_key_it_misspells(tmp_path, caplog, key, suggestion):
    _, records = load(tmp_path, f"{key}: 3\n", caplog)
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and key in warnings[0] and f"did you mean {suggestion!r}" in warnings[0]


@pytest.mark.parametrize("key", ["COMPLETELY_ELSE", "NUM_WORKERZ", "BATCH"])
def test_an_unknown_key_that_is_no_near_misspelling_gets_no_suggestion(tmp_path, caplog, key):
    _, records = load(tmp_path, f"{key}: 3\n", caplog)
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and key in warnings[0] and "did you mean" not in warnings[0]
