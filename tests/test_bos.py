"""One BOS convention per run: PREPEND_BOS unset follows the SAEs' cfg, disagreeing SAEs are refused
before anything loads, and an explicit value that contradicts them warns once."""

import json
import logging
from pathlib import Path

import pytest
from conftest import tiny_config_dict, write_sae_set

from sparse_coding.config import config_from_dict
from sparse_coding.errors import ConfigError
from sparse_coding.models.bos import settle_prepend_bos
from sparse_coding.pipelines.loading import load_spliced_model, settled
from sparse_coding.pipelines.preflight import preflight


def test_unset_follows_the_saes_and_a_set_value_wins_naming_what_it_contradicts():
    assert settle_prepend_bos(None, {"a": False, "b": False}) == (False, [])
    assert settle_prepend_bos(None, {"a": True}) == (True, [])
    assert settle_prepend_bos(True, {"a": False, "b": True}) == (True, ["a"])
    assert settle_prepend_bos(False, {"a": False}) == (False, [])


def test_saes_trained_both_ways_are_refused_naming_both_and_the_fixes():
    with pytest.raises(ConfigError) as info:
        settle_prepend_bos(None, {"res-jb 3": True, "v5 attn 3": False, "v5 mlp 3": False})
    message = str(info.value)
    assert "1 with BOS (e.g. res-jb 3)" in message and "2 without (e.g. v5 attn 3)" in message
    assert "PREPEND_BOS: true or false" in message and "gpt2-small-resid-post-v5-32k" in message


@pytest.fixture(scope="module")
def no_bos_attn(tmp_path_factory) -> str:
    """attn SAEs whose cfg says they were trained without BOS (as the OpenAI v5 sets)."""
    template = write_sae_set(tmp_path_factory.mktemp("no_bos"), "attn")
    for layer in range(3):
        cfg_path = Path(template.format(layer=layer)) / "cfg.json"
        cfg_path.write_text(json.dumps(json.loads(cfg_path.read_text()) | {"prepend_bos": False}))
    return template


def _config(tmp_path, tiny_model_dir, sae_templates, **overrides):
    return config_from_dict(tiny_config_dict(tmp_path, tiny_model_dir, sae_templates) | overrides)


def test_mixed_saes_with_prepend_bos_unset_stop_before_the_model_or_any_sae_loads(
    tmp_path, tiny_model_dir, sae_templates, no_bos_attn, monkeypatch
):
    import sparse_coding.pipelines.loading as loading

    config = _config(tmp_path, tiny_model_dir, sae_templates, ATTN_SAES=no_bos_attn, PREPEND_BOS=None)
    with pytest.raises(ConfigError, match="trained both ways"):
        preflight(config)
    monkeypatch.setattr(loading, "load_saes", lambda *a, **k: pytest.fail("an SAE loaded before the check"))
    with pytest.raises(ConfigError, match="trained both ways"):
        load_spliced_model(config)


def test_one_family_without_bos_is_tokenized_without_it_and_the_run_records_false(
    tmp_path, tiny_model_dir, sae_templates, no_bos_attn
):
    config = _config(
        tmp_path, tiny_model_dir, sae_templates, ATTN_SAES=no_bos_attn, RESID_SAES=None, MLP_SAES=None,
        PREPEND_BOS=None,
    )  # fmt: skip
    spliced, _ = load_spliced_model(config)
    assert spliced.prepend_bos is False and settled(config, spliced).PREPEND_BOS is False
    with pytest.raises(ConfigError, match="PREPEND_BOS is unset"):
        config.prepend_bos  # noqa: B018 - unsettled, it is not guessed


def test_an_explicit_value_against_the_saes_warns_once_per_run(
    tmp_path, tiny_model_dir, sae_templates, no_bos_attn, caplog
):
    config = _config(tmp_path, tiny_model_dir, sae_templates, ATTN_SAES=no_bos_attn, PREPEND_BOS=True)
    with caplog.at_level(logging.WARNING):
        preflight(config)
        spliced, _ = load_spliced_model(config)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "3 SAE(s) were trained without BOS" in warnings[0]
    assert spliced.prepend_bos is True
