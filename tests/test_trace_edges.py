"""The replacement model reproduces GPT-2, and every edge is the replacement model's exact direct effect.

The reference below is written here in plain torch from the Hugging Face
model's weights and each layout's published formula: a clean pass recording
layer-norm scales and attention patterns, a frozen forward, and its full
Jacobian (torch.func.jacrev) from token embeddings and MLP outputs to every
feature's pre-activation and the logits. Edges are that Jacobian contracted
with each source's vector, in float64.
"""

import pytest
import torch
from conftest import D_MODEL
from transcoder_files import D_TC, write_set
from transformers import GPT2LMHeadModel

from sparse_coding.algorithms.trace_graph import TraceOptions, trace_graph
from sparse_coding.models.gpt2 import load_model
from sparse_coding.transcoders.loading import load_transcoders
from sparse_coding.transcoders.replacement import decode_features, frozen_forward, replace

N_LAYERS = 3
PROMPT = "When Mary and John went"
CASES = {"per-layer with skip": "sparsify", "per-layer (Dunefsky)": "dunefsky", "cross-layer": "sparsify_clt"}


@pytest.fixture(scope="module")
def model_and_ids(tiny_model_dir):
    model, tokenizer = load_model(str(tiny_model_dir), torch.device("cpu"), torch.float64)
    ids = [tokenizer.bos_token_id, *tokenizer(PROMPT, add_special_tokens=False)["input_ids"]]
    hf = GPT2LMHeadModel.from_pretrained(tiny_model_dir).double().eval()
    return model, hf, torch.tensor(ids), tokenizer.bos_token_id


# --- the reference: plain torch on the Hugging Face weights ----------------------------------


class Reference:
    """GPT-2 with frozen layer norms and attention, MLP outputs as inputs; transcoders by formula."""

    def __init__(self, hf: GPT2LMHeadModel, ids: torch.Tensor, layout: str, weights: list[dict]):
        self.sd = {k: v.detach() for k, v in hf.state_dict().items()}
        self.layout, self.w = layout, [{k: v.double() for k, v in w.items()} for w in weights]
        self.ids, self.heads = ids, hf.config.n_head
        self.scales, self.patterns = {}, {}
        with torch.no_grad():
            final, self.inputs, self.outs = self._run(record=True)
        self.logits = final @ self.sd["lm_head.weight"].T

    def p(self, name: str) -> torch.Tensor:
        return self.sd[f"transformer.{name}"]

    def _ln(self, x, name, key, record):
        if record:
            self.scales[key] = (x.var(-1, keepdim=True, unbiased=False) + 1e-5).sqrt()
        return (x - x.mean(-1, keepdim=True)) / self.scales[key] * self.p(f"{name}.weight") + self.p(
            f"{name}.bias"
        )

    def _attention(self, layer, x, record):
        qkv = x @ self.p(f"h.{layer}.attn.c_attn.weight") + self.p(f"h.{layer}.attn.c_attn.bias")
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(0, 1) for t in qkv.chunk(3, -1))
        if record:
            scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
            mask = torch.ones(len(x), len(x), dtype=torch.bool).tril()
            self.patterns[layer] = scores.masked_fill(~mask, -torch.inf).softmax(-1)
        z = (self.patterns[layer] @ v).transpose(0, 1).flatten(1)
        return z @ self.p(f"h.{layer}.attn.c_proj.weight") + self.p(f"h.{layer}.attn.c_proj.bias")

    def _run(self, record, embeds=None, mlp=None):
        """Clean pass (record: real MLPs, scales and patterns kept) or frozen pass (MLP outputs given)."""
        n = len(self.ids)
        h = (self.p("wte.weight")[self.ids] if embeds is None else embeds) + self.p("wpe.weight")[:n]
        inputs, outs = [], []
        for layer in range(N_LAYERS):
            h = h + self._attention(layer, self._ln(h, f"h.{layer}.ln_1", ("1", layer), record), record)
            ln2 = self._ln(h, f"h.{layer}.ln_2", ("2", layer), record)
            normalized = (h - h.mean(-1, keepdim=True)) / self.scales[("2", layer)]
            inputs.append(h if self.layout.startswith("sparsify") else normalized)
            w = self.w[layer]
            skip = inputs[-1] @ w["W_skip"].T if "W_skip" in w else 0
            if record:
                fc = self.p(f"h.{layer}.mlp.c_fc.weight"), self.p(f"h.{layer}.mlp.c_fc.bias")
                proj = self.p(f"h.{layer}.mlp.c_proj.weight"), self.p(f"h.{layer}.mlp.c_proj.bias")
                hidden = torch.nn.functional.gelu(ln2 @ fc[0] + fc[1], approximate="tanh")
                outs.append(hidden @ proj[0] + proj[1])
            h = h + (outs[-1] if record else mlp[layer] + skip)
        return self._ln(h, "ln_f", "f", record), inputs, outs

    def pre_activations(self, layer, x):
        return x @ self.w[layer]["W_enc"] + self.w[layer]["b_enc"]  # both layouts: no input bias

    def acts(self, layer, x):
        pre = self.pre_activations(layer, x)
        if self.layout == "dunefsky":
            return torch.relu(pre)
        top = torch.relu(pre).topk(8, dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, top.values)

    def targets(self, embeds, mlp, logit_directions):
        """Every feature's pre-activation (layer, pos, d_tc) and the logit inputs at the last position."""
        final, inputs, _ = self._run(record=False, embeds=embeds, mlp=mlp)
        pres = torch.stack([self.pre_activations(layer, inputs[layer]) for layer in range(N_LAYERS)])
        return pres, final[-1] @ logit_directions.T

    def decoder(self, source, target, index):
        if self.layout == "sparsify_clt":
            return self.w[target]["W_dec"][source * D_TC + index]
        return self.w[target]["W_dec"][index]


# --- the tests -----------------------------------------------------------------------------


def build(tmp_path, model_and_ids, layout, **options):
    model, hf, ids, bos = model_and_ids
    template, weights = write_set(tmp_path, layout, N_LAYERS, skip=layout == "sparsify")
    tcs = load_transcoders(template, n_layers=N_LAYERS, d_model=D_MODEL, dtype=torch.float64)
    graph = trace_graph(model, tcs, ids, bos_token_id=bos, options=TraceOptions(batch_size=7, **options))
    return graph, tcs, Reference(hf, ids, layout, weights)


@pytest.mark.parametrize("layout", CASES.values(), ids=CASES.keys())
def test_the_replacement_model_with_errors_reproduces_the_logits(tmp_path, model_and_ids, layout):
    model, hf, ids, bos = model_and_ids
    template, _ = write_set(tmp_path, layout, N_LAYERS, skip=layout == "sparsify")
    tcs = load_transcoders(template, n_layers=N_LAYERS, d_model=D_MODEL, dtype=torch.float64)
    replacement = replace(model, tcs, ids, bos_token_id=bos)
    expected = hf(ids[None]).logits[0]
    torch.testing.assert_close(replacement.logits, expected, rtol=1e-10, atol=1e-10)
    # The frozen forward's MLP inputs rebuilt from their parts: constant + decoded features + error.
    decoded = decode_features(tcs, replacement.features, replacement.errors.shape)
    leaves = replacement.constant + decoded.to(replacement.constant.dtype) + replacement.errors
    final = frozen_forward(model, tcs, replacement.frozen, replacement.embeds, leaves)
    torch.testing.assert_close(model.lm_head(final), expected, rtol=1e-10, atol=1e-10)
    assert replacement.errors.abs().max() > 0.1  # random transcoders: the errors carry real weight


@pytest.mark.parametrize("layout", CASES.values(), ids=CASES.keys())
def test_every_edge_is_the_jacobian_of_the_frozen_replacement_model(tmp_path, model_and_ids, layout):
    graph, tcs, ref = build(tmp_path, model_and_ids, layout)
    rep, f, counts = graph.replacement, graph.features, graph.counts
    # The same clean run, features and errors as the reference computes them.
    torch.testing.assert_close(ref.logits, rep.logits, rtol=1e-10, atol=1e-10)
    ref_acts = torch.stack([ref.acts(layer, ref.inputs[layer]) for layer in range(N_LAYERS)])
    ref_acts[:, 0] = 0  # BOS: no feature nodes
    expected = ref_acts.nonzero(as_tuple=True)
    assert torch.equal(torch.stack([f.layer, f.pos, f.index]), torch.stack(expected))
    torch.testing.assert_close(f.activation, ref_acts[expected])
    # Sources' vectors: features write a * W_dec rows to their target MLP outputs; errors; embeddings.
    skips = [ref.inputs[t] @ ref.w[t]["W_skip"].T if "W_skip" in ref.w[t] else 0 * ref.inputs[t] for t in
             range(N_LAYERS)]  # fmt: skip
    mlp = torch.stack(ref.outs) - torch.stack(skips)
    embeds = ref.p("wte.weight")[ref.ids]
    jac_pre, jac_logit = torch.func.jacrev(ref.targets, argnums=(0, 1))(embeds, mlp, graph.logits.directions)
    # Rows: the features' pre-activations, then the logits; each a Jacobian (pos, d) and (layer, pos, d).
    d_embeds = torch.cat([jac_pre[0][f.layer, f.pos, f.index], jac_logit[0]])
    d_mlp = torch.cat([jac_pre[1][f.layer, f.pos, f.index], jac_logit[1]])
    expected = torch.zeros(len(d_mlp), counts.total, dtype=torch.float64)
    for source in range(N_LAYERS):
        chosen = torch.nonzero(f.layer == source).flatten()
        for target in range(source, N_LAYERS) if layout == "sparsify_clt" else [source]:
            rows = ref.decoder(source, target, f.index[chosen]) * f.activation[chosen, None]
            expected[:, chosen] += (d_mlp[:, target, f.pos[chosen]] * rows).sum(-1)
    expected[:, counts.error_slice] = (d_mlp * rep.errors).sum(-1).flatten(1)  # layer-major
    expected[:, counts.token_slice] = (d_embeds * embeds).sum(-1)
    adjacency = graph.adjacency
    rows = torch.cat(
        [torch.arange(counts.features), torch.arange(counts.total - counts.logits, counts.total)]
    )
    torch.testing.assert_close(adjacency[rows], expected, rtol=1e-6, atol=1e-9)
    assert adjacency[counts.features : counts.total - counts.logits].abs().max() == 0  # no inputs to those
    assert adjacency[: counts.features, : counts.features].abs().max() > 1e-3  # feature edges exist
    assert len(ref.ids) == counts.tokens


def test_capped_feature_nodes_keep_the_most_influential_and_their_exact_rows(tmp_path, model_and_ids):
    full, _, _ = build(tmp_path / "full", model_and_ids, "dunefsky")
    capped, _, _ = build(tmp_path / "capped", model_and_ids, "dunefsky", max_feature_nodes=20)
    kept = capped.counts.features
    assert kept == 20 < full.counts.features
    index = {key: i for i, key in enumerate(zip(*(c.tolist() for c in full.features[:3]), strict=True))}
    chosen = torch.tensor([index[k] for k in zip(*(c.tolist() for c in capped.features[:3]), strict=True)])
    rest = torch.arange(full.counts.features, full.counts.total)
    columns = torch.cat([chosen, rest])
    torch.testing.assert_close(capped.adjacency[:kept], full.adjacency[chosen][:, columns])
    torch.testing.assert_close(
        capped.adjacency[-capped.counts.logits :], full.adjacency[-full.counts.logits :][:, columns]
    )
