"""Exact node effects by activation patching, to check the linear estimates on small slices.

For a node u (a feature, or a site's error) and an example, the exact effect is

    m(u at its baseline at every real position of the example) - m(clean)

with features re-read from each site's current input and error terms kept
(`splice.zero_ablation`, given the baseline values), so the attribution-
patching or IG estimate of `attribution` approximates it to first order. An
error node at its baseline adds (baseline error - clean error) to its site's
output (the baseline error of `attribution.site_leaves`), which leaves that
site's features as they are. Each (node, example)
pair is one row of a batch, the rows running in chunks of
`ablation_rows.rows_per_forward` (pairs where a feature is inactive clean and
at baseline change nothing and are not run).
"""

import logging

import torch
from torch import Tensor

from sparse_coding.algorithms.ablation_rows import rows_per_forward
from sparse_coding.algorithms.attribution import SiteAttribution, losses
from sparse_coding.algorithms.metrics import Metric
from sparse_coding.splicing.splice import SplicedModel, zero_ablation
from sparse_coding.text.batches import TokenBatch

logger = logging.getLogger(__name__)


def exact_effects(
    spliced: SplicedModel,
    batch: TokenBatch,
    attributions: dict[str, SiteAttribution],
    nodes: dict[str, Tensor],
    *,
    metric: Metric,
) -> dict[str, Tensor]:
    """Per site key, (n,) exact effects of the features `nodes[key]`, summed over the batch's examples."""
    targets, values, example, node = _rows(batch, attributions, nodes)
    chunk = rows_per_forward(spliced, batch, spliced.sites)
    with torch.no_grad():
        clean = losses(spliced, batch, metric)
        changes = [
            _run_rows(spliced, batch, metric, targets, values, example, range(start, start + chunk))
            - clean[example[start : start + chunk]]
            for start in range(0, len(example), chunk)
        ]
    per_row = torch.cat(changes) if changes else clean.new_zeros(0)
    sums = clean.new_zeros(sum(len(f) for f in nodes.values())).index_add(0, node, per_row)
    return dict(zip(nodes, sums.split([len(f) for f in nodes.values()]), strict=True))


def _rows(
    batch: TokenBatch, attributions: dict[str, SiteAttribution], nodes: dict[str, Tensor]
) -> tuple[dict[str, Tensor], dict[str, Tensor], Tensor, Tensor]:
    """The ablation rows: per site, (n, 3) targets (row, position, feature) and their baseline values;
    and per row its example and its node's index among all nodes."""
    targets, values, examples, node_index = {}, {}, [], []
    n_rows, n_nodes = 0, 0
    for key, features in nodes.items():
        lv = attributions[key].leaves
        node, entry = (lv.features[None, :] == features[:, None]).nonzero(as_tuple=True)
        pair = node * len(batch) + lv.rows[entry]  # (node, example) of each entry
        pairs, row = pair.unique(return_inverse=True)
        targets[key] = torch.stack([n_rows + row, lv.positions[entry], lv.features[entry]], dim=1)
        values[key] = lv.base_values[entry]
        examples.append(pairs % len(batch))
        node_index.append(n_nodes + pairs // len(batch))
        n_rows, n_nodes = n_rows + len(pairs), n_nodes + len(features)
    return targets, values, torch.cat(examples), torch.cat(node_index)


def _run_rows(
    spliced: SplicedModel,
    batch: TokenBatch,
    metric: Metric,
    targets: dict[str, Tensor],
    values: dict[str, Tensor],
    example: Tensor,
    rows: range,
) -> Tensor:
    """Losses of the ablation rows `rows` (one chunk), each with its node at baseline."""
    chunk_targets, chunk_values = {}, {}
    for key, site_targets in targets.items():
        inside = (site_targets[:, 0] >= rows.start) & (site_targets[:, 0] < rows.stop)
        chunk_targets[key] = site_targets[inside] - site_targets.new_tensor([rows.start, 0, 0])
        chunk_values[key] = values[key][inside]
    with spliced.intervene(zero_ablation(chunk_targets, values=chunk_values)):
        return losses(spliced, batch.select(example[rows.start : rows.stop]), metric)


def exact_error_effects(
    spliced: SplicedModel,
    batch: TokenBatch,
    attributions: dict[str, SiteAttribution],
    keys: list[str],
    *,
    metric: Metric,
) -> dict[str, Tensor]:
    """Per site key, the exact effect of its error node (see the module docstring), summed over the
    batch's examples."""
    n = len(batch)
    site_of_row = torch.arange(len(keys), device=batch.input_ids.device).repeat_interleave(n)
    example = torch.arange(n, device=batch.input_ids.device).repeat(len(keys))
    real = batch.attention_mask[..., None].bool()
    index = {key: i for i, key in enumerate(keys)}
    leaves = {key: attributions[key].leaves for key in keys}
    deltas = {key: (lv.base_error - lv.error) * real for key, lv in leaves.items()}
    chunk = rows_per_forward(spliced, batch, spliced.sites)
    changes = []
    with torch.no_grad():
        clean = losses(spliced, batch, metric)
        for start in range(0, len(example), chunk):
            rows = slice(start, start + chunk)

            def patch(site, x: Tensor, rows: slice = rows) -> Tensor:
                if site.key not in deltas:
                    return x
                chosen = (site_of_row[rows] == index[site.key])[:, None, None]
                return x + (deltas[site.key][example[rows]] * chosen).to(x.dtype)

            with spliced.intervene(patch):
                changes.append(losses(spliced, batch.select(example[rows]), metric) - clean[example[rows]])
    per_row = torch.cat(changes) if changes else clean.new_zeros(0)
    sums = clean.new_zeros(len(keys)).index_add(0, site_of_row, per_row)
    return dict(zip(keys, sums, strict=True))
