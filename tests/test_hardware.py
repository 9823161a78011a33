"""cpu.memory.keep_freed_memory: large tensors come from glibc's heap, which keeps them after they are
freed, instead of a fresh mmap per allocation that is unmapped on free (checked in fresh processes,
since the setting is process-wide)."""

import platform
import subprocess
import sys

import pytest

_PROGRAM = """
import sys, torch
from zerosearch.cpu.memory import keep_freed_memory

def heap_mb():
    for line in open("/proc/self/maps"):
        if "[heap]" in line:
            start, end = line.split()[0].split("-")
            return (int(end, 16) - int(start, 16)) >> 20
    return 0

if sys.argv[1] == "keep":
    assert keep_freed_memory()
POLICIES = {"cap": dict(limit_bytes=1, reserve_bytes=0),  # a limit this process is over
            "short": dict(reserve_bytes=2**62),  # a machine with less available than the reserve
            "roomy": dict(reserve_bytes=0)}  # no limit, memory to spare: nothing is released
if sys.argv[2:]:  # the memory cap's callback
    from zerosearch.cpu.memory import memory_cap_callback, resident_bytes
    cap = memory_cap_callback(**POLICIES[sys.argv[2]])  # (imports transformers before the free)
t = torch.ones(64 * 2**20)  # 256 MB
during = heap_mb()
del t
if sys.argv[2:]:
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
    """Over its limit, or on a machine short of memory, the heap's free pages go back to the kernel;
    after a release that frees nothing the callback backs off; with memory to spare it keeps them
    (a released page costs a fault and, on a VM, the host's page population when reused)."""
    for policy in ("cap", "short"):
        out = subprocess.run([sys.executable, "-c", _PROGRAM, "keep", policy], capture_output=True,
                             text=True, check=True)
        before, after, releases = map(int, out.stdout.split()[-3:])
        assert before - after >= 200, policy  # the freed 256 MB left the process
        assert releases == 2, policy  # the second trim freed nothing, so the third step did not trim
    out = subprocess.run([sys.executable, "-c", _PROGRAM, "keep", "roomy"], capture_output=True,
                         text=True, check=True)
    before, after, releases = map(int, out.stdout.split()[-3:])
    assert releases == 0 and before - after < 64  # kept for the next step


_TOP = """
import torch
from zerosearch.cpu.memory import keep_freed_memory, resident_bytes
assert keep_freed_memory()
x = [torch.ones(64 * 2**20) for _ in range(10)]  # 2.5 GB, the last blocks at the heap's top
held = resident_bytes()
while x:
    x.pop()  # freed from the top down: the top's free chunk grows past 2 GiB
print(held >> 20, resident_bytes() >> 20)
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="keep_freed_memory only changes glibc's malloc")
def test_the_heap_top_is_not_trimmed():
    """glibc trims a free top over its trim threshold even at the largest finite one (2 GiB): a
    GRPO step's freed activations went back to the kernel after every optimisation."""
    out = subprocess.run([sys.executable, "-c", _TOP], capture_output=True, text=True, check=True)
    held, after = map(int, out.stdout.split()[-2:])
    assert held >= 2500 and held - after < 100
