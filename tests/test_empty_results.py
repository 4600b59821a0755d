"""Empty results are never silent: pipe.py names a THRESHOLD_EXP that keeps edges, val.py a void ratio."""

import math
import re

import numpy as np
import pytest

from sparse_coding.algorithms.validation import ValidationResult, _result, _ValidationTotals
from sparse_coding.errors import EmptyResultError
from sparse_coding.pipelines.loading import load_spliced_model
from sparse_coding.pipelines.pipe import pipe_graph


def _pipe(config, **options):
    spliced, tokenizer = load_spliced_model(config, sites=("resid",))
    return pipe_graph(config, spliced, tokenizer, **options)


def test_a_threshold_that_drops_every_edge_names_the_largest_effect_and_a_threshold_that_keeps_100(
    make_config,
):
    with pytest.raises(EmptyResultError) as info:
        _pipe(make_config(ACTS_LAYERS_SLICE="0:2", THRESHOLD_EXP=5.0))
    message = str(info.value)
    largest, exponent = re.search(
        r"largest effect measured is ([\d.e+-]+); THRESHOLD_EXP: ([\d.-]+)", message
    ).groups()
    assert "--allow-empty" in message

    # Reference: every non-zero effect, from a run without threshold.
    every = [
        abs(e.effect) for e in _pipe(make_config(ACTS_LAYERS_SLICE="0:2", THRESHOLD_EXP=None)).edges.values()
    ]
    assert len(every) > 100
    assert math.isclose(float(largest), max(every), rel_tol=1e-2)
    kept = sum(e > 2.0 ** float(exponent) for e in every)
    assert kept >= 100 > sum(e > 2.0 ** (float(exponent) + 0.1) for e in every)


def test_allow_empty_writes_the_graph_without_edges_and_warns(make_config, caplog):
    graph = _pipe(make_config(ACTS_LAYERS_SLICE="0:2", THRESHOLD_EXP=5.0), allow_empty=True)
    assert not graph.edges
    assert any("keeps no edge" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")


def _validation(empty: float, circuit: float) -> ValidationResult:
    sums = _ValidationTotals(
        probs_clean=np.ones(3),
        probs_ablated=np.ones(3),
        ce={"full": 2.0, "zero": 3.0, "circuit": circuit, "without_circuit": empty, "empty": empty},
        n_predictions=1,
        n_tokens=1,
        n_sequences=1,
    )
    return _result({}, [], [], "keep", sums)


def test_val_reports_faithfulness_as_undefined_when_the_baseline_barely_moves_the_loss(caplog):
    result = _validation(empty=2.0002, circuit=2.0)  # would print faithfulness 1.0 from noise
    assert math.isnan(result.faithfulness) and math.isnan(result.completeness)
    assert any("below" in r.getMessage() and "m(empty)" in r.getMessage() for r in caplog.records)


def test_val_computes_faithfulness_when_the_baseline_moves_the_loss(caplog):
    result = _validation(empty=2.5, circuit=2.125)
    assert result.faithfulness == pytest.approx((2.125 - 2.5) / (2.0 - 2.5)) and not caplog.records
