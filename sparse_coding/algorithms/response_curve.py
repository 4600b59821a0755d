"""Response curves: sweep one feature's intervention and read watched features and the answer.

For values v_1..v_S of one intervention (`CurveSpec`: set, scale or add on
one feature, at chosen positions), each prompt runs once per value, all
values as rows of one batch; at the prompt's last token the watched
features' activations (SAE's own, as on Neuronpedia), log p(answer) and
the most likely next tokens are read. The edit is `splice.edit_features`,
as everywhere.

Phases of `response_curve`:
    1. prefix: the blocks before the intervened site's layer, once per
       prompt (nothing there depends on the value), reading the watched
       features that sit there;
    2. sweep: the prefix repeated once per value, the remaining blocks under
       the edit with each row's value, in chunks of at most `MAX_ROWS` rows.
"""

import logging
import time
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from sparse_coding.algorithms.steering import Watch, by_node, site_edits, watch_of, with_edits
from sparse_coding.config.steering import CurveSpec, kind_factors
from sparse_coding.nodes import parse_node_id
from sparse_coding.splicing.splice import FeatureEdits, Intervention, Site, SplicedModel, feature_edits
from sparse_coding.text.batches import TokenBatch

logger = logging.getLogger(__name__)

# Rows (prompt x value) per forward: 256 rows of 64 tokens hold 50 MB per
# residual-stream tensor in float32 on GPT-2 small.
MAX_ROWS = 256


class CurveResult(NamedTuple):
    """Per prompt and value, read at the prompt's last token."""

    values: list[float]  # (S,) the swept values
    watched: dict[str, Tensor]  # node -> (prompts, S) activation
    answer_logprob: Tensor | None  # (prompts, S) log p(answer), when an answer is given
    top_ids: Tensor  # (prompts, S, k) most likely next tokens
    top_probs: Tensor  # (prompts, S, k)


@torch.no_grad()
def response_curve(
    spliced: SplicedModel,
    batch: TokenBatch,
    spec: CurveSpec,
    *,
    answer_id: int | None = None,
    top_tokens: int = 5,
) -> CurveResult:
    """Sweep `spec` over `batch`'s right-padded prompts (see the module docstring).

    Args:
        spliced: the model with an SAE at the swept node's site and every watched one.
        batch: the prompts, right-padded; each is read at its last real token.
        answer_id: the token whose log-probability is recorded.
        top_tokens: next tokens recorded per prompt and value.
    """
    began = time.perf_counter()
    values = torch.tensor(spec.values, device=spliced.device)
    start = parse_node_id(spec.node).layer
    lengths = batch.attention_mask.sum(1)
    watch = watch_of(spec.watch, spliced.device)
    record: dict[str, Tensor] = {}
    with spliced.intervene(_reading_last(watch, record, lengths)):
        prefix = spliced.run_blocks(spliced.embed(batch.input_ids), 0, start, batch.attention_mask)
    before = {key: acts.repeat_interleave(len(values), 0) for key, acts in record.items()}
    every_row = range(len(lengths) * len(values))
    chunks = [
        _sweep_rows(spliced, batch, prefix, spec, values, every_row[i : i + MAX_ROWS], watch, start)
        for i in range(0, len(every_row), MAX_ROWS)
    ]
    after = {key: torch.cat([chunk[0][key] for chunk in chunks]) for key in chunks[0][0]}
    log_probs = torch.cat([chunk[1] for chunk in chunks]).view(len(lengths), len(values), -1)
    watched = {
        node: acts.view(len(lengths), len(values)) for node, acts in by_node(watch, before | after).items()
    }
    top = log_probs.topk(min(top_tokens, log_probs.shape[-1]), dim=-1)
    answer = None if answer_id is None else log_probs[..., answer_id].cpu()
    logger.info(
        "Response curve: %d values x %d prompts in %.1fs",
        len(values),
        len(lengths),
        time.perf_counter() - began,
    )
    return CurveResult(spec.values, watched, answer, top.indices.cpu(), top.values.exp().cpu())


def _reading_last(
    watch: Watch, record: dict[str, Tensor], lengths: Tensor, edits: dict[str, FeatureEdits] | None = None
) -> Intervention:
    """Intervention applying `edits` that records the watched features at each row's last real
    token, (rows, k) per site (an edited feature at its new value); only that token is encoded."""
    edits = edits or {}
    apply = feature_edits(edits)
    rows = torch.arange(len(lengths), device=lengths.device)

    def read(site: Site, x: Tensor) -> Tensor:
        if site.key in watch and site.reads:  # a cross-layer transcoder's features: where they are read
            features = watch[site.key]
            k = len(features)
            at = (rows.repeat_interleave(k), (lengths - 1).repeat_interleave(k), features.repeat(len(rows)))
            acts = site.feats_at(x, *at).float().view(len(rows), 1, k)  # (rows, 1, k)
            record[site.key] = with_edits(acts, features, _at_last(edits.get(site.key), lengths))[:, 0]
        return apply(site, x)

    return read


def _at_last(edits: FeatureEdits | None, lengths: Tensor) -> FeatureEdits | None:
    """The entries of `edits` at each row's last real token, at position 0 of a one-token input."""
    if edits is None:
        return None
    keep = edits.positions == lengths[edits.rows] - 1
    rows = edits.rows[keep]
    return FeatureEdits(
        rows, torch.zeros_like(rows), edits.features[keep], edits.factor[keep], edits.offset[keep]
    )


def _sweep_rows(
    spliced: SplicedModel,
    batch: TokenBatch,
    prefix: Tensor,
    spec: CurveSpec,
    values: Tensor,
    rows: range,
    watch: Watch,
    start: int,
) -> tuple[dict[str, Tensor], Tensor]:
    """Phase 2 for rows `rows` (row = prompt * S + value index): watched activations and
    log-probabilities (rows, d_vocab) at the last real tokens."""
    index = torch.arange(rows.start, rows.stop, device=prefix.device)
    prompt, value = index // len(values), values[index % len(values)]
    mask, lengths = batch.attention_mask[prompt], batch.attention_mask[prompt].sum(1)
    per_row = torch.stack(kind_factors(spec.kind, value), dim=-1)[:, None, :]  # (rows, 1 edit, 2)
    columns = torch.arange(mask.shape[1], device=mask.device).expand(len(index), -1)
    edits = site_edits([spec.edit(0.0)], columns, lengths, factors=per_row)
    record: dict[str, Tensor] = {}
    with spliced.intervene(_reading_last(watch, record, lengths, edits)):
        hidden = spliced.run_blocks(prefix[prompt], start, spliced.n_layers, mask)
    last = hidden[torch.arange(len(index), device=hidden.device), lengths - 1]
    return record, F.log_softmax(spliced.unembed(last).float(), dim=-1)
