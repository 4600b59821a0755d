"""sparse_coding: circuit discovery in GPT-2 small with sparse autoencoders.

The scripts (`pipe.py`, `fast.py`, `val.py`, `hist.py`, `steer.py`, `trace.py`) are
three-line front doors over `sparse_coding.cli`;
from a notebook, the names below are one import away
(``from sparse_coding import load_config, load_spliced_model, ...``). They load
on first use, so importing the package stays cheap.
"""

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_config": "sparse_coding.config",
    "Config": "sparse_coding.config",
    "load_spliced_model": "sparse_coding.pipelines.loading",
    "load_sae": "sparse_coding.models.saes",
    "tokenize_prompt": "sparse_coding.models.gpt2",
    "load_model": "sparse_coding.models.gpt2",
    "GPT2": "sparse_coding.models.transformer",
    "SplicedModel": "sparse_coding.splicing.splice",
    "record_codes": "sparse_coding.splicing.splice",
    "zero_ablation": "sparse_coding.splicing.splice",
    "gradient_graph": "sparse_coding.algorithms.attribution_graph",
    "GraphOptions": "sparse_coding.algorithms.attribution_graph",
    "METRICS": "sparse_coding.algorithms.metrics",
    "token_batch": "sparse_coding.text.pairs",
    "ablation_graph": "sparse_coding.algorithms.ablation_graph",
    "validate_circuit": "sparse_coding.algorithms.validation",
    "compute_thresholds": "sparse_coding.algorithms.thresholds",
    "steer": "sparse_coding.algorithms.steering",
    "response_curve": "sparse_coding.algorithms.response_curve",
    "generate": "sparse_coding.algorithms.generation",
    "left_padded": "sparse_coding.algorithms.generation",
    "Sampling": "sparse_coding.algorithms.generation",
    "FeatureEdit": "sparse_coding.config.steering",
    "CurveSpec": "sparse_coding.config.steering",
    "feature_edits": "sparse_coding.splicing.splice",
    "Graph": "sparse_coding.graphs.graph",
    "load_graph": "sparse_coding.graphs.graph_files",
    "save_graph": "sparse_coding.graphs.graph_files",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sparse_coding' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
