"""Thresholds: preclustering cuts and percentiles against plain-model brute force."""

import json
import logging
import os

import numpy as np
import pytest
import torch
from conftest import D_MODEL, N_LAYERS, MpsLikeDtypes, write_sae_folder, write_sae_set
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.cluster import MiniBatchKMeans
from transformers import AutoModelForCausalLM, AutoTokenizer

from sparse_coding.algorithms.thresholds import assign_cuts, fit_clusters
from sparse_coding.algorithms.top_percentile import percentile_from_top, samples_to_resolve, top_count
from sparse_coding.config import config_from_dict
from sparse_coding.errors import ConfigError, DatasetError
from sparse_coding.models.saes import load_sae
from sparse_coding.pipelines.hist import thresholds_from_config
from sparse_coding.pipelines.inputs import text_source
from sparse_coding.pipelines.loading import load_spliced_model
from sparse_coding.pipelines.threshold_cache import load_thresholds, save_thresholds
from sparse_coding.text.corpus import iter_batches, load_texts

SUBJECTS = ["The cat", "A young engineer", "My neighbour", "The old sailor"]
ACTIONS = [
    "walked to the market on Sunday.",
    "wrote 12 lines of Python: def f(x): return x + 1",
    "said hello & goodbye in <html> tags.",
    "counted 1 2 3 4 5 6 7 8 9 10 slowly.",
    "read about sparse autoencoders and interpretable features.",
]
TEXTS = [f"{subject} {action}" for action in ACTIONS for subject in SUBJECTS]
MAX_SEQ_LEN = 16


def write_dataset(path):
    lines = (json.dumps({"text": text, "id": i}) + "\n" for i, text in enumerate(TEXTS))
    path.write_text("".join(lines))
    return path


def hist_settings(dataset) -> dict:
    return {
        "DATASET": str(dataset),
        "NUM_SEQUENCES_EVALED": len(TEXTS),
        "MAX_SEQ_LEN": MAX_SEQ_LEN,
        "BATCH_SIZE": 7,
        "NUM_CLUSTERS": 6,
        "ACTS_LAYERS_SLICE": "1:3",
    }


@pytest.fixture
def hist_config(make_config, tmp_path):
    """hist_config(**overrides) -> Config reading a fresh copy of TEXTS."""
    dataset = write_dataset(tmp_path / "texts.jsonl")
    return lambda **overrides: make_config(**(hist_settings(dataset) | overrides))


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_model_dir, sae_templates):
    """(build(**overrides) -> Config, spliced model, result) with the result's cache saved."""
    root = tmp_path_factory.mktemp("saved")
    base = {
        "MODEL_DIR": str(tiny_model_dir),
        "RESID_SAES": sae_templates["resid"],
        "ATTN_SAES": sae_templates["attn"],
        "MLP_SAES": sae_templates["mlp"],
        "DATA_DIR": str(root / "data"),
        "DEVICE": "cpu",
        "NEURONPEDIA": False,
        "PREPEND_BOS": True,
    } | hist_settings(write_dataset(root / "texts.jsonl"))

    def build(**overrides):
        return config_from_dict(base | overrides)

    config = build()
    spliced, tokenizer = load_spliced_model(config)
    result = thresholds_from_config(config, spliced, tokenizer)
    save_thresholds(config, spliced, result)
    return build, spliced, result


def config_batches(config, tokenizer):
    """The config's token batches, a fresh stream per call."""
    return lambda: iter_batches(
        load_texts(text_source(config)),
        tokenizer,
        batch_size=7,
        max_len=MAX_SEQ_LEN,
        prepend_bos=True,
        device="cpu",
    )


def plain_model(config):
    tokenizer = AutoTokenizer.from_pretrained(config.MODEL_DIR)
    model = AutoModelForCausalLM.from_pretrained(config.MODEL_DIR, attn_implementation="eager")
    return model.eval(), tokenizer


def token_ids(tokenizer, text: str) -> list[int]:
    """BOS + tokens, truncated to MAX_SEQ_LEN (written out here, independently)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [tokenizer.bos_token_id, *ids][:MAX_SEQ_LEN]


def hooked_acts(model, ids: list[int], hooks: list[str]) -> dict[str, torch.Tensor]:
    """Plain HF forward of one sequence; activation (pos, d_model) at each hook name."""
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
                    lambda m, args, kwargs, keep=keep: keep(args[0] if args else kwargs["hidden_states"]),
                    with_kwargs=True,
                )
            )
        elif name == "hook_resid_post":
            handles.append(
                block.register_forward_hook(
                    lambda m, a, out, keep=keep: keep(out[0] if isinstance(out, tuple) else out)
                )
            )
        elif name == "hook_attn_out":
            handles.append(block.attn.register_forward_hook(lambda m, a, out, keep=keep: keep(out[0])))
        else:
            assert name == "hook_mlp_out"
            handles.append(block.mlp.register_forward_hook(lambda m, a, out, keep=keep: keep(out)))
    with torch.no_grad():
        model(torch.tensor([ids]))
    for handle in handles:
        handle.remove()
    return store


def token_labels(config, kmeans, hook: str) -> list[np.ndarray]:
    """Per text, the fitted model's predict on each unit-normalised token vector at `hook`.

    The leading BOS is not clustered: it gets label -1.
    """
    model, tokenizer = plain_model(config)
    labels = []
    for text in TEXTS:
        acts = hooked_acts(model, token_ids(tokenizer, text), [hook])[hook].numpy()[1:]
        predicted = kmeans.predict(acts / np.linalg.norm(acts, axis=1, keepdims=True))
        labels.append(np.concatenate([[-1], predicted]))
    return labels


def first_hits(labels: list[np.ndarray], keeper: int) -> list[int]:
    """Cut position per text: its first token labelled `keeper`, else -1."""
    return [int(np.flatnonzero(seq == keeper)[0]) if keeper in seq else -1 for seq in labels]


def interesting_keeper(labels: list[np.ndarray], n_clusters: int) -> int:
    """A cluster some texts never reach and others reach past position 0, if any."""

    def score(keeper: int) -> tuple[bool, int]:
        cuts = first_hits(labels, keeper)
        return -1 in cuts and max(cuts) > 0, len(set(cuts))

    return max(range(n_clusters), key=score)


def brute_force_percentiles(config, spliced, cuts: list[int], percentile: float) -> dict[str, np.ndarray]:
    """numpy percentile of SAE.encode at the last token of each cut sequence, run alone."""
    model, tokenizer = plain_model(config)
    sources = {"resid": config.RESID_SAES, "attn": config.ATTN_SAES, "mlp": config.MLP_SAES}
    saes = {site.key: load_sae(sources[site.kind], site.layer) for site in spliced.sites}
    rows: dict[str, list[np.ndarray]] = {key: [] for key in saes}
    for text, cut in zip(TEXTS, cuts, strict=True):
        if cut < 0:
            continue
        ids = token_ids(tokenizer, text)[: cut + 1]
        acts = hooked_acts(model, ids, [sae.hook_name for sae in saes.values()])
        for key, sae in saes.items():
            x = acts[sae.hook_name][-1]
            x = x - x.mean() if sae.cfg.center_writing_weights else x
            with torch.no_grad():
                rows[key].append(sae.encode(x).numpy())
    return {key: np.percentile(np.stack(values), percentile, axis=0) for key, values in rows.items()}


def resid_override(tmp_path, hook: str | None) -> dict:
    """RESID_SAES for resid SAEs on `hook` (None: no resid SAEs)."""
    if hook is None:
        return {"RESID_SAES": None}
    for layer in range(N_LAYERS):
        write_sae_folder(tmp_path / hook / f"resid_{layer}", hook_name=f"blocks.{layer}.{hook}", seed=layer)
    return {"RESID_SAES": str(tmp_path / hook / "resid_{layer}")}


@pytest.mark.parametrize("hook", ["hook_resid_pre", "hook_resid_post", None])
def test_kept_sequences_are_those_reaching_the_keeper_cluster_cut_after_its_first_token(
    hist_config, tmp_path, hook
):
    overrides = resid_override(tmp_path, hook)
    first = hist_config(**overrides)
    spliced, tokenizer = load_spliced_model(first)
    fitted = fit_clusters(spliced, config_batches(first, tokenizer), layer=1, n_clusters=6, seed=first.SEED)
    cluster_hook = f"blocks.1.{hook or 'hook_resid_pre'}"
    labels = token_labels(first, fitted, cluster_hook)
    keeper = interesting_keeper(labels, first.NUM_CLUSTERS)

    result = thresholds_from_config(hist_config(**overrides, KEEPER_CLUSTER_INDEX=keeper), spliced, tokenizer)

    assert result.cluster_hook == cluster_hook
    np.testing.assert_array_equal(result.kmeans.cluster_centers_, fitted.cluster_centers_)  # seeded
    cuts = first_hits(labels, keeper)
    assert result.cut_positions.tolist() == cuts
    assert -1 in cuts and max(cuts) > 0, "the data should give a non-trivial keeper cluster"


def test_thresholds_equal_numpy_percentiles_of_brute_force_sae_activations(saved):
    build, spliced, result = saved
    config = build()
    cuts = first_hits(token_labels(config, result.kmeans, result.cluster_hook), config.KEEPER_CLUSTER_INDEX)

    expected = brute_force_percentiles(config, spliced, cuts, 99.99)

    assert set(result.thresholds) == set(expected) == {site.key for site in spliced.sites}
    for key, values in expected.items():
        np.testing.assert_allclose(result.thresholds[key].numpy(), values, rtol=1e-5, atol=1e-5, err_msg=key)


def test_threshold_percentile_sets_the_percentile_and_warns_only_when_too_few_were_kept(saved, caplog):
    """99.99 over a handful of kept sequences cannot resolve (hist.py says so); 50 can."""
    build, spliced, default = saved
    config = build(THRESHOLD_PERCENTILE=50.0)
    tokenizer = AutoTokenizer.from_pretrained(config.MODEL_DIR)
    with caplog.at_level(logging.WARNING):
        result = thresholds_from_config(config, spliced, tokenizer)
    assert "THRESHOLD_PERCENTILE" not in caplog.text
    cuts = first_hits(token_labels(config, result.kmeans, result.cluster_hook), config.KEEPER_CLUSTER_INDEX)
    for key, values in brute_force_percentiles(config, spliced, cuts, 50.0).items():
        np.testing.assert_allclose(result.thresholds[key].numpy(), values, rtol=1e-5, atol=1e-5, err_msg=key)
    with caplog.at_level(logging.WARNING):
        thresholds_from_config(build(), spliced, tokenizer)
    expected = f"needs at least 10000 kept sequences to resolve, but only {default.n_kept} of {len(TEXTS)}"
    assert expected in caplog.text
    stored = json.loads((build().model_data_dir(build().MODEL_DIR) / "thresholds.json").read_text())
    assert stored["percentile"] == 99.99 and stored["percentile_resolved"] is False


@pytest.mark.parametrize("percentile", [0.0, 50.0, 90.0, 99.0, 99.9, 99.99, 99.999])
def test_samples_to_resolve_is_the_fewest_whose_top_share_holds_one_value(percentile):
    """n values put n * (100 - q) / 100 of them above the q-th percentile; at least one is needed."""
    n = samples_to_resolve(percentile)
    assert n * (100 - percentile) / 100 >= 1 - 1e-9
    assert n == 1 or (n - 1) * (100 - percentile) / 100 < 1 - 1e-9


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.floats(-1e3, 1e3, width=32), min_size=1, max_size=300),
    percentile=st.sampled_from([0.0, 10.0, 50.0, 99.0, 99.9, 99.99, 100.0]),
)
def test_percentile_from_the_top_values_equals_numpy_percentile_of_all(values, percentile):
    column = np.array(values, dtype=np.float32)
    n = len(column)
    top = torch.from_numpy(column)[:, None].topk(top_count(n, percentile), dim=0).values

    result = percentile_from_top(top, n, percentile)

    expected = np.percentile(column.astype(np.float64), percentile)
    np.testing.assert_allclose(result.numpy()[0], expected, rtol=1e-6, atol=1e-4)


def test_percentiles_make_no_float64_tensor_so_they_run_on_mps():
    top = torch.tensor([[5.0, 2.0], [4.0, 1.0], [3.0, 0.5]])
    with MpsLikeDtypes():
        result = percentile_from_top(top, 10, 95.0)  # h = 8.55: between v_8 and v_9
    np.testing.assert_allclose(result.numpy(), [4.55, 1.55], rtol=1e-6)


def test_the_top_count_stays_small_for_large_datasets():
    assert top_count(100_000, 99.99) == 12
    assert top_count(10, 99.99) == 3  # v_8, v_9 and one spare


def test_num_clusters_above_the_token_count_is_a_config_error(hist_config):
    config = hist_config(NUM_SEQUENCES_EVALED=2, MAX_SEQ_LEN=3, NUM_CLUSTERS=7)
    spliced, tokenizer = load_spliced_model(config)
    # 2 sequences of 3 tokens, their leading BOS not clustered: 4 tokens.
    with pytest.raises(ConfigError, match="NUM_CLUSTERS is 7.* 4 tokens"):
        thresholds_from_config(config, spliced, tokenizer)


def test_a_keeper_cluster_no_sequence_reaches_is_a_dataset_error(hist_config):
    config = hist_config()
    spliced, tokenizer = load_spliced_model(config)
    unit = np.eye(D_MODEL, dtype=np.float32)[0]
    # Centres at a unit vector and 100 times its opposite: every unit vector is nearer the first.
    kmeans = MiniBatchKMeans(2, random_state=0).fit(np.stack([unit, -100 * unit] * 4))
    unreached = int(np.argmax(np.linalg.norm(kmeans.cluster_centers_, axis=1)))

    with pytest.raises(DatasetError, match=f"No sequence reaches KEEPER_CLUSTER_INDEX {unreached}"):
        assign_cuts(spliced, config_batches(config, tokenizer), kmeans, layer=1, keeper_cluster=unreached)


def test_a_dataset_without_the_text_column_is_a_dataset_error(hist_config):
    config = hist_config(DATASET_TEXT_COLUMN="body")
    spliced, tokenizer = load_spliced_model(config)
    with pytest.raises(DatasetError, match="body"):
        thresholds_from_config(config, spliced, tokenizer)


def test_load_thresholds_returns_a_fresh_cache(saved):
    build, spliced, result = saved
    config = build()

    loaded = load_thresholds(config, spliced)

    assert loaded is not None and set(loaded.values) == set(result.thresholds)
    for key, values in result.thresholds.items():
        torch.testing.assert_close(loaded.values[key], values)
    assert f"{result.n_kept} of {len(TEXTS)} sequences" in loaded.description
    metadata = json.loads((config.model_data_dir(config.MODEL_DIR) / "thresholds.json").read_text())
    assert metadata["dataset_identity"]["local"]["files"][0][1] == os.path.getsize(config.DATASET)
    assert metadata["saes"]["attn_1"]["source"] == config.ATTN_SAES


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"NUM_SEQUENCES_EVALED": 19}, "dataset.NUM_SEQUENCES_EVALED was 20, now 19"),
        ({"DATASET_TEXT_COLUMN": "id"}, "dataset.DATASET_TEXT_COLUMN was 'text', now 'id'"),
        ({"SEED": 1}, "cluster.SEED was 0, now 1"),
        ({"KEEPER_CLUSTER_INDEX": 1}, "cluster.KEEPER_CLUSTER_INDEX was 0, now 1"),
        ({"THRESHOLD_PERCENTILE": 99.0}, "percentile was 99.99, now 99.0"),
    ],
)
def test_load_thresholds_ignores_a_cache_made_with_other_settings(saved, caplog, change, message):
    build, spliced, _ = saved
    with caplog.at_level(logging.WARNING):
        assert load_thresholds(build(**change), spliced) is None
    assert "stale" in caplog.text and message in caplog.text


def test_load_thresholds_ignores_a_cache_made_at_another_first_layer(saved, caplog):
    build, _, _ = saved
    config = build(ACTS_LAYERS_SLICE="0:3")
    with caplog.at_level(logging.WARNING):
        assert load_thresholds(config, load_spliced_model(config)[0]) is None
    assert "blocks.1.hook_resid_pre" in caplog.text and "no threshold for site resid_0" in caplog.text


def test_load_thresholds_ignores_a_cache_from_another_sae_source(saved, tmp_path, caplog):
    build, spliced, _ = saved
    with caplog.at_level(logging.WARNING):
        assert load_thresholds(build(ATTN_SAES=write_sae_set(tmp_path, "attn")), spliced) is None
    assert "attn_1 SAE was" in caplog.text and "attn_2 SAE was" in caplog.text


def test_load_thresholds_ignores_a_cache_that_lacks_a_site(saved, caplog):
    build, _, _ = saved
    config = build()
    every_layer = [(site, layer) for site in ("resid", "attn", "mlp") for layer in range(N_LAYERS)]
    wider = load_spliced_model(config, pairs=every_layer)[0]  # sites at layer 0 too
    with caplog.at_level(logging.WARNING):
        assert load_thresholds(config, wider) is None
    assert "no threshold for site resid_0" in caplog.text


def test_load_thresholds_ignores_a_cache_after_the_dataset_file_changed(saved, tmp_path, caplog):
    build, spliced, result = saved
    config = build(DATASET=str(write_dataset(tmp_path / "copy.jsonl")), DATA_DIR=str(tmp_path))
    save_thresholds(config, spliced, result)
    assert load_thresholds(config, spliced) is not None
    with open(config.DATASET, "a") as file:
        file.write(json.dumps({"text": "One more line."}) + "\n")
    with caplog.at_level(logging.WARNING):
        assert load_thresholds(config, spliced) is None
    assert "dataset_identity.local was" in caplog.text


def test_load_thresholds_without_a_cache_or_a_dataset_returns_none(hist_config, caplog):
    config = hist_config()
    spliced, _ = load_spliced_model(config)
    with caplog.at_level(logging.INFO):
        assert load_thresholds(config, spliced) is None
        assert load_thresholds(hist_config(DATASET=None), spliced) is None
    assert "No cached thresholds" in caplog.text and "DATASET is unset" in caplog.text
