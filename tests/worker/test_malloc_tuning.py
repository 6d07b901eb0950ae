"""`tune_malloc`: a worker keeps the blocks a task frees for the next task (glibc)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

_FAULTS_PER_BLOCK = """
import resource, sys
import numpy as np
from worker.cli.serve import tune_malloc


def scores() -> None:  # a batch's float64 score matrix and a copy, as `Blend.score_many`'s
    total = np.zeros((100, 3659))
    total += 1
    total.astype(np.float32).astype(np.float64)


if sys.argv[1] == "tuned":
    assert tune_malloc()
scores()  # the heap grows once
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    scores()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""


def _faults_per_block(mode: str) -> float:
    # glibc's defaults, whatever the environment tunes
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-c", _FAULTS_PER_BLOCK, mode],
        capture_output=True, text=True, check=True, env=env,
    )  # fmt: skip
    return float(out.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_a_freed_block_is_used_again_without_faulting_its_pages_in() -> None:
    # 100 x 3,659 float64 is 2.9 MB, 715 pages: untuned, glibc gives them back to the kernel
    assert _faults_per_block("default") > 1000
    assert _faults_per_block("tuned") < 10
