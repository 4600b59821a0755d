r"""Mean ablation: interventions that set chosen SAE features (and error terms) to their means.

`mean_ablations` builds the three ablated models of circuit validation: C, M \ C and empty
(`validation`'s docstring gives their definitions and the formulas).
"""

from collections.abc import Collection

import torch
from torch import Tensor

from sparse_coding.algorithms.feature_means import SiteMeans
from sparse_coding.config.schema import ErrorMode
from sparse_coding.splicing.splice import Intervention, Site, SplicedModel

Circuit = dict[str, list[int]]  # site key ("attn_7") -> sorted feature indices

VARIANTS = ("circuit", "without_circuit", "empty")  # m(C), m(M \ C), m(empty)


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
