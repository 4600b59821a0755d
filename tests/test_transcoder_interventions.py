"""Transcoder features edited by splice's one mechanism, checked against plain hooks written here.

The reference never goes through `sparse_coding.splicing`: hooks on the
un-spliced model read h_mid before ``ln_2``, encode it by the layout's own
formula, and add ``(new - a) * W_dec[S -> T, i]`` to MLP T's output for every
layer T the feature writes (its own; every later one for a cross-layer
transcoder), one prompt at a time, without padding or a key/value cache.
"""

import pytest
import torch
from conftest import D_MODEL
from transcoder_files import D_TC, SPARSIFY_K, write_set

from sparse_coding.algorithms.generation import Sampling, left_padded
from sparse_coding.algorithms.response_curve import response_curve
from sparse_coding.algorithms.steering import read_under_edits, site_edits, steer, steering, watch_of
from sparse_coding.config.steering import CurveSpec, FeatureEdit
from sparse_coding.models.gpt2 import load_model
from sparse_coding.splicing.splice import SplicedModel
from sparse_coding.text.corpus import iter_batches
from sparse_coding.transcoders.loading import load_transcoders

N_LAYERS = 3
PROMPTS = [[0, 17, 42, 99, 7, 250, 3, 61], [0, 5, 61, 128, 9]]
STEPS = 5
KINDS = {"dunefsky": "tc", "sparsify_clt": "clt"}


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return load_model(str(tiny_model_dir), torch.device("cpu"), torch.float64)[0]


@pytest.fixture(scope="module", params=list(KINDS), ids=["per-layer", "cross-layer"])
def spliced_set(request, model, tmp_path_factory):
    """(spliced model with every transcoder layer, layout, the tensors written) of one layout."""
    layout = request.param
    template, weights = write_set(tmp_path_factory.mktemp(layout), layout, N_LAYERS)
    tcs = load_transcoders(template, n_layers=N_LAYERS, d_model=D_MODEL, dtype=torch.float64)
    return (
        SplicedModel(model, [], transcoders=tcs),
        layout,
        [{k: v.double() for k, v in w.items()} for w in weights],
    )


# ---------------------------------------------------------------- the reference


def reference_acts(layout: str, w: dict, h: torch.Tensor) -> torch.Tensor:
    """Activations (pos, d_tc) of h_mid (pos, d) by the layout's published formula."""
    if layout == "sparsify_clt":
        top = torch.relu(h @ w["W_enc"] + w["b_enc"]).topk(SPARSIFY_K, dim=-1)
        return torch.zeros(*h.shape[:-1], D_TC, dtype=h.dtype).scatter(-1, top.indices, top.values)
    x = (h - h.mean(-1, keepdim=True)) / (h.var(-1, keepdim=True, unbiased=False) + 1e-5).sqrt()
    return torch.relu(x @ w["W_enc"] + w["b_enc"])


def reference_mask(positions, n_tokens: int, prompt_len: int) -> torch.Tensor:
    index = torch.arange(n_tokens)
    if positions in ("all", "prompt", "generated"):
        return {"all": index >= 0, "prompt": index < prompt_len, "generated": index >= prompt_len}[positions]
    wanted = [p if p >= 0 else prompt_len + p for p in positions]
    return torch.tensor([i in wanted for i in range(n_tokens)])


def reference_forward(model, layout, weights, ids, edits, prompt_len, read=None, seen=None):
    """Logits (pos, vocab) of one prompt under `edits` by plain hooks; `read` gets edited activations,
    `seen` every layer's activations (pos, d_tc) as the edits leave its input."""
    h_mid, pending = {}, {}

    def on_mlp(layer):
        def hook(module, args, out):
            if seen is not None:
                seen[layer] = reference_acts(layout, weights[layer], h_mid[layer][0])
            for edit in edits:
                kind, source, feature = (
                    edit.node[: edit.node.index("_")],
                    *map(int, edit.node.split("_")[1].split(".")),
                )
                if source != layer:
                    continue
                old = reference_acts(layout, weights[layer], h_mid[layer][0])[:, feature]
                new = {"set": old * 0 + edit.value, "scale": old * edit.value, "add": old + edit.value}[
                    edit.kind
                ]
                change = torch.where(reference_mask(edit.positions, len(old), prompt_len), new - old, 0 * old)
                if read is not None:
                    read[edit.node] = old + change
                for target in range(layer, N_LAYERS) if kind == "clt" else [layer]:
                    row = weights[target]["W_dec"][(source * D_TC if kind == "clt" else 0) + feature]
                    pending[target] = pending.get(target, 0) + change[:, None] * row
            return out + pending.pop(layer, 0)

        return hook

    handles = []
    for layer, block in enumerate(model.transformer.h):
        handles.append(
            block.ln_2.register_forward_pre_hook(lambda m, a, layer=layer: h_mid.__setitem__(layer, a[0]))
        )
        handles.append(block.mlp.register_forward_hook(on_mlp(layer)))
    try:
        with torch.no_grad():
            return model(torch.tensor([ids]))[0]
    finally:
        for handle in handles:
            handle.remove()


def edits_of(layout: str, kind: str, value: float, positions) -> list[FeatureEdit]:
    prefix = KINDS[layout]
    return [
        FeatureEdit(f"{prefix}_0.3", kind, value, positions),
        FeatureEdit(f"{prefix}_1.5", kind, value, positions),
    ]


CASES = [("set", 0.0, "all"), ("scale", 2.5, (2, -1)), ("add", 1.5, "prompt"), ("set", 3.0, (1,))]


# ---------------------------------------------------------------- the tests


@pytest.mark.parametrize(("kind", "value", "positions"), CASES)
def test_an_edit_equals_the_plain_hook_reference(spliced_set, kind, value, positions):
    spliced, layout, weights = spliced_set
    edits = edits_of(layout, kind, value, positions)
    prompts = left_padded(PROMPTS, 0)
    continuation = torch.tensor([[11, 12, 13], [21, 22, 23]])
    ours, acts = read_under_edits(
        spliced, prompts, continuation, edits, watch_of([e.node for e in edits], "cpu")
    )
    for row, prompt in enumerate(PROMPTS):
        read = {}
        text = prompt + continuation[row].tolist()
        expected = reference_forward(spliced.model, layout, weights, text, edits, len(prompt), read)
        torch.testing.assert_close(ours[row], expected[len(prompt) - 1 : -1].float(), rtol=1e-5, atol=1e-6)
        for edit in edits:
            key = edit.node.rsplit(".", 1)[0]
            column = [e.node for e in edits if e.node.startswith(key + ".")].index(edit.node)
            got = acts[key][row, prompts.width - len(prompt) :, column]
            torch.testing.assert_close(got.double(), read[edit.node], rtol=1e-6, atol=1e-8)
    plain, _ = read_under_edits(spliced, prompts, continuation, [], {})
    assert (ours - plain).abs().max() > 1e-3  # the edits change something


def test_an_empty_or_no_op_edit_is_the_plain_model_bit_for_bit(spliced_set):
    spliced, layout, _ = spliced_set
    ids = torch.tensor([PROMPTS[0]])
    plain = spliced.model(ids)
    columns, lengths = torch.arange(ids.shape[1])[None], torch.tensor([ids.shape[1]])
    for edits in ([], edits_of(layout, "scale", 1.0, "all")):
        with spliced.intervene(steering(site_edits(edits, columns, lengths))):
            assert torch.equal(spliced.model(ids), plain)
    assert torch.equal(spliced.model(ids), plain)  # and nothing stays installed


@pytest.mark.parametrize("positions", ["generated", "all", (2, -1)])
def test_cached_generation_equals_recomputing_the_whole_text(spliced_set, positions):
    spliced, layout, weights = spliced_set
    edits = edits_of(layout, "add", 4.0, positions)
    result = steer(spliced, left_padded(PROMPTS, 0), edits, sampling=Sampling(max_new_tokens=STEPS))
    for row, prompt in enumerate(PROMPTS):
        ids = list(prompt)
        for _ in range(STEPS):
            ids.append(
                int(reference_forward(spliced.model, layout, weights, ids, edits, len(prompt))[-1].argmax())
            )
        assert result.steered_tokens[row].tolist() == ids[len(prompt) :]
    assert result.kl.max() > 1e-3  # the edit changes the next-token distributions


def test_a_cross_layer_feature_writes_every_later_mlp_output(model, tmp_path):
    template, _ = write_set(tmp_path, "sparsify_clt", N_LAYERS)
    tcs = load_transcoders(template, n_layers=N_LAYERS, d_model=D_MODEL, dtype=torch.float64)
    spliced = SplicedModel(model, [], transcoders=tcs)
    assert [(s.key, s.target) for s in spliced.sites] == [
        ("clt_0", 0),
        ("clt_0", 1),
        ("clt_1", 1),
        ("clt_0", 2),
        ("clt_1", 2),
        ("clt_2", 2),
    ]
    assert list(spliced.by_key) == ["clt_0", "clt_1", "clt_2"] and all(
        s.reads for s in spliced.by_key.values()
    )


def test_a_response_curve_reads_what_the_reference_reads(spliced_set, tiny_model_dir):
    from sparse_coding.text.tokenizer import load_tokenizer

    spliced, layout, weights = spliced_set
    prefix = KINDS[layout]
    spec = CurveSpec(
        f"{prefix}_1.5", "add", 0.0, 6.0, 4, watch=(f"{prefix}_2.1", f"{prefix}_0.7"), answer="x"
    )
    batch = next(
        iter_batches(
            ["a b c d e", "f g"],
            load_tokenizer(str(tiny_model_dir)),
            batch_size=2,
            max_len=16,
            prepend_bos=True,
        )
    )
    result = response_curve(spliced, batch, spec, answer_id=7)
    for row, (ids, mask) in enumerate(zip(batch.input_ids, batch.attention_mask, strict=True)):
        ids = ids[mask.bool()].tolist()
        for column, value in enumerate(spec.values):
            seen = {}
            edit = FeatureEdit(spec.node, "add", value, "all")
            logits = reference_forward(spliced.model, layout, weights, ids, [edit], len(ids), seen=seen)
            for node in spec.watch:
                layer, feature = map(int, node.split("_")[1].split("."))
                got = result.watched[node][row, column]
                assert float(got) == pytest.approx(float(seen[layer][-1, feature]), rel=1e-5, abs=1e-6)
            expected = float(torch.log_softmax(logits[-1], -1)[7])
            assert float(result.answer_logprob[row, column]) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert result.watched[spec.watch[0]].std() > 1e-4  # the sweep moves the downstream feature
