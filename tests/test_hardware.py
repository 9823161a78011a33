"""hardware.keep_freed_memory: a freed 256 MB tensor is reused without faulting its pages in again
(checked in fresh processes, since the setting is process-wide)."""

import platform
import subprocess
import sys

import pytest

_PROGRAM = """
import resource, sys, torch
from zerosearch.hardware import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
for round in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = torch.ones(64 * 2**20)  # 256 MB, written through
    del t
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _PROGRAM, mode], capture_output=True, text=True,
                         check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(platform.system() != "Linux" or not platform.libc_ver()[0] == "glibc",
                    reason="keep_freed_memory only changes glibc's malloc")
def test_freed_memory_is_reused_without_page_faults():
    pages = 256 * 2**20 // 4096
    assert _faults("default") > pages // 2  # glibc maps a fresh block: every page faults again
    assert _faults("keep") < pages // 20  # the block from the round before is reused
