"""How the C library hands memory back, tuned for long CPU training runs (glibc only).

A training step allocates and frees tensors of hundreds of megabytes; by default glibc serves each
with a fresh ``mmap`` and unmaps it on free, so every step faults those pages in again, zeroed by
the kernel (and, on a virtual machine whose host reclaims freed guest memory, populated again by
the host). :func:`keep_freed_memory` keeps them in the heap; :func:`memory_cap_callback` gives them
back when the machine runs short. Both change process-wide state, so they run only where a run asks
for them (``cpu_tuning``; see :func:`zerosearch.cpu.tune_process`), never on a GPU.
"""

from __future__ import annotations

KEEP_FREED_BYTES = 2**31 - 1
"""glibc's mmap threshold under :func:`keep_freed_memory` (the largest ``mallopt`` accepts)."""


def _glibc():
    """The C library through ctypes when it is glibc (whose malloc the functions below tune), else
    None."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it (and mallopt's parameters)
    except (OSError, AttributeError):
        return None
    return libc


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse instead of returning it to the kernel.

    The mmap threshold goes to its largest value, so blocks of hundreds of megabytes come from the
    heap and stay there after a free. The heap's top is never trimmed either (trim threshold -1,
    which ``mallopt`` documents as "disable trimming"): with the largest finite threshold glibc
    still cut the heap by gigabytes after each GRPO step's optimisation, and the next step faulted
    it all in again. Reuse is partial (small allocations split freed blocks, so the heap still
    grows at times). The cost: the process keeps its high-water mark of memory, which
    :func:`memory_cap_callback` hands back when the machine runs short. Process-wide and permanent;
    returns False (and changes nothing) where the C library is not glibc. Measured effect:
    ``docs/performance.md``.
    """
    import ctypes

    libc = _glibc()
    if libc is None:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, ctypes.c_int(KEEP_FREED_BYTES))
                and libc.mallopt(m_trim_threshold, ctypes.c_int(-1)))


def resident_bytes() -> int | None:
    """This process's resident memory (Linux ``/proc/self/statm``), None elsewhere."""
    import os

    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def release_freed_memory() -> bool:
    """Hand the heap's free pages back to the kernel now (glibc ``malloc_trim``); False where the C
    library is not glibc."""
    import ctypes

    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(ctypes.c_size_t(0))
    return True


def available_bytes() -> int | None:
    """Memory the machine could still hand out (Linux ``MemAvailable``), None where unknown."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def default_memory_reserve() -> int:
    """A quarter of the machine's physical memory."""
    import os

    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4


def memory_cap_callback(limit_bytes: int | None = None, reserve_bytes: int | None = None):
    """A transformers ``TrainerCallback`` that bounds what :func:`keep_freed_memory` keeps: after a
    step, the heap's free pages go back to the kernel when the machine runs short (under
    ``reserve_bytes`` available, default a quarter of the physical memory) or, if ``limit_bytes``
    is given, when the process holds more than that.

    Releasing is not free: a page handed back is faulted in again, zeroed, the next time the heap
    reaches it, and on a virtual machine whose host reclaims freed guest memory that also costs the
    host's page population. So the callback releases only when memory is short, not whenever the
    process is large (a GRPO step peaks at about half of a small machine's memory; releasing at a
    fixed fraction gave most of it back after every step and faulted it in again).

    When a release frees under a tenth of what the process holds, the memory is mostly live and the
    thresholds move (the limit to 1.25x what is left, the reserve to 0.8x what the machine then has
    available), so steps do not pay for trimming that gains nothing. Without any release the kept
    heap only grows: blocks of varying sizes fragment it."""
    from transformers import TrainerCallback

    reserve = default_memory_reserve() if reserve_bytes is None else reserve_bytes

    class MemoryCap(TrainerCallback):
        releases = 0
        cap = limit_bytes
        floor = reserve

        def on_step_end(self, args, state, control, **kwargs):
            held, free = resident_bytes(), available_bytes()
            over = held is not None and MemoryCap.cap is not None and held > MemoryCap.cap
            short = free is not None and free < MemoryCap.floor
            if (over or short) and release_freed_memory():
                MemoryCap.releases += 1
                after = resident_bytes() or 0
                if held is not None and after > 0.9 * held:  # mostly live memory: trimming every
                    if MemoryCap.cap is not None:            # step would only re-fault pages
                        MemoryCap.cap = max(MemoryCap.cap, int(after * 1.25))
                    if short:
                        MemoryCap.floor = min(MemoryCap.floor, int(0.8 * (available_bytes() or 0)))

    return MemoryCap()
