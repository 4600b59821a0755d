"""The published artefacts' real hub layouts (tests/hub_layouts.py) load as they are, and a default run
on them is one BOS convention, on the fast tokenizer, without transformers."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hub_layouts import GPT2_REPO, PUBLISHED

from sparse_coding.models.gpt2 import load_model
from sparse_coding.models.saes import load_sae

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("release", PUBLISHED)
def test_every_published_set_loads_from_its_real_repo_and_folders(real_hub, release):
    published = PUBLISHED[release]
    for layer in range(3):
        sae = load_sae(release, layer)
        assert sae.hook_name == published.hook.format(layer=layer)
        assert sae.neuronpedia_id == published.neuronpedia.format(layer=layer)
        assert sae.d_sae == published.d_sae and sae.d_in == 32
        jb = published.style == "jb"
        # res-jb: ReLU, trained with BOS on TransformerLens' centred weights (SAELens' registry forces
        # center_writing_weights); v5: TopK-32 on layer-normalised inputs, trained without BOS.
        assert (sae.cfg.activation, sae.cfg.k) == (("relu", None) if jb else ("topk", 32))
        assert sae.cfg.normalize_activations == ("none" if jb else "layer_norm")
        assert sae.cfg.prepend_bos is jb and sae.cfg.center_writing_weights is jb


def test_the_hubs_gpt2_loads_and_equals_transformers_on_the_same_files(real_hub):
    from transformers import GPT2LMHeadModel

    ours, tokenizer = load_model(GPT2_REPO, torch.device("cpu"))
    theirs = GPT2LMHeadModel.from_pretrained(GPT2_REPO, attn_implementation="eager").eval()
    text = "When Mary and John went to the store"
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), theirs(ids).logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("script", "extra"), [("fast", []), ("pipe", ["--allow-empty"])])
def test_a_default_run_on_the_real_layouts_needs_no_transformers_and_warns_of_no_bos(
    real_hub, tmp_path, script, extra
):
    """The shipped defaults (one SAE family) with only the slice changed, as a process: no BOS
    warning, the fast tokenizer path, and the graph records the settled PREPEND_BOS (v5: false)."""
    config = {"ACTS_LAYERS_SLICE": "0:3", "DATA_DIR": str(tmp_path / "data"), "NEURONPEDIA": False}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    env = os.environ | {"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(real_hub)}
    done = subprocess.run(
        [sys.executable, "-X", "importtime", str(REPO / "sparse_coding" / f"{script}.py"),
         "--config", "c.yaml", *extra],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    log = [line for line in done.stderr.splitlines() if not line.startswith("import time:")]
    assert not [line for line in log if "BOS" in line or "trained" in line], log
    times = [line for line in done.stderr.splitlines() if line.startswith("import time:")]
    imported = {line.split("|")[-1].strip() for line in times}
    assert "transformers" not in imported and "tokenizers" in imported
    name = "grads_graph.json" if script == "fast" else "cognition_graph.json"
    graph = json.loads((tmp_path / "data" / "openai-community_gpt2" / name).read_text())
    assert [run["config"]["PREPEND_BOS"] for run in graph["metadata"]["runs"]] == [False]
