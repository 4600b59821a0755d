"""ablation_graph: batched zero-ablation edges against a plain one-at-a-time reference."""

import json

import pytest
import torch

from sparse_coding.algorithms.ablation_graph import ablation_graph, drawn_candidates
from sparse_coding.algorithms.ablation_rows import (
    LARGEST_KEPT,
    LayerEffects,
    largest_values,
    record_edges,
    record_logits,
)
from sparse_coding.errors import ConfigError, ExactlyZeroEffectError
from sparse_coding.graphs.graph_files import update_graph_files
from sparse_coding.models.saes import load_sae
from sparse_coding.nodes import feature_id, parse_node_id
from sparse_coding.pipelines.loading import load_spliced_model
from sparse_coding.pipelines.pipe import interpreted_batch, pipe_graph, resid_pins

N_LAYERS = 3


@pytest.fixture(scope="module")
def ln_post_template(tmp_path_factory):
    """TopK, layer-normalised SAEs on hook_resid_post: exercises the scale and the post hook."""
    from conftest import write_sae_folder

    root = tmp_path_factory.mktemp("ln_post")
    for layer in range(N_LAYERS):
        write_sae_folder(
            root / f"post_{layer}",
            hook_name=f"blocks.{layer}.hook_resid_post",
            activation="topk",
            layer_norm=True,
            seed=7 + layer,
        )
    return str(root / "post_{layer}")


def _run(config, **options):
    spliced, tokenizer = load_spliced_model(config, sites=("resid",))
    batch = interpreted_batch(config, tokenizer, spliced.device)
    defaults = {"layers": list(config.layer_range(spliced.n_layers)), "tokenizer": tokenizer}
    return ablation_graph(spliced, batch, **(defaults | options)), spliced, batch


def _stream_hook(model, hook: str, layer: int, edit):
    """A plain hook on the HF block that reads or edits the residual stream at a site."""
    block = model.transformer.h[layer]
    if hook == "hook_resid_pre":
        return block.register_forward_pre_hook(lambda m, args: (edit(args[0]), *args[1:]))

    def post(m, args, out):
        if isinstance(out, tuple):
            return (edit(out[0]), *out[1:])
        return edit(out)

    return block.register_forward_hook(post)


def _encode(sae, x):
    """The SAE's own encode on the (centred, if its cfg says so) input."""
    x = x - x.mean(-1, keepdim=True) if sae.cfg.center_writing_weights else x
    return sae.encode(x)


def _reference(model, saes, ids, layer, feature):
    """Brute force: zero one feature at every position, error kept; last-position clean - ablated."""
    sae, next_sae = saes[layer], saes.get(layer + 1)
    hook = sae.hook_name.rsplit(".", 1)[1]

    def forward(edit):
        seen = {}
        handles = [_stream_hook(model, hook, layer, edit)]
        if next_sae is not None:
            handles.append(_stream_hook(model, hook, layer + 1, lambda x: seen.setdefault("next", x)))
        with torch.no_grad():
            logits = model(ids)[0, -1]
        for handle in handles:
            handle.remove()
        return (None if next_sae is None else _encode(next_sae, seen["next"])[0, -1]), logits.log_softmax(-1)

    def ablate(x):
        acts = _encode(sae, x)[..., feature : feature + 1]  # (1, pos, 1)
        centred = x - x.mean(-1, keepdim=True)
        scale = centred.std(-1, keepdim=True) if sae.cfg.normalize_activations == "layer_norm" else 1.0
        return x - acts * scale * sae.W_dec[feature]

    clean_feats, clean_logp = forward(lambda x: x)
    feats, logp = forward(ablate)
    return (None if next_sae is None else clean_feats - feats), clean_logp - logp


def _saes(config, spliced):
    source = config.RESID_SAES
    return {layer: load_sae(source, layer) for layer in range(N_LAYERS)}


def _sequences(batch):
    return [ids[mask.bool()][None] for ids, mask in zip(batch.input_ids, batch.attention_mask, strict=True)]


def _check_edges_against_reference(result, spliced, saes, sequences, tokenizer):
    for layer, candidates in result.candidates.items():
        for feature in candidates:
            refs = [_reference(spliced.model, saes, ids, layer, feature) for ids in sequences]
            logp = torch.stack([r[1] for r in refs]).mean(0)
            node = result.graph.nodes.get(feature_id("resid", layer, feature))
            if node is not None and node.logits_up:
                top = logp.topk(len(node.logits_up))
                assert [v for _, v in node.logits_up] == pytest.approx(top.values.tolist(), abs=1e-4)
            if node is not None and node.logits_down:
                bottom = logp.topk(len(node.logits_down), largest=False)
                assert [v for _, v in node.logits_down] == pytest.approx(bottom.values.tolist(), abs=1e-4)
            if layer + 1 not in result.candidates:
                continue
            effect = torch.stack([r[0] for r in refs]).mean(0)
            source = feature_id("resid", layer, feature)
            got = {
                parse_node_id(t).feature: e.effect for (s, t), e in result.graph.edges.items() if s == source
            }
            for target, value in got.items():
                assert abs(value - float(effect[target])) <= 1e-5
            missing = (effect.abs() > 1e-5).nonzero()[:, 0].tolist()
            assert set(missing) <= set(got), f"{source}: reference effects without an edge"


@pytest.mark.parametrize("variant", ["relu_resid_pre_centred", "topk_layer_norm_resid_post"])
def test_every_edge_equals_a_plain_one_feature_ablation(make_config, ln_post_template, variant):
    overrides = {"THRESHOLD_EXP": None}
    if variant == "topk_layer_norm_resid_post":
        overrides["RESID_SAES"] = ln_post_template
    config = make_config(**overrides)
    result, spliced, batch = _run(config)
    assert result.graph.edges
    assert set(result.candidates) == {0, 1, 2}
    saes = _saes(config, spliced)
    _check_edges_against_reference(result, spliced, saes, _sequences(batch), None)


def test_several_sequences_average_the_last_position_effect(make_config, tmp_path):
    data = tmp_path / "d.txt"
    data.write_text(
        "The quick brown fox jumps\nCopyright (C) 2024\nWhen Mary and John went to the store, John gave\n"
    )
    config = make_config(
        THRESHOLD_EXP=None, DATASET=str(data), NUM_SEQUENCES_INTERPED=3, ACTS_LAYERS_SLICE="0:2"
    )
    result, spliced, batch = _run(config, max_rows=7)
    assert len(batch.input_ids) == 3 and (batch.attention_mask == 0).any()  # padded
    saes = _saes(config, spliced)
    _check_edges_against_reference(result, spliced, saes, _sequences(batch), None)


def test_thinning_keeps_a_seeded_fraction_of_the_active_features(make_config):
    config = make_config(THRESHOLD_EXP=None, ACTS_LAYERS_SLICE="0:2")
    full = _run(config)[0].candidates[0]
    half_a = _run(config, thinning=0.5, seed=1)[0].candidates[0]
    half_b = _run(config, thinning=0.5, seed=1)[0].candidates[0]
    other = _run(config, thinning=0.5, seed=2)[0].candidates[0]
    assert half_a == half_b and set(half_a) <= set(full)
    assert len(half_a) == round(0.5 * len(full)) and other != half_a


def test_the_next_layer_ablates_exactly_the_features_that_received_an_edge(make_config):
    result = _run(make_config(THRESHOLD_EXP=-3.0))[0]
    for layer in (1, 2):
        targets = {
            parse_node_id(t).feature for (_, t) in result.graph.edges if parse_node_id(t).layer == layer
        }
        assert set(result.candidates[layer]) == targets


def test_a_pinned_feature_replaces_the_first_layer_and_joins_the_next(make_config):
    config = make_config(THRESHOLD_EXP=-2.0)
    free = _run(config)[0]
    spare = next(f for f in free.candidates[0] if f not in free.candidates.get(1, []))
    result = _run(config, pinned={0: free.candidates[0][0], 1: spare})[0]
    assert result.candidates[0] == [free.candidates[0][0]]
    assert spare in result.candidates[1]
    assert feature_id("resid", 1, spare) in result.graph.nodes


@pytest.mark.parametrize(
    ("pins", "message"),
    [
        ({"0": 64}, r"feature 64 at layer 0.*0\.\.63"),
        ({"5": 1}, r"layer 5, outside"),
        ({"attn_1": 2}, "resid"),
    ],
)
def test_invalid_pins_are_config_errors(make_config, pins, message):
    config = make_config(DIMS_PINNED=pins)
    with pytest.raises(ConfigError, match=message):
        _run(config, pinned=resid_pins(config))


def test_the_threshold_keeps_only_larger_effects(make_config):
    config = make_config(THRESHOLD_EXP=None)
    everything = _run(config)[0].graph.edges
    kept = _run(config, threshold_exp=-1.0)[0].graph.edges
    assert kept and all(abs(e.effect) > 0.5 for e in kept.values())
    first = {
        k: e.effect for k, e in everything.items() if k[0].startswith("resid_0.") and abs(e.effect) > 0.5
    }
    # The thresholded run reads its first layer's effects through the read-position-only path.
    assert {k: e.effect for k, e in kept.items() if k[0].startswith("resid_0.")} == pytest.approx(
        first, abs=1e-5
    )


def test_under_a_threshold_drawn_first_layer_nodes_keep_exact_edges_and_logit_cells(make_config, tmp_path):
    """Undrawn first-layer candidates skip the logit pass, and the feature pass computes only the
    read position; the drawn ones' edges and cells are still exact."""
    data = tmp_path / "d.txt"
    data.write_text("The quick brown fox jumps\nCopyright (C) 2024\nWhen Mary and John went to the store\n")
    config = make_config(DATASET=str(data), NUM_SEQUENCES_INTERPED=3)
    result, spliced, batch = _run(config, threshold_exp=-1.0)
    drawn = [f for f in result.candidates[0] if feature_id("resid", 0, f) in result.graph.nodes]
    assert 0 < len(drawn) < len(result.candidates[0])
    saes = _saes(config, spliced)
    for feature in drawn:
        refs = [_reference(spliced.model, saes, ids, 0, feature) for ids in _sequences(batch)]
        logp = torch.stack([r[1] for r in refs]).mean(0)
        node = result.graph.nodes[feature_id("resid", 0, feature)]
        effect = torch.stack([r[0] for r in refs]).mean(0)
        source = feature_id("resid", 0, feature)
        got = {parse_node_id(t).feature: e.effect for (s, t), e in result.graph.edges.items() if s == source}
        assert set(got) == set((effect.abs() > 0.5).nonzero()[:, 0].tolist())
        assert list(got.values()) == pytest.approx(effect[list(got)].tolist(), abs=1e-5)
        assert node.logits_up and node.logits_down
        top, bottom = logp.topk(len(node.logits_up)), logp.topk(len(node.logits_down), largest=False)
        assert [v for _, v in node.logits_up] == pytest.approx(top.values.tolist(), abs=1e-4)
        assert [v for _, v in node.logits_down] == pytest.approx(bottom.values.tolist(), abs=1e-4)


def test_a_pinned_feature_that_never_fires_raises_naming_layer_and_pin(make_config):
    config = make_config(THRESHOLD_EXP=None)
    spliced, tokenizer = load_spliced_model(config, sites=("resid",))
    batch = interpreted_batch(config, tokenizer, spliced.device)
    spliced.by_key["resid_1"].sae.b_enc.data[5] = -1e4  # feature 5 can never fire
    with pytest.raises(ExactlyZeroEffectError, match=r"resid_1\.5.*DIMS_PINNED"):
        ablation_graph(spliced, batch, tokenizer=tokenizer, layers=[1, 2], pinned={1: 5})


def test_two_runs_merge_into_the_same_graph_files(make_config):
    out = {}
    for prompt in ("When Mary and John went to the store, John gave a drink to", "Copyright (C) 2024 the"):
        config = make_config(PROMPT=prompt, THRESHOLD_EXP=-1.0)
        spliced, tokenizer = load_spliced_model(config, sites=("resid",))
        graph = pipe_graph(config, spliced, tokenizer)
        assert graph.metadata["summary"].startswith("effects plotted out of collected: ~")
        dot = config.model_data_dir(config.MODEL_DIR) / config.GRAPH_DOT_FILE
        update_graph_files(graph, dot, None)  # drawing is tested in test_pipe_script
        out[prompt] = graph
    stored = json.loads(dot.with_suffix(".json").read_text())
    ids = {node["id"] for node in stored["nodes"]}
    edges = {(e["source"], e["target"]) for e in stored["edges"]}
    for graph in out.values():
        assert set(graph.nodes) <= ids and set(graph.edges) <= edges
    assert len(stored["metadata"]["runs"]) == 2


# bfloat16 keeps 8 significant bits (relative rounding 2**-9 per operation);
# through a block of the tiny model, the effects' error stays within
# 10% of the largest float32 effect (measured: 5.8% with a bfloat16 model, 2.4% with bfloat16 SAEs).
BF16_TOLERANCE = 0.1


@pytest.mark.parametrize("dtypes", [{"DTYPE": "bfloat16"}, {"SAE_DTYPE": "bfloat16"}], ids=["model", "saes"])
def test_bfloat16_edges_match_a_float32_brute_force(make_config, dtypes):
    """Every measured effect, kept or not (threshold unset: all non-zero ones are edges)."""
    config = make_config(ACTS_LAYERS_SLICE="0:2", THRESHOLD_EXP=None)
    result, _, batch = _run(make_config(**dtypes, ACTS_LAYERS_SLICE="0:2", THRESHOLD_EXP=None))
    spliced = load_spliced_model(config, sites=("resid",))[0]
    saes = _saes(config, spliced)
    (ids,) = _sequences(batch)
    errors, largest = [], 0.0
    for feature in result.candidates[0]:
        reference = _reference(spliced.model, saes, ids, 0, feature)[0]
        source = feature_id("resid", 0, feature)
        got = torch.zeros_like(reference)
        for (s, t), edge in result.graph.edges.items():
            if s == source:
                got[parse_node_id(t).feature] = edge.effect
        errors.append(float((got - reference).abs().max()))
        largest = max(largest, float(reference.abs().max()))
    assert max(errors) <= BF16_TOLERANCE * largest, (max(errors), largest)


def test_the_largest_effects_kept_over_chunks_equal_one_top_k_over_all_of_them():
    """The bound from row maxima never drops a value of the true top LARGEST_KEPT, ties included."""
    gen = torch.Generator().manual_seed(0)
    chunks = [torch.randint(0, 6, (rows, 40), generator=gen).float() for rows in (3, 150, 1, 120)]
    chunks += [torch.rand(400, 40, generator=gen), torch.zeros(200, 40)]
    largest = torch.zeros(0)
    for index, chunk in enumerate(chunks):
        largest = largest_values(largest, chunk)
        seen = torch.cat([c.flatten() for c in chunks[: index + 1]])
        assert torch.equal(largest, seen.topk(min(LARGEST_KEPT, len(seen))).values)


@pytest.mark.parametrize("pinned", [None, 7, 99])
@pytest.mark.parametrize("changed", [True, False])
def test_first_layer_candidates_are_drawn_when_they_keep_an_edge_or_are_pinned(pinned, changed):
    """Against a loop; when nothing changed, every candidate gets its logit cells."""
    chunk = torch.tensor([3, 7, 11, 20])
    has_edge = torch.tensor([True, False, False, True])
    got = drawn_candidates(chunk, has_edge, changed, pinned).tolist()
    expected = [not changed or bool(e) or int(c) == pinned for c, e in zip(chunk, has_edge, strict=True)]
    assert got == expected


def test_recorded_edges_and_mass_match_a_loop_over_every_effect():
    gen = torch.Generator().manual_seed(1)
    chunk = torch.tensor([4, 9, 13])
    effects = torch.randn(3, 6, generator=gen) * (torch.rand(3, 6, generator=gen) > 0.5)
    effects[1] = 0  # a candidate that changed nothing keeps no edge
    out = LayerEffects.none_yet(chunk)
    has_edge, changed = record_edges(out, chunk, effects, threshold_exp=-1.0)
    expected = [
        (int(chunk[i]), j, float(effects[i, j]))
        for i in range(3)
        for j in range(6)
        if abs(effects[i, j]) > 0.5
    ]
    assert out.edges == expected and changed and out.any_effect
    assert has_edge.tolist() == [any(e[0] == int(c) for e in expected) for c in chunk]
    assert out.collected == pytest.approx(float(sum(abs(v) for v in effects.flatten())))
    assert out.plotted == pytest.approx(sum(abs(e[2]) for e in expected))


def test_recorded_logit_cells_are_each_drawn_candidates_moved_tokens_in_order():
    logit_effects = torch.tensor([[0.5, -0.2, 0.0, 0.9], [-0.1, -0.3, 0.2, 0.0]])
    out = LayerEffects.none_yet(torch.tensor([1, 2, 3]))
    record_logits(out, torch.tensor([True, False, True]), logit_effects, logit_tokens=3)
    assert out.logits_up == [[(3, pytest.approx(0.9)), (0, 0.5)], [], [(2, pytest.approx(0.2))]]
    assert out.logits_down == [
        [(1, pytest.approx(-0.2))],
        [],
        [(1, pytest.approx(-0.3)), (0, pytest.approx(-0.1))],
    ]
    assert out.any_effect
