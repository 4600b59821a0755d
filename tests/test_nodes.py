"""Node ids round-trip, and malformed ids fail with the accepted forms in the message."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sparse_coding.nodes import (
    HOOK_ORDER,
    SITES,
    NodeId,
    error_id,
    feature_id,
    hook_position,
    node_kind,
    parse_node_id,
    parse_site_key,
    site_key,
)

sites = st.sampled_from(SITES)
indices = st.integers(min_value=0, max_value=10**6)


def test_ids_follow_docs_design():
    assert feature_id("resid", 3, 331) == "resid_3.331"
    assert feature_id("attn", 4, 112) == "attn_4.112"
    assert error_id("mlp", 7) == "mlp_error_7"
    assert site_key("attn", 4) == "attn_4"


@given(sites, indices, indices)
def test_a_feature_id_parses_back_to_its_parts(site, layer, feature):
    node = parse_node_id(feature_id(site, layer, feature))
    assert node == NodeId(site, layer, feature)
    assert str(node) == feature_id(site, layer, feature)


@given(sites, indices)
def test_an_error_id_parses_back_with_no_feature(site, layer):
    node = parse_node_id(error_id(site, layer))
    assert node == NodeId(site, layer, None)
    assert str(node) == error_id(site, layer)


@given(sites, indices)
def test_a_site_key_parses_back_to_site_and_layer(site, layer):
    assert parse_site_key(site_key(site, layer)) == (site, layer)


@pytest.mark.parametrize(
    ("key", "parsed"),
    [
        (9, ("resid", 9)),
        ("9", ("resid", 9)),
        (" 10 ", ("resid", 10)),
        ("mlp_10", ("mlp", 10)),
        ("resid_0", ("resid", 0)),
    ],
)
def test_an_int_layer_means_the_resid_site(key, parsed):
    assert parse_site_key(key) == parsed


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "resid_3",
        "resid_3.",
        "resid.3.1",
        "resid_3.x",
        "foo_3.1",
        "Resid_3.1",
        "resid_-1.2",
        "resid_3.1.2",
        "mlp_error_",
        "mlp_error_x",
        "error_7",
        "resid_3.331 ",
        "resid_3.331\n",
        "mlp_error_7\n",
        "attn_error_4.1",
    ],
)
def test_a_malformed_node_id_names_both_accepted_forms(bad):
    with pytest.raises(ValueError) as info:
        parse_node_id(bad)
    message = str(info.value)
    assert repr(bad) in message and "resid_3.331" in message and "mlp_error_7" in message


@pytest.mark.parametrize("bad", ["attn", "attn_", "foo_3", "attn_3.1", "3.5", "-1x", -1, "-1", True, None])
def test_a_malformed_site_key_names_the_accepted_forms(bad):
    with pytest.raises(ValueError, match="layer"):
        parse_site_key(bad)


def test_hook_positions_sort_sites_in_forward_order():
    hooks = [f"blocks.{layer}.{hook}" for layer in (1, 0) for hook in reversed(list(HOOK_ORDER))]
    ordered = sorted(hooks, key=hook_position)
    assert ordered == [
        f"blocks.{layer}.{hook}"
        for layer in (0, 1)
        for hook in ["hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post"]
    ]
    assert hook_position("blocks.11.hook_mlp_out") == (11, 3)


@pytest.mark.parametrize(
    "bad",
    [
        "blocks.0.attn.hook_z",
        "blocks.x.hook_resid_pre",
        "hook_resid_pre",
        "blocks.0.hook_resid_pre.extra",
        "blocks.0.hook_resid_pre\n",
    ],
)
def test_an_unsupported_hook_lists_the_supported_hooks(bad):
    with pytest.raises(ValueError, match="hook_resid_pre"):
        hook_position(bad)


@pytest.mark.parametrize(
    ("node_id", "kind"),
    [("resid_3.331", "feature"), ("tc_3.12@5", "feature"), ("mlp_error_7@4", "error"), ("embed@0", "embed"),
     ("logit_262", "logit")],
)  # fmt: skip
def test_every_node_id_has_a_kind(node_id, kind):
    assert node_kind(node_id) == kind


@pytest.mark.parametrize("bad", ["embed_0", "embed@", "logit_x", "resid_3"])
def test_an_id_of_no_kind_names_every_accepted_form(bad):
    with pytest.raises(ValueError, match="'embed@{position}', or 'logit_{token id}'"):
        node_kind(bad)
