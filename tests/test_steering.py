"""Steering checked against plain hooks on the un-spliced model, written here.

The reference never goes through `sparse_coding.splicing`: a forward hook
at the site reads the SAE's own encode of the activation and adds
``(new - a) * scale * W_dec[i]`` at the chosen positions (scale = the
centred input's std for layer-norm SAEs, else 1), one prompt at a time,
without padding or a key/value cache, recomputing the whole text each step.
"""

import pytest
import torch
from conftest import hooks, tiny_config_dict

from sparse_coding.algorithms.generation import Sampling, left_padded
from sparse_coding.algorithms.response_curve import response_curve
from sparse_coding.algorithms.steering import read_under_edits, steer, watch_of
from sparse_coding.config import config_from_dict
from sparse_coding.config.steering import CurveSpec, FeatureEdit
from sparse_coding.pipelines.loading import load_spliced_model
from sparse_coding.text.batches import TokenBatch

PROMPTS = [[0, 17, 42, 99, 7, 250, 3, 61], [0, 5, 61, 128, 9]]
CONTINUATION = [[11, 12, 13, 14, 15], [21, 22, 23, 24, 25]]
SITES = [("resid", 1), ("attn", 1), ("mlp", 2), ("resid", 0)]
STEPS = 6
REL = 1e-5


@pytest.fixture(scope="module")
def spliced(tmp_path_factory, tiny_model_dir, sae_templates):
    config = config_from_dict(
        tiny_config_dict(tmp_path_factory.mktemp("steer"), tiny_model_dir, sae_templates)
    )
    model, _ = load_spliced_model(config, pairs=SITES)
    return model


# ---------------------------------------------------------------- the reference


def sae_terms(sae, x):
    """(activations (pos, d_sae), decoder scale (pos, 1)) of one site's activation x (1, pos, d)."""
    x_tl = x - x.mean(-1, keepdim=True) if sae.cfg.center_writing_weights else x
    acts = sae.encode(x_tl)[0]
    if sae.cfg.normalize_activations == "layer_norm":
        centred = x_tl - x_tl.mean(-1, keepdim=True)
        return acts, centred.std(-1, keepdim=True)[0]
    return acts, torch.ones_like(acts[:, :1])


def reference_mask(positions, n_tokens: int, prompt_len: int) -> torch.Tensor:
    index = torch.arange(n_tokens)
    if positions == "all":
        return torch.ones(n_tokens, dtype=torch.bool)
    if positions == "prompt":
        return index < prompt_len
    if positions == "generated":
        return index >= prompt_len
    wanted = [p if p >= 0 else prompt_len + p for p in positions]
    return torch.tensor([i in wanted for i in range(n_tokens)])


def reference_hooks(spliced, edits, prompt_len, read=None):
    """Plain hook functions: each site's edits, and (into `read`) the SAE activations at read sites."""
    by_site: dict[str, list[FeatureEdit]] = {}
    for edit in edits:
        by_site.setdefault(edit.site_key, []).append(edit)
    fns = {}
    for key in {*by_site, *(read or {})}:
        sae = spliced.by_key[key].sae

        def fn(x, key=key, sae=sae):
            acts, scale = sae_terms(sae, x)
            new_acts = acts.clone()
            for edit in by_site.get(key, []):
                mask = reference_mask(edit.positions, x.shape[1], prompt_len)
                a = acts[:, edit.feature]
                new = {"set": torch.full_like(a, edit.value), "scale": edit.value * a, "add": a + edit.value}
                change = torch.where(mask, new[edit.kind] - a, torch.zeros_like(a))
                x = x + (change[:, None] * scale * sae.W_dec[edit.feature])[None]
                new_acts[:, edit.feature] = torch.where(mask, new[edit.kind], a)
            if read is not None and key in read:
                read[key] = new_acts
            return x

        fns[key] = fn
    return fns


def reference_logits(spliced, prompt, continuation, edits, read=None):
    ids = prompt + continuation
    with hooks(spliced.model, reference_hooks(spliced, edits, len(prompt), read)), torch.no_grad():
        return spliced.model(torch.tensor([ids]))[0, len(prompt) - 1 : -1]


def reference_greedy(spliced, prompt, edits, steps):
    ids = list(prompt)
    for _ in range(steps):
        with hooks(spliced.model, reference_hooks(spliced, edits, len(prompt))), torch.no_grad():
            ids.append(int(spliced.model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt) :]


def firing_feature(spliced, key: str) -> int:
    """A feature of `key` that fires on the first prompt (the largest total activation)."""
    read = {key: None}
    with hooks(spliced.model, reference_hooks(spliced, [], len(PROMPTS[0]), read)), torch.no_grad():
        spliced.model(torch.tensor([PROMPTS[0]]))
    return int(read[key].sum(0).argmax())


def edits_of(spliced, kind: str, value: float, positions) -> list[FeatureEdit]:
    keys = ["resid_1", "attn_1", "mlp_2"]
    return [FeatureEdit(f"{key}.{firing_feature(spliced, key)}", kind, value, positions) for key in keys]


def assert_close_rel(actual, expected):
    scale = expected.abs().max().clamp(min=1e-6)
    assert (actual - expected).abs().max() <= REL * scale, float((actual - expected).abs().max() / scale)


# ---------------------------------------------------------------- the checks

CASES = [
    (kind, value, positions)
    for kind, value in (("set", 0.0), ("set", 3.0), ("scale", 2.5), ("add", -4.0))
    for positions in ("all", "prompt", "generated", (1, -1))
]


@pytest.mark.parametrize(("kind", "value", "positions"), CASES)
def test_edited_logits_equal_plain_hooks_on_the_unspliced_model(spliced, kind, value, positions):
    edits = edits_of(spliced, kind, value, positions)
    rows = left_padded(PROMPTS, pad_id=0)
    logits, _ = read_under_edits(spliced, rows, torch.tensor(CONTINUATION), edits, {})
    for row, (prompt, continuation) in enumerate(zip(PROMPTS, CONTINUATION, strict=True)):
        assert_close_rel(logits[row], reference_logits(spliced, prompt, continuation, edits))


@pytest.mark.parametrize(("kind", "value", "positions"), CASES[::3])
def test_steered_greedy_generation_equals_plain_hooks_token_for_token(spliced, kind, value, positions):
    edits = edits_of(spliced, kind, value, positions)
    result = steer(spliced, left_padded(PROMPTS, pad_id=0), edits, sampling=Sampling(STEPS))
    for row, prompt in enumerate(PROMPTS):
        assert result.steered_tokens[row].tolist() == reference_greedy(spliced, prompt, edits, STEPS)
        assert result.clean_tokens[row].tolist() == reference_greedy(spliced, prompt, [], STEPS)


def test_recorded_activations_equal_the_saes_encode_under_plain_hooks(spliced):
    edits = edits_of(spliced, "set", 2.0, "prompt")
    watch = [*(edit.node for edit in edits), "resid_0.3", "mlp_2.5"]
    rows = left_padded(PROMPTS, pad_id=0)
    _, record = read_under_edits(spliced, rows, torch.tensor(CONTINUATION), edits, watch_of(watch, "cpu"))
    for row, (prompt, continuation) in enumerate(zip(PROMPTS, CONTINUATION, strict=True)):
        read = dict.fromkeys(record)
        reference_logits(spliced, prompt, continuation, edits, read)
        pad = rows.width - len(prompt)
        for key, features in watch_of(watch, "cpu").items():
            assert_close_rel(record[key][row, pad:], read[key][:, features])


def test_no_intervention_and_no_op_interventions_are_the_plain_model_bit_for_bit(spliced):
    prompt = left_padded(PROMPTS[:1], pad_id=0)
    plain = spliced.model(torch.tensor([PROMPTS[0] + CONTINUATION[0]]))[:, len(PROMPTS[0]) - 1 : -1]
    feature = firing_feature(spliced, "attn_1")
    no_ops = [FeatureEdit(f"attn_1.{feature}", "scale", 1.0), FeatureEdit("mlp_2.4", "add", 0.0)]
    for edits in ([], no_ops):
        logits, _ = read_under_edits(spliced, prompt, torch.tensor(CONTINUATION[:1]), edits, {})
        assert torch.equal(logits, plain.float())
        result = steer(spliced, left_padded(PROMPTS, 0), edits, sampling=Sampling(STEPS, temperature=1.0))
        assert torch.equal(result.steered_tokens, result.clean_tokens)
        assert torch.equal(result.kl, torch.zeros_like(result.kl))


def test_rose_and_fell_are_the_largest_probability_changes_on_the_clean_text(spliced):
    edits = edits_of(spliced, "add", 6.0, "all")
    result = steer(spliced, left_padded(PROMPTS, 0), edits, sampling=Sampling(STEPS), top_tokens=3)
    for row, prompt in enumerate(PROMPTS):
        clean = result.clean_tokens[row].tolist()
        p_clean = reference_logits(spliced, prompt, clean, []).softmax(-1)
        p_steered = reference_logits(spliced, prompt, clean, edits).softmax(-1)
        change = p_steered - p_clean
        kl = (p_clean * (p_clean.log() - p_steered.log())).sum(-1)
        torch.testing.assert_close(result.kl[row], kl, rtol=1e-4, atol=1e-6)
        assert torch.equal(result.rose.ids[row], change.topk(3).indices)
        assert torch.equal(result.fell.ids[row], (-change).topk(3).indices)


def reference_curve(spliced, prompt, spec, answer_id):
    watched, answer = {node: [] for node in spec.watch}, []
    for value in spec.values:
        read = {FeatureEdit(node, "add", 0).site_key: None for node in spec.watch}
        with hooks(spliced.model, reference_hooks(spliced, [spec.edit(value)], len(prompt), read)):
            with torch.no_grad():
                last = spliced.model(torch.tensor([prompt]))[0, -1]
        answer.append(float(last.log_softmax(-1)[answer_id]))
        for node in spec.watch:
            edit = FeatureEdit(node, "add", 0)
            watched[node].append(float(read[edit.site_key][-1, edit.feature]))
    return watched, answer


@pytest.mark.parametrize("kind", ["scale", "set", "add"])
def test_a_response_curve_equals_one_plain_hooked_forward_per_value(spliced, kind):
    node = f"resid_1.{firing_feature(spliced, 'resid_1')}"
    watch = (
        f"mlp_2.{firing_feature(spliced, 'mlp_2')}",
        "attn_1.2",
        f"resid_0.{firing_feature(spliced, 'resid_0')}",
        node,  # the swept feature itself: read at its new value
    )
    spec = CurveSpec(node, kind, -1.0, 3.0, 7, watch, "x")
    ids = torch.zeros(len(PROMPTS), max(map(len, PROMPTS)), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(PROMPTS):
        ids[row, : len(prompt)], mask[row, : len(prompt)] = torch.tensor(prompt), 1
    result = response_curve(spliced, TokenBatch(ids, mask, 0), spec, answer_id=17)
    for row, prompt in enumerate(PROMPTS):
        watched, answer = reference_curve(spliced, prompt, spec, 17)
        torch.testing.assert_close(result.answer_logprob[row], torch.tensor(answer), rtol=REL, atol=REL)
        for node in watch:
            torch.testing.assert_close(
                result.watched[node][row], torch.tensor(watched[node]), rtol=REL, atol=REL
            )
