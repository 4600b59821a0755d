"""fast.py's config keys: choices, what each metric and baseline needs, and their glue."""

import typing

import pytest

from sparse_coding.algorithms.metrics import METRICS
from sparse_coding.config.schema import Metric
from sparse_coding.errors import ConfigError


def test_the_metric_key_offers_the_metrics_the_algorithms_know():
    assert set(typing.get_args(Metric)) == set(METRICS)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"METRIC": "kl"}, "METRIC is 'kl'; valid: cross_entropy, logit_diff, logprob"),
        ({"METRIC": "logit_diff"}, "METRIC is 'logit_diff', which needs patch prompts"),
        ({"BASELINE": "patch"}, "BASELINE is 'patch', which needs patch prompts"),
        ({"PATCH_ANSWER": " b"}, "PATCH_ANSWER is set without PATCH_PROMPT"),
        ({"PATCH_PROMPT": "x y", "ANSWER": " a"}, "ANSWER and PATCH_ANSWER: set both"),
        ({"PATCH_PROMPT": "x y", "PAIRS_FILE": "p.jsonl"}, "PAIRS_FILE and PATCH_PROMPT are both set"),
        ({"NODE_THRESHOLD": -1.0}, "NODE_THRESHOLD must be at least 0"),
    ],
)
def test_a_bad_fast_key_combination_is_an_error_naming_the_keys(make_config, overrides, message):
    with pytest.raises(ConfigError, match=message):
        make_config(**overrides)


def test_prompt_and_patch_prompt_give_one_pair_whose_last_tokens_are_the_answers(make_config):
    from sparse_coding.pipelines.fast import config_pairs

    (pair,) = config_pairs(
        make_config(PROMPT="The cat sat on the mat", PATCH_PROMPT="The dog sat on the rug")
    )
    assert (pair.clean_prefix, pair.patch_prefix, pair.clean_answer, pair.patch_answer) == (
        "The cat sat on the mat",
        "The dog sat on the rug",
        None,
        None,
    )
