"""Thresholds: preclustering cuts and percentiles against plain-model brute force."""

import json
import logging
import os

import numpy as np
import pytest
import torch
from conftest import N_LAYERS, write_sae_folder, write_sae_set
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM, AutoTokenizer

from sparse_coding.errors import ConfigError, DatasetError
from sparse_coding.loading import load_spliced_model
from sparse_coding.saes import load_sae
from sparse_coding.thresholds import (
    load_thresholds,
    percentile_from_top,
    save_thresholds,
    thresholds_from_config,
    top_count,
)

SUBJECTS = [
    "The cat",
    "A young engineer",
    "My neighbour",
    "The old sailor",
    "Every student",
    "The committee",
]
ACTIONS = [
    "walked to the market on Sunday.",
    "wrote 12 lines of Python: def f(x): return x + 1",
    "said hello & goodbye in <html> tags.",
    "counted 1 2 3 4 5 6 7 8 9 10 slowly.",
    "read about sparse autoencoders and interpretable features.",
]
TEXTS = [
    f"{subject} {action}" for action in ACTIONS for subject in SUBJECTS
]  # 30 texts
MAX_SEQ_LEN = 16


@pytest.fixture
def dataset(tmp_path):
    path = tmp_path / "texts.jsonl"
    path.write_text(
        "".join(
            json.dumps({"text": text, "id": i}) + "\n" for i, text in enumerate(TEXTS)
        )
    )
    return path


@pytest.fixture
def hist_config(make_config, dataset):
    def build(**overrides):
        values = {
            "DATASET": str(dataset),
            "NUM_SEQUENCES_EVALED": len(TEXTS),
            "MAX_SEQ_LEN": MAX_SEQ_LEN,
            "BATCH_SIZE": 7,
            "NUM_CLUSTERS": 6,
            "ACTS_LAYERS_SLICE": "1:3",
        }
        return make_config(**(values | overrides))

    return build


def token_ids(tokenizer, text: str) -> list[int]:
    """BOS + tokens, truncated, as the config asks (written out here, independently)."""
    return [
        tokenizer.bos_token_id,
        *tokenizer(text, add_special_tokens=False)["input_ids"],
    ][:MAX_SEQ_LEN]


def hooked_acts(model, ids: list[int], hooks: list[str]) -> dict[str, torch.Tensor]:
    """Plain HF forward; activation (pos, d_model) at each TransformerLens hook name."""
    store: dict[str, torch.Tensor] = {}
    handles = []
    for hook in hooks:
        _, layer, name = hook.split(".")
        block = model.transformer.h[int(layer)]

        def keep(value, hook=hook):
            store[hook] = value[0]

        if name == "hook_resid_pre":
            handles.append(
                block.register_forward_pre_hook(
                    lambda m, args, kwargs, keep=keep: keep(
                        args[0] if args else kwargs["hidden_states"]
                    ),
                    with_kwargs=True,
                )
            )
        elif name == "hook_resid_post":
            handles.append(
                block.register_forward_hook(
                    lambda m, a, out, keep=keep: keep(
                        out[0] if isinstance(out, tuple) else out
                    )
                )
            )
        elif name == "hook_attn_out":
            handles.append(
                block.attn.register_forward_hook(
                    lambda m, a, out, keep=keep: keep(out[0])
                )
            )
        else:
            assert name == "hook_mlp_out"
            handles.append(
                block.mlp.register_forward_hook(lambda m, a, out, keep=keep: keep(out))
            )
    with torch.no_grad():
        model(torch.tensor([ids]))
    for handle in handles:
        handle.remove()
    return store


def independent_cuts(config, kmeans, hook: str) -> list[int]:
    """First keeper token per text from the fitted model's own predict, -1 if none."""
    tokenizer = AutoTokenizer.from_pretrained(config.MODEL_DIR)
    model = AutoModelForCausalLM.from_pretrained(
        config.MODEL_DIR, attn_implementation="eager"
    ).eval()
    cuts = []
    for text in TEXTS:
        acts = hooked_acts(model, token_ids(tokenizer, text), [hook])[hook].numpy()
        labels = kmeans.predict(acts / np.linalg.norm(acts, axis=1, keepdims=True))
        hits = np.flatnonzero(labels == config.KEEPER_CLUSTER_INDEX)
        cuts.append(int(hits[0]) if len(hits) else -1)
    return cuts


def brute_force_percentiles(config, spliced, cuts: list[int]) -> dict[str, np.ndarray]:
    """numpy percentile of SAE.encode at the last position of each cut sequence, run alone."""
    tokenizer = AutoTokenizer.from_pretrained(config.MODEL_DIR)
    model = AutoModelForCausalLM.from_pretrained(
        config.MODEL_DIR, attn_implementation="eager"
    ).eval()
    sources = {
        "resid": config.RESID_SAES,
        "attn": config.ATTN_SAES,
        "mlp": config.MLP_SAES,
    }
    saes = {
        site.key: load_sae(sources[site.kind], site.layer) for site in spliced.sites
    }
    rows: dict[str, list[np.ndarray]] = {key: [] for key in saes}
    for text, cut in zip(TEXTS, cuts):
        if cut < 0:
            continue
        acts = hooked_acts(
            model,
            token_ids(tokenizer, text)[: cut + 1],
            [sae.hook_name for sae in saes.values()],
        )
        for key, sae in saes.items():
            x = acts[sae.hook_name][-1]
            x = x - x.mean() if sae.cfg.center_writing_weights else x
            with torch.no_grad():
                rows[key].append(sae.encode(x).numpy())
    return {
        key: np.percentile(np.stack(values), 99.99, axis=0)
        for key, values in rows.items()
    }


def interesting_keeper(config, kmeans, hook: str) -> int:
    """A cluster that some sequences never reach and others reach past BOS, if there is one."""
    tokenizer = AutoTokenizer.from_pretrained(config.MODEL_DIR)
    model = AutoModelForCausalLM.from_pretrained(
        config.MODEL_DIR, attn_implementation="eager"
    ).eval()
    labels = []
    for text in TEXTS:
        acts = hooked_acts(model, token_ids(tokenizer, text), [hook])[hook].numpy()
        labels.append(
            kmeans.predict(acts / np.linalg.norm(acts, axis=1, keepdims=True))
        )

    def score(k: int) -> tuple[bool, int]:
        reached = [k in seq for seq in labels]
        past_bos = sum(k in seq and seq[0] != k for seq in labels)
        return (not all(reached) and past_bos > 0, past_bos)

    return max(range(kmeans.n_clusters), key=score)


def resid_override(tmp_path, hook: str | None) -> dict:
    """RESID_SAES for resid SAEs on `hook` (None: no resid SAEs)."""
    if hook is None:
        return {"RESID_SAES": None}
    for layer in range(N_LAYERS):
        write_sae_folder(
            tmp_path / hook / f"resid_{layer}",
            hook_name=f"blocks.{layer}.{hook}",
            seed=layer,
        )
    return {"RESID_SAES": str(tmp_path / hook / "resid_{layer}")}


@pytest.mark.parametrize("hook", ["hook_resid_pre", "hook_resid_post", None])
def test_kept_sequences_are_those_reaching_the_keeper_cluster_cut_after_its_first_token(
    hist_config, tmp_path, hook
):
    overrides = resid_override(tmp_path, hook)
    first = hist_config(**overrides)
    spliced, tokenizer = load_spliced_model(first)
    cluster_hook = f"blocks.1.{hook or 'hook_resid_pre'}"
    fitted = thresholds_from_config(first, spliced, tokenizer).kmeans
    config = hist_config(
        **overrides,
        KEEPER_CLUSTER_INDEX=interesting_keeper(first, fitted, cluster_hook),
    )

    result = thresholds_from_config(config, spliced, tokenizer)

    np.testing.assert_array_equal(
        result.kmeans.cluster_centers_, fitted.cluster_centers_
    )  # seeded
    assert result.cluster_hook == cluster_hook
    cuts = independent_cuts(config, result.kmeans, cluster_hook)
    assert result.cut_positions.tolist() == cuts
    assert -1 in cuts and max(cuts) > 0, (
        "the data should give a non-trivial keeper cluster"
    )


def test_thresholds_equal_numpy_percentiles_of_brute_force_sae_activations(hist_config):
    config = hist_config()
    spliced, tokenizer = load_spliced_model(config)
    result = thresholds_from_config(config, spliced, tokenizer)

    expected = brute_force_percentiles(
        config, spliced, independent_cuts(config, result.kmeans, result.cluster_hook)
    )

    assert (
        set(result.thresholds) == set(expected) == {site.key for site in spliced.sites}
    )
    for key, values in expected.items():
        np.testing.assert_allclose(
            result.thresholds[key].numpy(), values, rtol=1e-5, atol=1e-5, err_msg=key
        )


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.floats(-1e3, 1e3, width=32), min_size=1, max_size=300),
    percentile=st.sampled_from([0.0, 10.0, 50.0, 99.0, 99.9, 99.99, 100.0]),
)
def test_percentile_from_the_top_values_equals_numpy_percentile_of_all(
    values, percentile
):
    column = np.array(values, dtype=np.float32)
    n = len(column)
    top = torch.from_numpy(column)[:, None].topk(top_count(n, percentile), dim=0).values

    result = percentile_from_top(top, n, percentile)

    np.testing.assert_allclose(
        result.numpy()[0],
        np.percentile(column.astype(np.float64), percentile),
        rtol=1e-6,
        atol=1e-4,
    )


def test_the_top_count_stays_small_for_large_datasets():
    assert top_count(100_000, 99.99) == 12
    assert top_count(10, 99.99) == 3  # v_8, v_9 and one spare


def test_num_clusters_above_the_token_count_is_a_config_error(hist_config):
    config = hist_config(
        NUM_SEQUENCES_EVALED=2, MAX_SEQ_LEN=3, NUM_CLUSTERS=7, KEEPER_CLUSTER_INDEX=0
    )
    spliced, tokenizer = load_spliced_model(config)
    with pytest.raises(ConfigError, match="NUM_CLUSTERS is 7.*6 tokens"):
        thresholds_from_config(config, spliced, tokenizer)


def test_a_keeper_cluster_no_sequence_reaches_is_a_dataset_error(hist_config, tmp_path):
    same = tmp_path / "same.txt"
    same.write_text(
        "hello\n" * 10
    )  # ten identical one-token sequences: one distinct vector
    config = hist_config(
        DATASET=str(same),
        PREPEND_BOS=False,
        MAX_SEQ_LEN=1,
        NUM_CLUSTERS=2,
        KEEPER_CLUSTER_INDEX=1,
    )
    spliced, tokenizer = load_spliced_model(config)
    with (
        pytest.warns(Warning),
        pytest.raises(DatasetError, match="No sequence reaches KEEPER_CLUSTER_INDEX 1"),
    ):
        thresholds_from_config(config, spliced, tokenizer)


def test_a_dataset_without_the_text_column_is_a_dataset_error(hist_config):
    config = hist_config(DATASET_TEXT_COLUMN="body")
    spliced, tokenizer = load_spliced_model(config)
    with pytest.raises(DatasetError, match="body"):
        thresholds_from_config(config, spliced, tokenizer)


@pytest.fixture
def cached(hist_config):
    """A config, its spliced model and the thresholds it saved."""
    config = hist_config()
    spliced, tokenizer = load_spliced_model(config)
    result = thresholds_from_config(config, spliced, tokenizer)
    save_thresholds(config, spliced, result)
    return config, spliced, result


def test_load_thresholds_returns_a_fresh_cache(cached):
    config, spliced, result = cached

    loaded = load_thresholds(config, spliced)

    assert loaded is not None and set(loaded.values) == set(result.thresholds)
    for key, values in result.thresholds.items():
        torch.testing.assert_close(loaded.values[key], values)
    assert f"{result.n_kept} of {len(TEXTS)} sequences" in loaded.description
    metadata = json.loads(
        (config.model_data_dir(config.MODEL_DIR) / "thresholds.json").read_text()
    )
    assert metadata["dataset"]["file"]["size"] == os.path.getsize(config.DATASET)
    assert metadata["sae_sources"]["attn_1"] == config.ATTN_SAES


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"NUM_SEQUENCES_EVALED": 20}, "dataset was"),
        ({"DATASET_TEXT_COLUMN": "id"}, "dataset was"),
        ({"SEED": 1}, "cluster was"),
        ({"ACTS_LAYERS_SLICE": "0:3"}, "cluster was"),
    ],
)
def test_load_thresholds_ignores_a_cache_made_with_other_settings(
    cached, hist_config, caplog, change, message
):
    changed = hist_config(**change)
    with caplog.at_level(logging.WARNING):
        assert load_thresholds(changed, load_spliced_model(changed)[0]) is None
    assert "stale" in caplog.text and message in caplog.text


def test_load_thresholds_ignores_a_cache_from_another_sae_source(
    cached, hist_config, tmp_path, caplog
):
    changed = hist_config(ATTN_SAES=write_sae_set(tmp_path / "other", "attn"))
    with caplog.at_level(logging.WARNING):
        assert load_thresholds(changed, load_spliced_model(changed)[0]) is None
    assert "attn_1 SAE was" in caplog.text and "attn_2 SAE was" in caplog.text


def test_load_thresholds_ignores_a_cache_after_the_dataset_file_changed(cached, caplog):
    config, spliced, _ = cached
    with open(config.DATASET, "a") as file:
        file.write(json.dumps({"text": "One more line."}) + "\n")
    with caplog.at_level(logging.WARNING):
        assert load_thresholds(config, spliced) is None
    assert "'size'" in caplog.text


def test_load_thresholds_ignores_a_cache_that_lacks_a_site(hist_config, caplog):
    config = hist_config(ATTN_SAES=None)
    spliced, tokenizer = load_spliced_model(config)
    save_thresholds(config, spliced, thresholds_from_config(config, spliced, tokenizer))
    full = hist_config()
    with caplog.at_level(logging.WARNING):
        assert load_thresholds(full, load_spliced_model(full)[0]) is None
    assert "no threshold for site attn_1" in caplog.text


def test_load_thresholds_without_a_cache_or_a_dataset_returns_none(hist_config, caplog):
    config = hist_config()
    spliced, _ = load_spliced_model(config)
    with caplog.at_level(logging.INFO):
        assert load_thresholds(config, spliced) is None
        assert load_thresholds(hist_config(DATASET=None), spliced) is None
    assert "No cached thresholds" in caplog.text and "DATASET is unset" in caplog.text
