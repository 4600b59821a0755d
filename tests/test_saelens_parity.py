"""Parity with SAELens and TransformerLens themselves, which run in their own virtual environment.

`.ci/run` builds that environment (`.ci/oracle-venv`: torch, sae-lens,
transformer-lens at pinned versions) and this module runs
`tests/saelens_oracle.py` there in a subprocess, on a hub cache holding the
published artefacts' real layouts with tiny weights (`tests/hub_layouts.py`).
It compares, for every release in the table and every hook it reads
(resid_pre, resid_post, attn_out, mlp_out):

- feature activations and SAE errors of the project's spliced Hugging Face
  GPT-2 with `SAE.from_pretrained(release, id)` on the activations of
  `HookedTransformer.from_pretrained` and of `from_pretrained_no_processing(
  **model_from_pretrained_kwargs)`; inputs and reconstructions in the SAE's
  own convention with the latter;
- the release table (repo, folders, forced centring, Neuronpedia ids) with
  SAELens' registry, and each SAE's cfg facts (hook, prepend_bos);
- logit cells with the ranking of `W_dec @ W_U` of `from_pretrained`;
- encode/decode of local folders in every cfg spelling and activation.

Without the environment the module is skipped with a message saying how to
build it; `.ci/run` says so loudly when it cannot build it, and sets
SPARSE_CODING_REQUIRE_ORACLE so that CI fails rather than skips when it did.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import write_sae_folder
from hub_layouts import GPT2_ALIAS, GPT2_REPO, PUBLISHED, add_to_hub_cache
from safetensors.torch import load_file, save_file

from sparse_coding.graphs.graph import Graph, Node
from sparse_coding.labels.logit_lens import add_logit_effects
from sparse_coding.models.gpt2 import load_model
from sparse_coding.models.sae_sources import RELEASES
from sparse_coding.models.saes import load_sae
from sparse_coding.nodes import feature_id
from sparse_coding.splicing.splice import Site, SplicedModel

REPO = Path(__file__).resolve().parents[1]
ORACLE = Path(os.environ.get("SPARSE_CODING_ORACLE_PYTHON", REPO / ".ci" / "oracle-venv" / "bin" / "python"))
LAYERS = range(3)
TEXT = "When Mary and John went to the store, John gave a drink to"
N_TOKENS = 5
TOL = {"rtol": 1e-4, "atol": 1e-4}
LOCAL = {
    "relu_old_spelling": dict(hook_name="blocks.1.hook_resid_pre", activation="relu", spelling="old"),
    "relu_new_spelling": dict(hook_name="blocks.1.hook_resid_pre", activation="relu", spelling="new"),
    "topk_layer_norm": dict(hook_name="blocks.1.hook_attn_out", activation="topk", layer_norm=True),
    "topk_layer_norm_v6": dict(
        hook_name="blocks.1.hook_mlp_out", activation="topk", layer_norm=True, spelling="v6"
    ),
    "jumprelu": dict(hook_name="blocks.1.hook_resid_post", activation="jumprelu"),
}


def _no_oracle(reason: str) -> None:
    message = (
        f"SAELens/TransformerLens oracle unavailable ({reason}); build it with .ci/run, or point "
        f"SPARSE_CODING_ORACLE_PYTHON at a python with sae-lens and transformer-lens"
    )
    if os.environ.get("SPARSE_CODING_REQUIRE_ORACLE"):
        pytest.fail(message)
    pytest.skip(message)


class Ours:
    """The project's values on the same hub cache: per (release, layer, sequence) the SAE's input,
    features, error and reconstruction; per (release, layer) the SAE and the logit cells."""

    def __init__(self, sequences: list[list[int]]) -> None:
        self.model, _ = load_model(GPT2_REPO, torch.device("cpu"))
        self.values, self.saes, self.cells = {}, {}, {}
        for release in PUBLISHED:
            saes = [load_sae(release, layer) for layer in LAYERS]
            self.saes |= {(release, sae.layer): sae for sae in saes}
            spliced = SplicedModel(self.model, saes)
            for index, ids in enumerate(sequences):
                self._record(spliced, release, index, ids)
            self._logit_cells(spliced, release)

    def _record(self, spliced: SplicedModel, release: str, index: int, ids: list[int]) -> None:
        def record(site: Site, x: torch.Tensor) -> torch.Tensor:
            code = site.code(x)
            recon = site.sae.decode(site.sae.encode(site.to_sae_space(x)))
            self.values[release, site.layer, index] = (site.to_sae_space(x), code.feats, code.error, recon)
            return x

        with torch.no_grad(), spliced.intervene(record):
            spliced(torch.tensor([ids]))

    def _logit_cells(self, spliced: SplicedModel, release: str) -> None:
        graph = Graph()
        for site in spliced.sites:
            for feature in range(site.sae.d_sae):
                graph.add_node(Node.from_id(feature_id(site.kind, site.layer, feature)))
        add_logit_effects(graph, spliced, IdNames(), n_tokens=N_TOKENS)
        for node in graph.nodes.values():
            self.cells[release, node.layer, node.feature] = [int(t[1:-1]) for t, _ in node.logits_up]


class IdNames:
    """Names each token by its id, so that logit cells map back to ids."""

    def decode(self, ids: list[int]) -> str:
        return f"<{ids[0]}>"


@pytest.fixture(scope="module")
def parity(tmp_path_factory, published_folders):
    """(the oracle's tensors, its facts, the project's values), on one hub cache."""
    if not ORACLE.exists():
        _no_oracle(f"{ORACLE} does not exist")
    root = tmp_path_factory.mktemp("parity")
    for repo_id, folder, name_in_repo in published_folders:
        add_to_hub_cache(root / "hub", repo_id, folder, name_in_repo)
    local = {name: str(write_sae_folder(root / name / "sae_1", **options)) for name, options in LOCAL.items()}
    inputs = {name: torch.randn(4, 7, 32, generator=torch.Generator().manual_seed(i)) * 3 for i, name in
              enumerate(LOCAL)}  # fmt: skip
    save_file(inputs, str(root / "inputs.safetensors"))
    with pytest.MonkeyPatch.context() as patch:
        import huggingface_hub.constants as constants

        patch.setattr(constants, "HF_HUB_CACHE", str(root / "hub"))
        patch.setattr(constants, "HF_HUB_OFFLINE", True)
        from sparse_coding.text.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(GPT2_REPO)
        ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
        sequences = [[tokenizer.bos_token_id, *ids], ids]
        ours = Ours(sequences)
    hub = [[s.release, s.hook.format(layer=layer)] for s in PUBLISHED.values() for layer in LAYERS]
    spec = {
        "model": GPT2_ALIAS, "hub": hub, "sequences": sequences, "registry": list(PUBLISHED),
        "local": local, "inputs": str(root / "inputs.safetensors"), "out": str(root / "oracle"),
    }  # fmt: skip
    (root / "spec.json").write_text(json.dumps(spec))
    env = os.environ | {"HF_HUB_CACHE": str(root / "hub"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    done = subprocess.run(
        [str(ORACLE), str(REPO / "tests" / "saelens_oracle.py"), str(root / "spec.json")],
        capture_output=True, text=True, timeout=600, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    facts = json.loads((root / "oracle.json").read_text())
    print(f"oracle: {facts['versions']}", file=sys.stderr)
    return load_file(str(root / "oracle.safetensors")), facts, ours, (inputs, local)


def _job(release: str, layer: int) -> str:
    return f"{release}|{PUBLISHED[release].hook.format(layer=layer)}"


def _compared(parity, release: str, models: tuple[str, ...]):
    """(where, the project's (input, feats, error, reconstruction), the oracle's tensors by name) of
    every layer, sequence and oracle model."""
    theirs, _, ours, _ = parity
    for layer in LAYERS:
        for index in range(2):
            for model in models:
                where = f"{_job(release, layer)}|{model}|{index}"
                names = ("x", "feats", "error", "recon")
                yield where, ours.values[release, layer, index], [theirs[f"{where}|{n}"] for n in names]


@pytest.mark.parametrize("release", PUBLISHED)
def test_features_and_errors_equal_saelens_on_transformerlens_activations_both_ways(parity, release):
    for where, (_, feats, error, _), (_, their_feats, their_error, _) in _compared(
        parity, release, ("processed", "as_trained")
    ):
        torch.testing.assert_close(feats, their_feats, **TOL, msg=where)
        torch.testing.assert_close(error, their_error, **TOL, msg=where)


@pytest.mark.parametrize("release", PUBLISHED)
def test_inputs_and_reconstructions_equal_saelens_in_the_saes_own_convention(parity, release):
    """With the model loaded as SAELens says the SAE was trained (model_from_pretrained_kwargs)."""
    for where, (x, _, _, recon), (their_x, _, _, their_recon) in _compared(parity, release, ("as_trained",)):
        torch.testing.assert_close(x, their_x, **TOL, msg=where)
        torch.testing.assert_close(recon, their_recon, **TOL, msg=where)


@pytest.mark.parametrize("release", PUBLISHED)
def test_the_release_table_is_saelens_registry(parity, release):
    _, facts, _, _ = parity
    registry, ours = facts["registry"][release], RELEASES[release]
    assert ours.repo_id == registry["repo_id"]
    hook = PUBLISHED[release].hook
    for layer in range(12):
        sae_id = hook.format(layer=layer)
        assert ours.folder.format(layer=layer) == registry["paths"][sae_id]
        assert ours.neuronpedia.format(layer=layer) == registry["neuronpedia"][sae_id]
    forced = (registry["config_overrides"] or {}).get("model_from_pretrained_kwargs", {})
    assert ours.center_writing_weights == forced.get("center_writing_weights", False)


@pytest.mark.parametrize("release", PUBLISHED)
def test_each_sae_knows_its_hook_bos_convention_and_neuronpedia_id_as_saelens_does(parity, release):
    _, facts, ours, _ = parity
    for layer in LAYERS:
        theirs, sae = facts[_job(release, layer)], ours.saes[release, layer]
        assert (sae.hook_name, sae.cfg.prepend_bos) == (theirs["hook_name"], theirs["prepend_bos"])
        assert sae.neuronpedia_id == theirs["neuronpedia_id"]


@pytest.mark.parametrize("release", PUBLISHED)
def test_logit_cells_rank_tokens_as_w_dec_at_w_u_of_from_pretrained(parity, release):
    theirs, _, ours, _ = parity
    for layer in LAYERS:
        logits = theirs[f"{_job(release, layer)}|logits"]
        for feature in range(logits.shape[0]):
            assert ours.cells[release, layer, feature] == logits[feature].topk(N_TOKENS).indices.tolist()


@pytest.mark.parametrize("name", LOCAL)
def test_local_folders_encode_and_decode_as_saelens_in_every_spelling(parity, name):
    theirs, _, _, (inputs, local) = parity
    sae = load_sae(str(Path(local[name]).parent / "sae_{layer}"), 1)
    feats = sae.encode(inputs[name])
    torch.testing.assert_close(feats, theirs[f"{name}|feats"], **TOL)
    torch.testing.assert_close(sae.decode(feats), theirs[f"{name}|recon"], **TOL)
