r"""Each SAE feature's mean activation and each site's mean error term over the real tokens of a
text, and the mean ablations that set chosen features (and error terms) to them.

val.py mean-ablates to these (`mean_ablations` builds circuit validation's C, M \ C and empty;
`validation`'s docstring gives their definitions and the formulas) and fast.py's BASELINE "mean"
patches to them. Sums are taken in float32 per batch on the device and accumulated in float64 on
the CPU (NumPy): MPS has no float64. Under torchrun each rank sums its share of the batches and
the sums are added over the ranks (`sparse_coding.runtime.sharding`).
"""

from collections.abc import Collection, Iterable
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from sparse_coding.config.schema import ErrorMode
from sparse_coding.errors import DatasetError
from sparse_coding.runtime.sharding import Sums, run_pass
from sparse_coding.splicing.splice import Intervention, Site, SplicedModel
from sparse_coding.text.batches import TokenBatch

Circuit = dict[str, list[int]]  # site key ("attn_7") -> sorted feature indices

VARIANTS = ("circuit", "without_circuit", "empty")  # m(C), m(M \ C), m(empty)


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
        features, errors = sums.values["features"], sums.values["errors"]

        def record(site: Site, x: Tensor) -> Tensor:
            """Add the site's features and errors over real tokens (NumPy, CPU), once per key (at a
            transcoder layer's reading site); errors where the site computes them."""
            if site.key in features and site.reads:
                code = site.code(x)
                features[site.key] += cpu_total(code.feats[real])  # (n_real, d_sae) summed
                if code.error is not None:
                    errors[site.key] += cpu_total(code.error[real])
            return x

        with spliced.intervene(record):
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


def cpu_total(values: Tensor) -> np.ndarray:
    """Column sums in float32 on the device, as float64 on the CPU (MPS has no float64)."""
    return values.float().sum(dim=0).cpu().numpy().astype(np.float64)


def mean_ablation(
    features: dict[str, Tensor], means: SiteMeans, errors: Collection[str] = ()
) -> Intervention:
    """Intervention that sets chosen features (and error terms) to their means at every position.

    Args:
        features: site key -> (d_sae,) bool mask of the features to mean-ablate.
        means: every site's feature and error means.
        errors: site keys whose error term is mean-ablated too.

    ``x' = x + scale * (mean[S] @ W_dec[S] - sum of active f_i W_dec[i], i in S)``:
    the means' part is one vector (computed once per site), the rest needs
    only the active features' decoder rows; the site's constant term is
    unchanged, and its error too unless listed (then ``- error + mean error``).
    A transcoder feature is ablated at every MLP output it writes.
    """
    constants: dict[int, Tensor] = {}

    def ablate(site: Site, x: Tensor) -> Tensor:
        chosen = features.get(site.key)
        on_features = chosen is not None and bool(chosen.any())
        on_error = site.key in errors
        if not (on_features or on_error):
            return x
        code = site.code(x)
        if on_features:
            scale = code.scale.to(code.feats.dtype)  # (batch, pos, 1)
            removed = _decode_active(site, code.feats * chosen * scale).to(x.dtype)
            if id(site) not in constants:  # (d_model,)
                constants[id(site)] = site.decode(torch.where(chosen, means.features[site.key], 0))
            x = x + (scale * constants[id(site)]).to(x.dtype) - removed
        if on_error:
            x = x - code.error + means.errors[site.key].to(x.dtype)
        return x

    return ablate


def _decode_active(site: Site, values: Tensor) -> Tensor:
    """values (batch, pos, d_sae) @ W_dec, through the nonzero entries' decoder rows.

    Trained SAEs activate a few dozen features per token, so the rows cost
    far less than the dense product; when they would not (more rows than
    the dense product's memory, e.g. random SAEs), the dense product is used.
    """
    active = values != 0
    if int(active.sum()) * site.d_model > values.numel():
        return site.decode(values)
    rows, positions, feats = active.nonzero().unbind(-1)
    decoded = site.decode_rows(values[active], feats)  # (n_active, d_model)
    out = values.new_zeros(*values.shape[:-1], site.d_model)
    return out.index_put_((rows, positions), decoded, accumulate=True)


def mean_ablations(
    spliced: SplicedModel,
    circuit: Circuit,
    circuit_errors: Collection[str],
    means: SiteMeans,
    errors: ErrorMode,
) -> dict[str, Intervention]:
    """The interventions of m(C), m(M \\ C) and m(empty), keyed as VARIANTS, over every spliced site."""
    inside = {}
    for key, site in spliced.by_key.items():
        inside[key] = torch.zeros(site.d_sae, dtype=torch.bool, device=spliced.device)
        inside[key][circuit.get(key, [])] = True
    outside = {key: ~mask for key, mask in inside.items()}
    every = {key: torch.ones_like(mask) for key, mask in inside.items()}
    all_sites = set(inside)
    if errors == "ablate":
        ablated_errors = (all_sites - set(circuit_errors), set(circuit_errors), all_sites)
    else:
        ablated_errors = (set(), set(), set())
    chosen = zip(VARIANTS, (outside, inside, every), ablated_errors, strict=True)
    return {name: mean_ablation(f, means, e) for name, f, e in chosen}
