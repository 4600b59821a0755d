"""The memory check's arithmetic: SAE weights at their final dtype plus the script's working set."""

import logging
from pathlib import Path

import pytest
import torch

from sparse_coding.config import config_from_dict
from sparse_coding.errors import SparseCodingError
from sparse_coding.models import loading
from sparse_coding.models.memory import MODEL_MARGIN_BYTES, PASS_COPIES, Pass, estimate, sae_weight_bytes
from sparse_coding.models.saes import SAEConfig
from sparse_coding.pipelines.loading import script_passes

GIB = 2**30


def v5_cfg(layer: int, hook: str = "hook_resid_post", d_sae: int = 32768) -> SAEConfig:
    """An OpenAI v5 SAE of GPT-2 small as its cfg.json describes it."""
    return SAEConfig(
        d_in=768, d_sae=d_sae, hook_name=f"blocks.{layer}.{hook}", activation="topk", k=32,
        normalize_activations="layer_norm", apply_b_dec_to_input=True, prepend_bos=False,
        center_writing_weights=False, neuronpedia_id=None, source=f"v5 {hook} {layer}",
    )  # fmt: skip


def full_slice(d_sae: int) -> list[SAEConfig]:
    """Slice ':' of the default sites: resid_post, attn_out and mlp_out at all 12 layers."""
    hooks = ("hook_resid_post", "hook_attn_out", "hook_mlp_out")
    return [v5_cfg(layer, hook, d_sae) for layer in range(12) for hook in hooks]


@pytest.mark.parametrize(("dtype", "size"), [(torch.float32, 4), (torch.bfloat16, 2), (torch.float16, 2)])
def test_an_sae_weighs_its_tensors_at_the_run_dtype(dtype, size):
    # W_enc and W_dec 768 x 32768, b_enc 32768, b_dec 768: the 32k files' 201 MB at float32.
    assert sae_weight_bytes(v5_cfg(0), dtype) == (2 * 768 * 32768 + 32768 + 768) * size
    jump = SAEConfig(**{**v5_cfg(0).__dict__, "activation": "jumprelu", "k": None})
    assert sae_weight_bytes(jump, dtype) == (2 * 768 * 32768 + 2 * 32768 + 768) * size


def test_the_working_set_is_dense_arrays_per_site_and_per_pass_and_logits_times_the_tokens():
    cfgs = full_slice(32768)
    for kind, (per_site, per_pass, logits) in PASS_COPIES.items():
        one = Pass(kind, rows=8, positions=20)
        tokens = 8 * 20 * 4
        expected = int(tokens * 32768 * (per_site * 36 + per_pass) + tokens * 50257 * logits)
        assert estimate(cfgs, torch.float32, [one], d_vocab=50257).working == expected + MODEL_MARGIN_BYTES
    # The largest pass counts, not their sum.
    small, large = Pass("encode", 8, 128), Pass("attribution", 1, 5)
    both = estimate(cfgs, torch.float32, [small, large], d_vocab=50257).working
    assert both == max(estimate(cfgs, torch.float32, [p], d_vocab=50257).working for p in (small, large))


def test_pipe_reserves_its_ablation_row_budget_on_a_cpu_only():
    cfgs = full_slice(32768)[::3]
    passes = [Pass("encode", 1, 6), Pass("ablation", 0, 0)]
    cpu, cuda = (
        estimate(cfgs, torch.float32, passes, d_vocab=50257, device_type=device).working
        for device in ("cpu", "cuda")
    )
    assert cpu - cuda == 1 << 30


def test_each_script_counts_its_own_passes():
    config = config_from_dict({"BATCH_SIZE": 8, "MAX_SEQ_LEN": 128, "NUM_SEQUENCES_INTERPED": 2})
    assert script_passes(config, "fast", prompt_tokens=5) == [Pass("attribution", 1, 5)]
    with_data = config_from_dict({"DATASET": "d.txt", "MAX_SEQ_LEN": 100})
    assert script_passes(with_data, "fast", 5) == [Pass("attribution", 1, 5), Pass("labels", 8, 100)]
    assert script_passes(config, "pipe", 5) == [Pass("encode", 2, 5), Pass("ablation", 0, 0)]
    assert script_passes(config, "val", 5) == [Pass("validation", 8, 128)]
    assert script_passes(config, "hist", 5) == script_passes(config, None, 5) == [Pass("encode", 8, 128)]


def test_an_8_gib_card_takes_the_full_slice_of_32k_saes_and_the_old_margin_would_have_refused_it(
    monkeypatch, caplog
):
    monkeypatch.setattr(loading, "_free_bytes", lambda device: 8 * GIB)
    cfgs = full_slice(32768)
    passes = [Pass("attribution", 1, 5)]  # fast.py on the default PROMPT
    with caplog.at_level(logging.INFO, logger="sparse_coding.models.loading"):
        loading.check_memory(cfgs, list(range(12)), torch.device("cuda"), torch.float32, passes)
    assert "weights 6.75 GiB" in caplog.text
    # The check it replaces: file sizes plus 64 MiB per SAE, 8.44 GiB.
    assert 36 * (2 * 768 * 32768 + 32768 + 768) * 4 + 36 * 64 * 2**20 > 8.4 * GIB


def test_saes_that_do_not_fit_are_refused_naming_the_sizes_and_the_fixes(monkeypatch):
    monkeypatch.setattr(loading, "_free_bytes", lambda device: 4 * GIB)
    with pytest.raises(SparseCodingError) as info:
        loading.check_memory(full_slice(32768), list(range(12)), torch.device("cuda"), torch.float32)
    message = str(info.value)
    assert "36 SAEs" in message and "0:12" in message and "weights 6.75 GiB" in message
    assert all(key in message for key in ("SAE_DTYPE", "ACTS_LAYERS_SLICE", "BATCH_SIZE"))
    loading.check_memory(full_slice(32768), list(range(12)), torch.device("cuda"), torch.bfloat16)


def _table_rows(text: str, after: str, header: str) -> list[list[str]]:
    table = text.split(after, 1)[1].split(header, 1)[1].split("\n\n", 1)[0]
    return [[c.strip() for c in row.strip("|").split("|")] for row in table.strip().splitlines()[2:]]


def test_the_documented_memory_tables_are_what_the_check_computes():
    root = Path(__file__).resolve().parents[1]
    docs = (root / "docs" / "sae_sources.md").read_text(encoding="utf-8")
    rows = _table_rows(docs, "## Memory", "| script |")
    assert len(rows) >= 8
    totals = {(script, width, dtype): total for script, _, width, dtype, _, _, total in rows}
    readme = (root / "README.md").read_text(encoding="utf-8")
    readme_rows = _table_rows(readme, "### Memory", "| script, SAEs |")
    assert len(readme_rows) == 3
    for label, fp32, bf16 in readme_rows:  # e.g. "fast.py, 36 x 32k", "7.03 GiB", "3.65 GiB"
        script, width = label.split(",")[0], label.rsplit(" ", 1)[1]
        assert totals.get((script, width, "float32"), fp32.split()[0]) == fp32.split()[0], label
        assert totals[(script, width, "bfloat16")] == bf16.split()[0], label
    for script, n_saes, width, dtype, weights, working, total in rows:
        sites = 1 if script.startswith("pipe") else 3
        raw = {"DATASET": "texts.txt"} if "DATASET" in script else {}
        passes = script_passes(config_from_dict(raw), script.split(".")[0], prompt_tokens=4)
        d_sae = {"32k": 32768, "128k": 131072}[width]
        cfgs = [cfg for cfg in full_slice(d_sae) if sites == 3 or cfg.hook_name.endswith("hook_resid_post")]
        need = estimate(cfgs, getattr(torch, dtype), passes, d_vocab=50257)
        assert len(cfgs) == int(n_saes)
        shown = [f"{value / GIB:.2f}" for value in (need.weights, need.working, need.total)]
        assert shown == [weights, working, total], script
