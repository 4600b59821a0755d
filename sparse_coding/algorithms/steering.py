"""Steering: generate with features set, scaled or added, and compare with the clean model.

An intervention (`config.steering.FeatureEdit`) names a feature by node id
and the token positions it acts on; at each site the edit is
`splice.edit_features`, the mechanism val.py's ablations use:
``x' = x + (new - a) * scale * W_dec[i]`` with ``new = factor * a + offset``,
the SAE error term and every other feature kept. An empty or no-op edit
therefore runs the plain model bit for bit; sites without an edit return
their input untouched.

Phases of `steer`:
    1. generation: the clean and the steered continuation of every prompt
       (and return sequence), with the key/value cache, batched
       (`algorithms.generation`);
    2. comparison on the clean text: prompt + clean continuation run once
       plain and once under the edits (same tokens, so the two models are
       compared on one context), recording the intervened and watched
       features: per generated step KL(clean || steered) and the tokens whose
       probability rose and fell most (p_steered - p_clean), and every
       feature's activation at each position (after the edit for the
       intervened ones).
"""

import logging
import time
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from sparse_coding.algorithms.generation import Prompts, Sampling, generate
from sparse_coding.config.steering import FeatureEdit, Positions
from sparse_coding.nodes import parse_node_id, site_key
from sparse_coding.splicing.splice import FeatureEdits, Intervention, Site, SplicedModel, feature_edits

logger = logging.getLogger(__name__)


def position_mask(positions: Positions, token_index: Tensor, lengths: Tensor) -> Tensor:
    """(batch, n) bool: which columns (token indices `token_index`, negative on pads) `positions`
    selects, for prompts of `lengths` tokens (`generated` = past the prompt)."""
    real, prompt_len = token_index >= 0, lengths[:, None]
    if positions == "all":
        return real
    if positions == "prompt":
        return real & (token_index < prompt_len)
    if positions == "generated":
        return token_index >= prompt_len
    wanted = torch.tensor(positions, device=token_index.device)[None, :]
    wanted = torch.where(wanted < 0, prompt_len + wanted, wanted)  # (batch, k)
    return (token_index[..., None] == wanted[:, None, :]).any(-1) & real


def site_edits(
    edits: Sequence[FeatureEdit], token_index: Tensor, lengths: Tensor, factors: Tensor | None = None
) -> dict[str, FeatureEdits]:
    """Each site's `FeatureEdits` for a chunk of columns with token indices `token_index`.

    Args:
        factors: (batch, len(edits), 2) per-row (factor, offset) overriding
            each edit's own (a response curve sweeps them over rows).
    """
    parts: dict[str, list[tuple[Tensor, ...]]] = {}
    for i, edit in enumerate(edits):
        rows, columns = position_mask(edit.positions, token_index, lengths).nonzero(as_tuple=True)
        if factors is None:
            factor, offset = (torch.full(rows.shape, v, device=rows.device) for v in edit.factors)
        else:
            factor, offset = factors[rows, i].unbind(-1)
        features = torch.full_like(rows, edit.feature)
        parts.setdefault(edit.site_key, []).append((rows, columns, features, factor, offset))
    return {key: FeatureEdits(*map(torch.cat, zip(*chunks, strict=True))) for key, chunks in parts.items()}


Watch = dict[str, Tensor]  # site key -> (k,) feature indices recorded there


def watch_of(nodes: Sequence[str], device: torch.device | str) -> Watch:
    """Feature node ids grouped by site key, in the order given."""
    grouped: dict[str, list[int]] = {}
    for node in nodes:
        site, layer, feature = parse_node_id(node)
        grouped.setdefault(site_key(site, layer), []).append(feature)
    return {key: torch.tensor(features, device=device) for key, features in grouped.items()}


def by_node(watch: Watch, acts: dict[str, Tensor]) -> dict[str, Tensor]:
    """Node id -> its column of the per-site activations `acts` (site key -> (..., k)), on the CPU."""
    return {
        f"{key}.{feature}": acts[key][..., column].cpu()
        for key, features in watch.items()
        for column, feature in enumerate(features.tolist())
    }


def with_edits(acts: Tensor, features: Tensor, edits: FeatureEdits | None) -> Tensor:
    """Activations (batch, n, k) of `features` with the entries `edits` sets at their new value."""
    if edits is None or len(edits.rows) == 0:
        return acts
    match = edits.features[:, None] == features[None, :]  # (n_edits, k)
    entry, column = match.nonzero(as_tuple=True)
    rows, positions = edits.rows[entry], edits.positions[entry]
    old = acts[rows, positions, column]
    acts[rows, positions, column] = edits.factor[entry].float() * old + edits.offset[entry].float()
    return acts


def steering(
    edits: dict[str, FeatureEdits], *, watch: Watch | None = None, record: dict[str, Tensor] | None = None
) -> Intervention:
    """Intervention applying `edits`; with `record`, it also stores the `watch` features'
    activations (batch, n, k) at their sites, after the edits."""
    apply = feature_edits(edits)

    def intervene(site: Site, x: Tensor) -> Tensor:
        if record is not None and watch and site.key in watch and site.reads:
            features = watch[site.key]
            record[site.key] = with_edits(site.feats_of(x, features).float(), features, edits.get(site.key))
        return apply(site, x)

    return intervene


class TokenChanges(NamedTuple):
    """Per row and step, k tokens and their probabilities clean and steered."""

    ids: Tensor  # (rows, steps, k)
    clean: Tensor
    steered: Tensor


class SteerResult(NamedTuple):
    """Rows are prompt p's return sequence r at p * num_return_sequences + r."""

    prompts: Prompts  # left-padded, repeated per return sequence
    clean_tokens: Tensor  # (rows, steps)
    steered_tokens: Tensor  # (rows, steps)
    kl: Tensor  # (rows, steps) KL(clean || steered) of the next token, on the clean continuation
    chosen: TokenChanges  # the clean continuation's own tokens, (rows, steps, 1)
    rose: TokenChanges  # largest p_steered - p_clean
    fell: TokenChanges  # most negative p_steered - p_clean
    activations: dict[str, tuple[Tensor, Tensor]]  # node -> (clean, steered), (rows, width + steps)


@torch.no_grad()
def steer(
    spliced: SplicedModel,
    prompts: Prompts,
    edits: Sequence[FeatureEdit],
    *,
    sampling: Sampling | None = None,
    num_return_sequences: int = 1,
    watch: Sequence[str] = (),
    top_tokens: int = 10,
) -> SteerResult:
    """Generate from `prompts` with and without `edits` and compare (see the module docstring).

    Args:
        spliced: the model with an SAE at every site an edit or watched node names.
        prompts: left-padded prompts (`generation.left_padded`).
        edits: the interventions, applied together.
        sampling: greedy (the default, 40 tokens), or temperature / top_p sampling
            seeded by its seed (the clean and steered runs draw the same random numbers).
        num_return_sequences: continuations per prompt (identical when greedy).
        watch: other feature node ids whose activations are recorded.
        top_tokens: tokens per step in `rose` and `fell`.
    """
    sampling = sampling or Sampling()
    rows = prompts.repeat(num_return_sequences)
    start = time.perf_counter()
    clean = generate(spliced, rows, sampling, desc="Clean generation").tokens
    steered = generate(
        spliced,
        rows,
        sampling,
        intervention_at=lambda columns: steering(site_edits(edits, columns, rows.lengths)),
        desc="Steered generation",
    ).tokens
    logger.info(
        "Phase 1, generation (%d rows x %d tokens, twice): %.1fs", *clean.shape, time.perf_counter() - start
    )
    start = time.perf_counter()
    recorded = watch_of(list(dict.fromkeys([*(edit.node for edit in edits), *watch])), clean.device)
    logits_clean, acts_clean = read_under_edits(spliced, rows, clean, (), recorded)
    logits_steered, acts_steered = read_under_edits(spliced, rows, clean, edits, recorded)
    kl, chosen, rose, fell = _step_changes(logits_clean, logits_steered, clean, top_tokens)
    logger.info("Phase 2, comparison on the clean text: %.1fs", time.perf_counter() - start)
    steered_acts = by_node(recorded, acts_steered)
    activations = {node: (a, steered_acts[node]) for node, a in by_node(recorded, acts_clean).items()}
    return SteerResult(rows, clean.cpu(), steered.cpu(), kl, chosen, rose, fell, activations)


def read_under_edits(
    spliced: SplicedModel, rows: Prompts, continuation: Tensor, edits: Sequence[FeatureEdit], watch: Watch
) -> tuple[Tensor, dict[str, Tensor]]:
    """Logits predicting each continuation token (rows, steps, d_vocab) and the `watch` features'
    activations (site key -> (rows, width + steps, k)), of prompt + `continuation` (rows, steps)
    in one forward under `edits`."""
    ids, mask = rows.extended(continuation)
    columns = rows.token_index(0, ids.shape[1])
    record: dict[str, Tensor] = {}
    with spliced.intervene(steering(site_edits(edits, columns, rows.lengths), watch=watch, record=record)):
        hidden = spliced.model.forward_cached(ids, mask)
    return spliced.model.unembed(hidden[:, rows.width - 1 : -1]).float(), record


def _step_changes(
    clean: Tensor, steered: Tensor, tokens: Tensor, k: int
) -> tuple[Tensor, TokenChanges, TokenChanges, TokenChanges]:
    """KL(clean || steered) per row and step; the probabilities of `tokens` (rows, steps), and of
    the k tokens that rose and fell most."""
    log_clean, log_steered = F.log_softmax(clean, dim=-1), F.log_softmax(steered, dim=-1)
    kl = F.kl_div(log_steered, log_clean, log_target=True, reduction="none").sum(-1)
    p_clean, p_steered = log_clean.exp(), log_steered.exp()
    change = p_steered - p_clean
    k = min(k, change.shape[-1])

    def changes(ids: Tensor) -> TokenChanges:
        return TokenChanges(ids.cpu(), p_clean.gather(-1, ids).cpu(), p_steered.gather(-1, ids).cpu())

    return (
        kl.cpu(),
        changes(tokens[..., None]),
        changes(change.topk(k).indices),
        changes((-change).topk(k).indices),
    )
