"""allocator: with the thresholds raised, freed large tensors' pages are reused, not re-faulted.

Subprocesses: the setting is process-wide, so each case needs a fresh process.
"""

import subprocess
import sys

import pytest

from sparse_coding.runtime.allocator import keep_freed_memory

FAULTS_OF_A_LATER_ROUND = """
import resource, sys, torch
from sparse_coding.runtime.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
for _ in range(4):  # rounds of six 60 MB tensors, every page touched, then freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    tensors = [torch.ones(15_000_000) for _ in range(6)]
    del tensors
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", FAULTS_OF_A_LATER_ROUND, mode], capture_output=True, text=True, check=True
    )
    return int(done.stdout)


@pytest.mark.skipif(not keep_freed_memory(), reason="not glibc")
def test_freed_large_tensors_are_reused_instead_of_faulted_in_again():
    default, kept = _faults("default"), _faults("keep")
    assert default > 50_000  # 360 MB of 4 KiB pages, mapped afresh every round
    assert kept < default / 10
