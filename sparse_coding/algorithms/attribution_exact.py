"""Exact node effects by activation patching, to check the linear estimates on small slices.

For a node u (a feature, or a site's error) and an example, the exact effect is

    m(u at its baseline at every real position of the example) - m(clean)

with features re-read from each site's current input and error terms kept
(`splice.zero_ablation`, given the baseline values), so the attribution-
patching or IG estimate of `attribution` approximates it to first order. An
error node at its baseline adds (baseline error - clean error) to its site's
output (the baseline error of `attribution.site_leaves`), which leaves that
site's features as they are. Each (node, example) pair is one row of a batch,
the rows running in chunks of `ablation_rows.rows_per_forward` (pairs where a
feature is inactive clean and at baseline change nothing and are not run).
"""

from collections.abc import Callable

import torch
from torch import Tensor

from sparse_coding.algorithms.ablation_rows import rows_per_forward
from sparse_coding.algorithms.attribution import SiteAttribution, losses
from sparse_coding.algorithms.metrics import Metric
from sparse_coding.splicing.splice import Intervention, Site, SplicedModel, zero_ablation
from sparse_coding.text.batches import TokenBatch


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

    def ablated(rows: slice) -> Intervention:
        chunk_targets, chunk_values = {}, {}
        for key, site_targets in targets.items():
            inside = (site_targets[:, 0] >= rows.start) & (site_targets[:, 0] < rows.stop)
            chunk_targets[key] = site_targets[inside] - site_targets.new_tensor([rows.start, 0, 0])
            chunk_values[key] = values[key][inside]
        return zero_ablation(chunk_targets, values=chunk_values)

    sizes = [len(f) for f in nodes.values()]
    sums = _summed_changes(spliced, batch, metric, example, node, sum(sizes), ablated)
    return dict(zip(nodes, sums.split(sizes), strict=True))


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
    deltas = {
        key: (attributions[key].leaves.base_error - attributions[key].leaves.error) * real for key in keys
    }

    def ablated(rows: slice) -> Intervention:
        def patch(site: Site, x: Tensor) -> Tensor:
            if site.key not in deltas:
                return x
            chosen = (site_of_row[rows] == index[site.key])[:, None, None]
            return x + (deltas[site.key][example[rows]] * chosen).to(x.dtype)

        return patch

    sums = _summed_changes(spliced, batch, metric, example, site_of_row, len(keys), ablated)
    return dict(zip(keys, sums, strict=True))


def _summed_changes(
    spliced: SplicedModel,
    batch: TokenBatch,
    metric: Metric,
    example: Tensor,
    node: Tensor,
    n_nodes: int,
    ablated: Callable[[slice], Intervention],
) -> Tensor:
    """(n_nodes,): per node, the sum over its rows of loss(row) - loss(clean), row i being example
    `example[i]` under `ablated(chunk of rows)`, in chunks of `rows_per_forward` rows."""
    chunk = rows_per_forward(spliced, batch, spliced.sites)
    changes = []
    with torch.no_grad():
        clean = losses(spliced, batch, metric)
        for start in range(0, len(example), chunk):
            rows = slice(start, start + chunk)
            with spliced.intervene(ablated(rows)):
                changes.append(losses(spliced, batch.select(example[rows]), metric) - clean[example[rows]])
    per_row = torch.cat(changes) if changes else clean.new_zeros(0)
    return clean.new_zeros(n_nodes).index_add(0, node, per_row)
