"""Transcoder feature contexts equal a brute-force reference: every feature encoded everywhere by formula."""

import torch
from conftest import CORPUS, D_MODEL
from transcoder_files import write_set

from sparse_coding.labels.transcoder_contexts import collect_transcoder_contexts
from sparse_coding.models.gpt2 import load_model
from sparse_coding.text.corpus import iter_batches
from sparse_coding.transcoders.loading import load_transcoders


def test_contexts_are_each_features_highest_sequence_peaks(tmp_path, tiny_model_dir):
    model, tokenizer = load_model(str(tiny_model_dir), torch.device("cpu"), torch.float64)
    template, weights = write_set(tmp_path, "dunefsky", 3)
    tcs = load_transcoders(template, n_layers=3, d_model=D_MODEL, dtype=torch.float64)
    asked = {1: [0, 5, 17], 2: [3]}
    batches = iter_batches(CORPUS, tokenizer, batch_size=3, max_len=24, prepend_bos=True, device="cpu")
    cache = collect_transcoder_contexts(model, tcs, tokenizer, batches, features=asked, per_feature=2, view=2)
    # Reference: each sequence alone, ln_2's input by hook, the Dunefsky formula, per-sequence maxima.
    for layer, features in asked.items():
        w = {k: v.double() for k, v in weights[layer].items()}
        peaks = []  # (feature, activation, sequence index, peak token)
        for index, text in enumerate(CORPUS):
            ids = [tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"]][:24]
            seen = {}
            handle = model.transformer.h[layer].ln_2.register_forward_pre_hook(
                lambda m, a: seen.__setitem__("h", a[0][0])
            )
            model(torch.tensor([ids]))
            handle.remove()
            h = seen["h"]
            x = (h - h.mean(-1, keepdim=True)) / (h.var(-1, keepdim=True, unbiased=False) + 1e-5).sqrt()
            acts = torch.relu(x @ w["W_enc"] + w["b_enc"])[:, features]
            for j, feature in enumerate(features):
                value, pos = acts[:, j].max(0)
                peaks.append((feature, float(value), index, tokenizer.decode([ids[int(pos)]])))
        for feature in features:
            ranked = [p for p in sorted(peaks, key=lambda p: -p[1]) if p[0] == feature and p[1] > 0][:2]
            got = cache.contexts(f"tc_{layer}", feature, 2)
            assert len(got) == len(ranked) > 0
            for context, (_, value, _, token) in zip(got, ranked, strict=True):
                peak = max(context.activations)  # kept in float32
                assert abs(peak - value) < 1e-6 * value
                assert context.tokens[context.activations.index(peak)] == token
