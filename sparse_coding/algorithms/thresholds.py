"""Per-feature activation thresholds: a high percentile (THRESHOLD_PERCENTILE) over a preclustered dataset.

For every spliced site s and SAE feature i the threshold is

    theta[s, i] = percentile_q { f[s, i](x_n[: t_n + 1]) at position t_n : n kept }   (q = 99.99 by default)

where f[s, i](x) at t is feature i's activation at position t of sequence x.
Which sequences n are kept, and where they are cut (t_n), comes from a k-means
preclustering of neuron-basis (model) residual activations, so that the
thresholds describe one kind of context. fast.py uses them to choose down-nodes.

Phases (each one stream over the dataset; memory does not grow with its length):
 1. Fit. Residual vectors r at the first layer of ACTS_LAYERS_SLICE (the hook of
    the resid SAE there, else hook_resid_pre), unit-normalised so that k-means
    clusters by cosine, fed to sklearn's `MiniBatchKMeans.partial_fit` in chunks
    of at least `FIT_CHUNK_TOKENS` tokens (the first chunk seeds k-means++ with
    SEED). Every real token counts except a leading BOS: BOS vectors are all
    alike (the attention sink), so they would fill a cluster of their own, and
    keeping that cluster would cut every sequence to BOS alone.
 2. Assign. Each token gets its nearest centre; sequence n is kept when one of
    its tokens lands in KEEPER_CLUSTER_INDEX, and cut after the first such token
    t_n. A keeper cluster no sequence reaches is an error.
 3. Collect. The spliced model runs on the kept rows of each batch, truncated to
    the batch's longest cut; causal attention makes position t_n there exactly
    the last position of the cut sequence. Each site's SAE encodes only that
    position (one (d_sae,) vector per kept sequence and site), and a running
    top-m per feature (`top_percentile`) absorbs it.
 4. Percentile of each feature from its top-m values (why top-m suffices: `top_percentile`).

The thresholds' cache (`thresholds.safetensors`, `thresholds.json`) is read
and written by `sparse_coding.pipelines.threshold_cache`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from sparse_coding.algorithms.top_percentile import percentile_from_top, top_count
from sparse_coding.errors import ConfigError, DatasetError
from sparse_coding.nodes import site_key
from sparse_coding.runtime import distributed
from sparse_coding.runtime.sharding import run_pass
from sparse_coding.splicing.splice import Site, SplicedModel
from sparse_coding.text.batches import TokenBatch

if TYPE_CHECKING:  # scikit-learn loads only when hist.py clusters (fast.py reads its cache without it)
    from sklearn.cluster import MiniBatchKMeans

logger = logging.getLogger(__name__)

FIT_CHUNK_TOKENS = 4096
# A fresh iterator over the same token batches on every call (one per phase).
BatchStream = Callable[[], Iterable[TokenBatch]]


class ThresholdResult(NamedTuple):
    """Output of `compute_thresholds`."""

    thresholds: dict[str, Tensor]  # site key -> (d_sae,) float32
    kmeans: MiniBatchKMeans  # fitted on unit-normalised vectors at `cluster_hook`
    cut_positions: Tensor  # (n_sequences,) long: last position kept, -1 = not kept
    cluster_sizes: Tensor  # (n_clusters,) long: tokens per cluster
    cluster_hook: str  # e.g. "blocks.9.hook_resid_pre"

    @property
    def n_kept(self) -> int:
        return int((self.cut_positions >= 0).sum())


def cluster_hook_name(spliced: SplicedModel, layer: int) -> str:
    """The resid SAE's hook at `layer` if one is spliced, else hook_resid_pre."""
    site = spliced.by_key.get(site_key("resid", layer))
    return site.sae.hook_name if site else f"blocks.{layer}.hook_resid_pre"


def compute_thresholds(
    spliced: SplicedModel,
    batches: BatchStream,
    *,
    cluster_layer: int,
    n_clusters: int,
    keeper_cluster: int,
    seed: int,
    percentile: float,
    n_batches: int | None = None,
) -> ThresholdResult:
    """Precluster `batches`; each spliced feature's percentile over the kept cuts.

    Args:
        spliced: the model with an SAE at every site that gets thresholds.
        batches: returns a fresh stream of the same right-padded batches per call.
        cluster_layer: layer whose residual stream is clustered.
        n_clusters, keeper_cluster, seed: NUM_CLUSTERS, KEEPER_CLUSTER_INDEX, SEED.
        percentile: in [0, 100], numpy's 'linear' definition.
        n_batches: expected number of batches, for progress bars only.
    """
    hook = cluster_hook_name(spliced, cluster_layer)
    start = time.perf_counter()
    with torch.no_grad():
        kmeans = fit_clusters(
            spliced, batches, layer=cluster_layer, n_clusters=n_clusters, seed=seed, n_batches=n_batches
        )
        logger.info("Phase 1: %d clusters at %s (%.1fs)", n_clusters, hook, time.perf_counter() - start)
        cuts, sizes = assign_cuts(
            spliced, batches, kmeans, layer=cluster_layer, keeper_cluster=keeper_cluster, n_batches=n_batches
        )
        n_kept = int((cuts >= 0).sum())
        logger.info(
            "Phase 2: %d of %d sequences kept (%.1fs)", n_kept, len(cuts), time.perf_counter() - start
        )
        m = top_count(n_kept, percentile)
        top = collect_top_values(spliced, batches, cuts, m=m, n_batches=n_batches)
    thresholds = {key: percentile_from_top(v, n_kept, percentile) for key, v in top.items()}
    logger.info("Phase 3: %d sites' thresholds (%.1fs)", len(thresholds), time.perf_counter() - start)
    return ThresholdResult(thresholds, kmeans, cuts, sizes, hook)


def fit_clusters(
    spliced: SplicedModel,
    batches: BatchStream,
    *,
    layer: int,
    n_clusters: int,
    seed: int,
    n_batches: int | None = None,
) -> MiniBatchKMeans:
    """Phase 1: MiniBatchKMeans on unit-normalised residual vectors, chunk by chunk.

    Under torchrun each rank computes its batches' vectors and rank 0 fits them
    in stream order after every round of batches (`_FitState.reduce`), so the
    chunks, and the fit, are a single process's.
    """

    def add(state: _FitState, index: int, batch: TokenBatch) -> None:
        state.pending.append((index, _unit_vectors(spliced, batch, layer)))

    state = run_pass(
        "hist: clusters",
        batches(),
        empty=lambda: _FitState.empty(n_clusters, seed),
        add=add,
        desc="hist 1/3: fitting clusters",
        total=n_batches,
        sync_every=distributed.world_size(),
    )
    if state.n_tokens == 0:
        raise DatasetError("DATASET yielded no tokens; check DATASET and its texts")
    if not hasattr(state.kmeans, "cluster_centers_") and distributed.broadcast(state.n_chunk) < n_clusters:
        raise ConfigError(
            f"NUM_CLUSTERS is {n_clusters}, but the dataset gave only {state.n_tokens} tokens "
            f"to cluster; lower NUM_CLUSTERS or raise NUM_SEQUENCES_EVALED"
        )
    if state.chunk:
        state.kmeans.partial_fit(np.concatenate(state.chunk))
    return distributed.broadcast(state.kmeans)


@dataclass
class _FitState:
    """Phase 1's running fit: rank 0's k-means and unfitted chunk; each rank's vectors not yet reduced."""

    kmeans: MiniBatchKMeans
    chunk: list[np.ndarray]  # rank 0: vectors not fitted yet, in stream order
    pending: list[tuple[int, np.ndarray]]  # (batch index, vectors) computed here since the last reduce
    n_tokens: int = 0  # tokens absorbed so far (rank 0's count, on every rank after a reduce)

    @classmethod
    def empty(cls, n_clusters: int, seed: int) -> _FitState:
        from sklearn.cluster import MiniBatchKMeans

        kmeans = MiniBatchKMeans(
            n_clusters, random_state=seed, batch_size=FIT_CHUNK_TOKENS, compute_labels=False
        )
        return cls(kmeans, [], [])

    @property
    def n_chunk(self) -> int:
        return sum(map(len, self.chunk))

    def reduce(self) -> _FitState:
        """Rank 0 fits every rank's pending vectors in stream order; the fit and counts go to every rank."""
        gathered = distributed.gather(self.pending)
        if gathered is not None:  # rank 0
            for _, vectors in sorted((entry for part in gathered for entry in part), key=lambda e: e[0]):
                self._absorb(vectors)
        self.pending = []
        self.kmeans, self.n_tokens = distributed.broadcast((self.kmeans, self.n_tokens))
        return self

    def _absorb(self, vectors: np.ndarray) -> None:
        self.chunk.append(vectors)
        self.n_tokens += len(vectors)
        if self.n_chunk >= max(FIT_CHUNK_TOKENS, self.kmeans.n_clusters):
            self.kmeans.partial_fit(np.concatenate(self.chunk))
            self.chunk = []


def assign_cuts(
    spliced: SplicedModel,
    batches: BatchStream,
    kmeans: MiniBatchKMeans,
    *,
    layer: int,
    keeper_cluster: int,
    n_batches: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Phase 2: cut position per sequence (-1: not kept) and tokens per cluster.

    Raises:
        DatasetError: no sequence reaches `keeper_cluster`.
    """

    def add(state: _CutState, index: int, batch: TokenBatch) -> None:
        mask = _cluster_tokens(batch, spliced).cpu()
        labels = torch.full(mask.shape, -1)  # (batch, pos); -1 at padding and BOS
        labels[mask] = torch.from_numpy(kmeans.predict(_unit_vectors(spliced, batch, layer))).long()
        state.sizes += torch.bincount(labels[mask], minlength=kmeans.n_clusters)
        hit = labels == keeper_cluster
        # argmax returns the first maximum: the first token in the keeper cluster.
        state.cuts[index] = torch.where(hit.any(dim=1), hit.int().argmax(dim=1), -1)

    state = run_pass(
        "hist: cuts",
        batches(),
        empty=lambda: _CutState({}, torch.zeros(kmeans.n_clusters, dtype=torch.long)),
        add=add,
        desc="hist 2/3: assigning clusters",
        total=n_batches,
    )
    cuts = [state.cuts[index] for index in sorted(state.cuts)]
    if not any(bool((c >= 0).any()) for c in cuts):
        raise DatasetError(
            f"No sequence reaches KEEPER_CLUSTER_INDEX {keeper_cluster}: tokens per "
            f"cluster are {state.sizes.tolist()}; choose a cluster with tokens, or change "
            f"NUM_CLUSTERS, SEED or the dataset"
        )
    return torch.cat(cuts), state.sizes


@dataclass
class _CutState:
    """Phase 2's cut positions per batch index, and tokens per cluster."""

    cuts: dict[int, Tensor]  # batch index -> (batch,) long
    sizes: Tensor  # (n_clusters,) long

    def reduce(self) -> _CutState:
        """Every rank's cuts and summed cluster sizes, on every rank."""
        cuts = {index: c for part in distributed.all_gather(self.cuts) for index, c in part.items()}
        return _CutState(cuts, distributed.all_sum(self.sizes))


def collect_top_values(
    spliced: SplicedModel, batches: BatchStream, cuts: Tensor, *, m: int, n_batches: int | None = None
) -> dict[str, Tensor]:
    """Phase 3: site key -> (<= m, d_sae) largest activations at the cuts, descending."""

    def add(state: _TopState, index: int, batch: TokenBatch) -> None:
        batch_cuts = cuts[batch.first_index : batch.first_index + len(batch.input_ids)]
        rows = (batch_cuts >= 0).nonzero().squeeze(1).to(batch.input_ids.device)
        if len(rows) == 0:
            return
        positions = batch_cuts.to(rows.device)[rows]
        width = int(positions.max()) + 1  # later tokens cannot change earlier positions
        ids, mask = batch.input_ids[rows, :width], batch.attention_mask[rows, :width]
        for key, values in _feats_at(spliced, ids, mask, positions).items():
            state.absorb(key, values)

    state = run_pass(
        "hist: top values",
        batches(),
        empty=lambda: _TopState({}, m, spliced.device),
        add=add,
        desc="hist 3/3: SAE activations",
        total=n_batches,
        device=spliced.device,
    )
    return state.top


@dataclass
class _TopState:
    """Phase 3's running top-m activations per site and feature."""

    top: dict[str, Tensor]  # site key -> (<= m, d_sae), descending
    m: int
    device: torch.device

    def absorb(self, key: str, values: Tensor) -> None:
        stacked = values if key not in self.top else torch.cat([self.top[key], values])
        self.top[key] = stacked.topk(min(self.m, len(stacked)), dim=0).values

    def reduce(self) -> _TopState:
        """Every rank's candidates merged (top-m of their union), on every rank."""
        merged = _TopState({}, self.m, self.device)
        for part in distributed.all_gather(self.top):
            for key, values in part.items():
                merged.absorb(key, values.to(self.device))
        return merged


def _neuron_acts(spliced: SplicedModel, batch: TokenBatch, layer: int) -> Tensor:
    """Model activations (batch, pos, d_model) at `cluster_hook_name(spliced, layer)`."""
    hidden = spliced.embed(batch.input_ids)
    key = site_key("resid", layer)
    if key not in spliced.by_key:  # hook_resid_pre: the input of block `layer`
        return spliced.run_blocks(hidden, 0, layer, batch.attention_mask)
    seen: dict[str, Tensor] = {}

    def record(site: Site, x: Tensor) -> Tensor:
        if site.key == key:
            seen[key] = x
        return x

    with spliced.intervene(record):
        spliced.run_blocks(hidden, 0, layer + 1, batch.attention_mask)
    return seen[key]


def _cluster_tokens(batch: TokenBatch, spliced: SplicedModel) -> Tensor:
    """(batch, pos) bool: the tokens that are clustered — real ones, except a leading BOS."""
    leading_bos = batch.input_ids[:, :1] == spliced.model.config.bos_token_id
    mask = batch.attention_mask.bool().clone()
    mask[:, :1] &= ~leading_bos
    return mask


def _unit_vectors(spliced: SplicedModel, batch: TokenBatch, layer: int) -> np.ndarray:
    """Unit-normalised residual vectors (clustered tokens, d_model), row-major, float32."""
    acts = _neuron_acts(spliced, batch, layer)[_cluster_tokens(batch, spliced)]
    return F.normalize(acts.float(), dim=-1).cpu().numpy()


def _feats_at(
    spliced: SplicedModel, input_ids: Tensor, attention_mask: Tensor, positions: Tensor
) -> dict[str, Tensor]:
    """Every site's SAE activations (rows, d_sae) at one position per row, and no more."""
    rows = torch.arange(len(positions), device=positions.device)
    feats: dict[str, Tensor] = {}

    def encode_at(site: Site, x: Tensor) -> Tensor:
        feats[site.key] = site.feats(x[rows, positions]).float()
        return x

    last_layer = max(site.layer for site in spliced.sites)
    with spliced.intervene(encode_at):
        spliced.run_blocks(spliced.embed(input_ids), 0, last_layer + 1, attention_mask)
    return feats
