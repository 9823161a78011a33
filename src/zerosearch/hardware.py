"""What this machine does fast, for the settings whose best value depends on it.

bf16 mixed precision pays on CUDA and on CPUs with native bf16 matrix units (Intel AMX or
AVX512-BF16): on this project's 2-core Xeon a bf16 matmul runs about 8x faster than fp32 and a
SmolLM2 SFT step about 2x faster, and a SmolLM2 decoding step with bf16 weights 1.6-1.9x faster
(half the bytes to stream; batches 8-64, benchmarks/train_step.py, 2026-11-21). On other CPUs bf16 is emulated and
slower than fp32, so "auto" settings must ask rather than assume.

Training also pays for how the C library hands memory back: see :func:`keep_freed_memory`.
"""

from __future__ import annotations


def bf16_is_fast() -> bool:
    """True on a CUDA GPU with bf16, or a CPU whose oneDNN has native bf16 kernels."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def inference_dtype(device: str = "cpu"):
    """The dtype "auto" means for generation: bf16 where it runs natively (see :func:`bf16_is_fast`;
    on a CPU ``device`` must be the CPU), fp32 elsewhere."""
    import torch

    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if device == "cpu" and bf16_is_fast() else torch.float32


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

    A training step allocates and frees tensors of hundreds of megabytes (logits over the
    vocabulary, activations, gradients). glibc serves every block above its mmap threshold (dynamic,
    at most 32 MB by default) with a fresh ``mmap`` and unmaps it on free, so each step faults every
    page of them in again, zeroed by the kernel. Raising the mmap and trim thresholds to 2 GiB keeps
    them in the heap: ``benchmarks/train_step.py`` measured 79-90 s of optimisation a step against
    106-113 s without (2026-11-22, this project's 2-core CPU; README, "Training speed"). Reuse is
    partial: small allocations land in freed blocks and split them, so the heap still grows at times
    and some pages fault in again. The heap's top is never trimmed either (trim threshold -1, which
    ``mallopt`` documents as "disable trimming"): with the largest finite threshold, 2 GiB, glibc
    still cut the heap by 3-8 GB after each GRPO step's optimisation (seen with ``strace``), and the
    next step faulted it all in again. The cost: the process keeps its high-water mark of memory,
    which :func:`memory_cap_callback` hands back when the machine runs short. Process-wide and
    permanent; returns False (and changes nothing) where the C library is not glibc.
    """
    import ctypes

    libc = _glibc()
    if libc is None:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, ctypes.c_int(KEEP_FREED_BYTES))
                and libc.mallopt(m_trim_threshold, ctypes.c_int(-1)))


def has_c_compiler() -> bool:
    """Whether a C/C++ compiler is on PATH (torch.compile's inductor builds CPU kernels with it)."""
    import shutil

    return any(shutil.which(name) for name in ("cc", "gcc", "clang", "g++"))


def has_python_headers() -> bool:
    """Whether this Python's development headers are installed (inductor's CPU kernels include
    ``Python.h``; Debian and Ubuntu ship it in ``python3-dev``)."""
    import sysconfig
    from pathlib import Path

    return Path(sysconfig.get_path("include"), "Python.h").exists()


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
    reaches it, and on a virtual machine whose host reclaims freed guest memory (as this project's
    does, within seconds) that costs 1.2-1.6 s per GB. An earlier version released whenever the
    process held more than half the physical memory: a GRPO step of ``benchmarks/train_step.py``
    peaks at about 12 GB on the 24 GB machine, so every step gave 8 GB back and faulted it in
    again. Holding the peak costs nothing while the machine has memory to spare.

    When a release frees under a tenth of what the process holds, the memory is mostly live and the
    thresholds move (the limit to 1.25x what is left, the reserve to 0.8x what the machine then has
    available), so steps do not pay for trimming that gains nothing (a 300-step SFT run held 14 GB
    after trimming and ran at half speed trimming every step). Without any release the kept heap
    only grows: blocks of varying sizes fragment it, and a 300-step SmolLM2 SFT run held 18 GB
    resident (2026-11-22, ``benchmarks/sim_smollm2.sh``) on a 24 GB machine."""
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
