"""hardware.keep_freed_memory: large tensors come from glibc's heap, which keeps them after they are
freed, instead of a fresh mmap per allocation that is unmapped on free (checked in fresh processes,
since the setting is process-wide)."""

import platform
import subprocess
import sys

import pytest

_PROGRAM = """
import sys, torch
from zerosearch.hardware import keep_freed_memory

def heap_mb():
    for line in open("/proc/self/maps"):
        if "[heap]" in line:
            start, end = line.split()[0].split("-")
            return (int(end, 16) - int(start, 16)) >> 20
    return 0

if sys.argv[1] == "keep":
    assert keep_freed_memory()
if sys.argv[2:] == ["cap"]:  # the memory cap's callback, with a limit this process is over
    from zerosearch.hardware import memory_cap_callback, resident_bytes
    cap = memory_cap_callback(limit_bytes=1)  # (imports transformers before the block is freed)
t = torch.ones(64 * 2**20)  # 256 MB
during = heap_mb()
del t
if sys.argv[2:] == ["cap"]:
    before = resident_bytes()
    cap.on_step_end(None, None, None)
    after = resident_bytes()
    cap.on_step_end(None, None, None)  # nothing left to free: trims, then backs off
    cap.on_step_end(None, None, None)
    print(before >> 20, after >> 20, type(cap).releases)
    sys.exit()
print(during, heap_mb())
"""


def _heap(mode: str) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", _PROGRAM, mode], capture_output=True, text=True,
                         check=True)
    during, after = out.stdout.split()[-2:]
    return int(during), int(after)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="keep_freed_memory only changes glibc's malloc")
def test_large_blocks_come_from_the_heap_and_stay_after_free():
    during, after = _heap("default")
    assert during < 256  # glibc served the block with its own mmap, unmapped on free
    during, after = _heap("keep")
    assert during >= 256 and after >= 256  # from the heap, and kept there for the next step


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="keep_freed_memory only changes glibc's malloc")
def test_memory_cap_hands_kept_pages_back():
    out = subprocess.run([sys.executable, "-c", _PROGRAM, "keep", "cap"], capture_output=True,
                         text=True, check=True)
    before, after, releases = map(int, out.stdout.split()[-3:])
    assert before - after >= 200  # the freed 256 MB left the process
    assert releases == 2  # the second trim freed nothing, so the third step did not trim
