"""How much memory a run's SAEs need: their weights at the run's dtype plus the script's working set.

Weights: every SAE's tensors at SAE_DTYPE (`saes.weight_shapes` of its
cfg.json), each cast on the CPU before it moves to the device (`models.weights`).

Working set: a script's batched passes hold dense (rows, positions, d_sae)
arrays and, where they reach the unembedding, (rows, positions, d_vocab)
logits. Measured with PyTorch's allocator profiler on GPT-2-small shapes
(`benchmarks/bench_memory.py`, 32768- and 131072-latent TopK SAEs, 3 to 9
sites, 8 x 20 to 8 x 128 tokens), in units of one such array per pass:

- attribution (fast.py's node and edge phases): about 1.05 dense arrays per
  site (codes, baselines and gradients kept for the edges) plus 4 for the
  site being differentiated;
- encode (every feature of every site, one site at a time, no logits:
  hist.py, feature means, pipe.py's clean run): about 0.2 per site plus 3;
- labels (the contexts of a graph's few features over DATASET): about 0.4 in all;
- validation (val.py's clean and ablated passes): about 3 dense arrays
  whatever the number of sites, plus 3 copies of the logits.

The constants below round those up and count every array at 4 bytes (a
bfloat16 run keeps some of them in float32); a fixed margin covers the
model's other activations. pipe.py's batched ablations size their rows to the
memory left after loading (`algorithms.ablation_rows`); on a CPU that is a
fixed budget, counted here too.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sparse_coding.models.saes import SAEConfig, weight_shapes

# Per pass kind: (dense (rows, positions, d_sae) arrays per site, such arrays once per pass, logit
# arrays). pipe.py's ablations hold nothing of their own beyond their row budget (below).
PASS_COPIES = {
    "attribution": (1.25, 4.0, 1.0),
    "encode": (0.25, 4.0, 0.0),
    "labels": (0.1, 1.0, 0.0),
    "validation": (0.1, 4.0, 4.0),
    "ablation": (0.0, 0.0, 0.0),
}
# The model's other activations and allocator slack at these sizes stay under this.
MODEL_MARGIN_BYTES = 256 * 2**20
# pipe.py's ablation rows on a CPU (algorithms.ablation_rows.CPU_ROW_BUDGET_BYTES); on CUDA they
# take a quarter of what is free after loading, so they need no reserve.
CPU_ABLATION_BUDGET_BYTES = 1 << 30
ARRAY_BYTES = 4


@dataclass(frozen=True)
class Pass:
    """One batched pass of a script: `rows` sequences of `positions` tokens through every site."""

    kind: str  # a key of PASS_COPIES
    rows: int
    positions: int


@dataclass(frozen=True)
class Estimate:
    """Bytes a run's SAEs need on the device: weights and the largest pass's working set."""

    weights: int
    working: int

    @property
    def total(self) -> int:
        return self.weights + self.working


def sae_weight_bytes(cfg: SAEConfig, dtype: torch.dtype) -> int:
    """Bytes of one SAE's tensors at `dtype`."""
    n_elements = sum(int(torch.Size(shape).numel()) for shape in weight_shapes(cfg).values())
    return n_elements * dtype.itemsize


def pass_bytes(cfgs: Sequence[SAEConfig], one: Pass, d_vocab: int) -> int:
    """Working bytes of one pass through the sites of `cfgs` of a model with `d_vocab` logits."""
    per_site, per_pass, logits = PASS_COPIES[one.kind]
    tokens = one.rows * one.positions * ARRAY_BYTES
    dense = tokens * max((cfg.d_sae for cfg in cfgs), default=0)
    return int(dense * (per_site * len(cfgs) + per_pass) + tokens * d_vocab * logits)


def estimate(
    cfgs: Sequence[SAEConfig],
    dtype: torch.dtype,
    passes: Sequence[Pass],
    *,
    d_vocab: int,
    device_type: str = "cuda",
) -> Estimate:
    """What the SAEs of `cfgs` at `dtype` and the largest of `passes` need on a device of that type."""
    working = max((pass_bytes(cfgs, one, d_vocab) for one in passes), default=0) + MODEL_MARGIN_BYTES
    if device_type == "cpu" and any(one.kind == "ablation" for one in passes):
        working += CPU_ABLATION_BUDGET_BYTES
    return Estimate(sum(sae_weight_bytes(cfg, dtype) for cfg in cfgs), working)
