"""Exact percentiles of many columns from a running top-m of each (phases 3 and 4 of `thresholds`).

Why top-m rather than a (kept, d_sae) matrix per site: 100k kept sequences at
24576 latents are 9.8 GB per site in float32, 350 GB for GPT-2 small's 36
sites. The percentile needs far less. numpy's default ('linear') q-th
percentile of n values sorted ascending, v_0 <= ... <= v_{n-1}, is

    h = (n - 1) q / 100,   j = floor(h),   P = v_j + (h - j) (v_{j+1} - v_j)

(v_n := v_{n-1}). It reads only v_j and v_{j+1}, which are among the n - j
largest values. Writing h = (n - 1) - (n - 1)(1 - q / 100) and using
floor(a - b) >= a - ceil(b) for an integer a gives
n - j <= 1 + ceil((n - 1)(1 - q / 100)): a handful of values, whatever n.
Phase 2 counts n before phase 3 starts, so phase 3 keeps m = n - j + 1 values
(capped at n; the extra one covers a floor that rounds the other way in float
arithmetic): 12 values per feature for q = 99.99 and n = 100k. The result is
numpy's percentile over all kept activations, exactly up to float rounding.

A percentile q resolves only when the top (100 - q)% of the n values holds at
least one of them, n >= 100 / (100 - q) (`samples_to_resolve`): q = 99.99
needs 10,000 kept sequences. Below that, it is interpolated between the two
largest values, i.e. about the maximum, and `sparse_coding.pipelines.hist` warns.
"""

import math

from torch import Tensor


def samples_to_resolve(percentile: float) -> int:
    """Fewest values whose top (100 - percentile)% holds one: below it, the percentile is ~the maximum."""
    if percentile >= 100:
        return 1  # the maximum, by definition
    return math.ceil(round(100 / (100 - percentile), 9))


def top_count(n: int, percentile: float) -> int:
    """How many largest of n values fix their percentile (see the module doc)."""
    return min(n, n - math.floor((n - 1) * percentile / 100) + 1)


def percentile_from_top(top: Tensor, n: int, percentile: float) -> Tensor:
    """numpy's 'linear' percentile of n values per column, from their top rows.

    Args:
        top: (m, d) the m largest of the n values of each column, descending,
            with m >= top_count(n, percentile).
    """
    h = (n - 1) * percentile / 100
    j = min(math.floor(h), n - 1)
    assert n - 1 - j < len(top), "top holds too few values for this percentile"
    low = top[n - 1 - j].float()  # v_j; float32, not float64: MPS has none
    high = top[max(n - 2 - j, 0)].float()  # v_{j+1}; v_{n-1} again when j = n - 1
    return (low + (h - j) * (high - low)).cpu()
