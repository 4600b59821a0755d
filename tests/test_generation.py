"""Generation with the key/value cache, checked against recomputing the whole sequence each step.

References here call the plain model's `forward` on each prompt alone
(unpadded, no cache) and pick tokens with an argmax or a NumPy nucleus sampler
written in this file.
"""

import numpy as np
import pytest
import torch

from sparse_coding.algorithms.generation import Sampling, generate, left_padded, next_tokens
from sparse_coding.models.transformer import KVCache
from sparse_coding.pipelines.loading import load_spliced_model

PROMPTS = [[0, 17, 42, 99, 7, 250, 3], [0, 5, 61], [0, 128, 9, 33, 2]]
REL = 1e-5


@pytest.fixture(scope="module")
def spliced(tmp_path_factory, tiny_model_dir, sae_templates):
    from conftest import tiny_config_dict

    from sparse_coding.config import config_from_dict

    config = config_from_dict(tiny_config_dict(tmp_path_factory.mktemp("gen"), tiny_model_dir, sae_templates))
    model, _ = load_spliced_model(config, pairs=[])
    return model


def greedy_by_recomputation(model, prompt: list[int], steps: int) -> tuple[list[int], torch.Tensor]:
    """Each step a full forward of the prompt and the tokens so far; argmax of the last logits."""
    ids, logits = list(prompt), []
    for _ in range(steps):
        last = model(torch.tensor([ids]))[0, -1].float()
        logits.append(last)
        ids.append(int(last.argmax()))
    return ids[len(prompt) :], torch.stack(logits)


def assert_close_rel(actual, expected, rel=REL):
    scale = expected.abs().max()
    assert (actual - expected).abs().max() <= rel * scale, float((actual - expected).abs().max() / scale)


def test_cached_generation_of_left_padded_prompts_equals_recomputing_each_prompt_alone(spliced):
    steps = 12
    result = generate(spliced, left_padded(PROMPTS, pad_id=0), Sampling(steps), keep_logits=True)
    for row, prompt in enumerate(PROMPTS):
        tokens, logits = greedy_by_recomputation(spliced.model, prompt, steps)
        assert result.tokens[row].tolist() == tokens
        assert_close_rel(result.logits[row], logits)


def test_forward_cached_in_chunks_equals_one_forward(spliced):
    model = spliced.model
    ids = torch.tensor([PROMPTS[0] + [11, 12, 13]])
    mask = torch.ones_like(ids)
    cache = KVCache.for_model(model, 1, ids.shape[1])
    chunks = [model.forward_cached(ids[:, a:b], mask[:, :b], cache) for a, b in ((0, 4), (4, 5), (5, 10))]
    assert cache.length == 10
    assert_close_rel(model.unembed(torch.cat(chunks, 1)), model(ids))


def test_forward_cached_without_a_cache_on_unpadded_ids_is_the_forward_bit_for_bit(spliced):
    ids = torch.tensor(PROMPTS[:1])
    hidden = spliced.model.forward_cached(ids, torch.ones_like(ids))
    assert torch.equal(spliced.model.unembed(hidden), spliced.model(ids))


def nucleus_reference(logits: np.ndarray, temperature: float, top_p: float) -> np.ndarray:
    """The distribution nucleus sampling draws from: softmax(logits / T), kept to the most likely
    tokens until their mass reaches top_p, renormalised."""
    p = np.exp((logits - logits.max()) / temperature)
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    kept, mass = np.zeros_like(p), 0.0
    for token in order:
        kept[token] = p[token]
        mass += p[token]
        if mass >= top_p:
            break
    return kept / kept.sum()


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.7, 0.9), (2.0, 0.5)])
def test_sampling_draws_from_the_tempered_nucleus(temperature, top_p):
    logits = torch.tensor([2.0, 1.5, 1.0, 0.2, -0.5, -3.0])
    n = 40_000
    uniforms = torch.rand(n, generator=torch.Generator().manual_seed(1))
    drawn = next_tokens(logits.expand(n, -1), Sampling(1, temperature, top_p), uniforms)
    frequencies = np.bincount(drawn.numpy(), minlength=len(logits)) / n
    expected = nucleus_reference(logits.numpy().astype(np.float64), temperature, top_p)
    assert np.abs(frequencies - expected).max() < 0.01, (frequencies, expected)


def test_a_tiny_top_p_samples_the_argmax_and_greedy_is_the_default(spliced):
    prompts = left_padded(PROMPTS, pad_id=0)
    greedy = generate(spliced, prompts, Sampling(6)).tokens
    assert Sampling().greedy
    assert torch.equal(generate(spliced, prompts, Sampling(6, temperature=1.0, top_p=1e-9)).tokens, greedy)


def test_sampling_is_seeded_and_differs_between_seeds(spliced):
    prompts = left_padded(PROMPTS, pad_id=0).repeat(4)
    first = generate(spliced, prompts, Sampling(10, temperature=1.5, seed=3)).tokens
    assert torch.equal(generate(spliced, prompts, Sampling(10, temperature=1.5, seed=3)).tokens, first)
    assert not torch.equal(generate(spliced, prompts, Sampling(10, temperature=1.5, seed=4)).tokens, first)
