"""Each SAE feature's mean activation and each site's mean error term over the real tokens of a text.

val.py mean-ablates to these (`sparse_coding.algorithms.validation`) and fast.py's
BASELINE "mean" patches to them. Sums are taken in float32 per batch on the
device and accumulated in float64 on the CPU (NumPy): MPS has no float64.
Under torchrun each rank sums its share of the batches and the sums are added
over the ranks (`sparse_coding.runtime.sharding`).
"""

from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from sparse_coding.errors import DatasetError
from sparse_coding.runtime.sharding import Sums, run_pass
from sparse_coding.splicing.splice import Intervention, Site, SplicedModel
from sparse_coding.text.batches import TokenBatch


class SiteMeans(NamedTuple):
    """What mean ablation sets a site's parts to: means over the real tokens evaluated."""

    features: dict[str, Tensor]  # site key -> (d_sae,) mean activation
    errors: dict[str, Tensor]  # site key -> (d_model,) mean SAE error term


@torch.no_grad()
def feature_means(spliced: SplicedModel, batches: Iterable[TokenBatch], sites: Iterable[str]) -> SiteMeans:
    """Each feature's mean activation (d_sae,) and the mean error term (d_model,) over the real tokens.

    Runs the blocks only up to the last of `sites`: nothing after it is needed.
    """
    chosen = {key: spliced.by_key[key] for key in sites}
    stop = 1 + max((site.layer for site in chosen.values()), default=-1)

    def empty() -> Sums:
        return Sums(
            {
                "features": {key: np.zeros(site.d_sae) for key, site in chosen.items()},
                "errors": {key: np.zeros(site.d_model) for key, site in chosen.items()},
                "n_tokens": 0,
            }
        )

    def add(sums: Sums, index: int, batch: TokenBatch) -> None:
        real = batch.attention_mask.bool()
        parts = SiteMeans(sums.values["features"], sums.values["errors"])
        with spliced.intervene(_summing_parts(parts, real)):
            spliced.run_blocks(spliced.embed(batch.input_ids), 0, stop, batch.attention_mask)
        sums.values["n_tokens"] += int(real.sum())

    totals = run_pass(
        "feature means", batches, empty=empty, add=add, desc="Feature means", leave=False
    ).values
    n_tokens = totals["n_tokens"]
    if n_tokens == 0:
        raise DatasetError("the evaluated data has no tokens; check PROMPT or DATASET")

    def means(sums: dict[str, np.ndarray]) -> dict[str, Tensor]:
        return {
            key: torch.from_numpy((total / n_tokens).astype(np.float32)).to(spliced.device, chosen[key].dtype)
            for key, total in sums.items()
        }

    return SiteMeans(means(totals["features"]), means(totals["errors"]))


def _summing_parts(sums: SiteMeans, real: Tensor) -> Intervention:
    """Intervention adding each site's features and errors over real tokens into `sums` (NumPy, CPU),
    once per key (at a transcoder layer's reading site); errors where the site computes them."""

    def record(site: Site, x: Tensor) -> Tensor:
        if site.key in sums.features and site.reads:
            code = site.code(x)
            sums.features[site.key] += cpu_total(code.feats[real])  # (n_real, d_sae) summed
            if code.error is not None:
                sums.errors[site.key] += cpu_total(code.error[real])
        return x

    return record


def cpu_total(values: Tensor) -> np.ndarray:
    """Column sums in float32 on the device, as float64 on the CPU (MPS has no float64)."""
    return values.float().sum(dim=0).cpu().numpy().astype(np.float64)
