"""What this machine does fast, and the one function that turns it into a run's settings.

Every setting whose best value depends on the device (the dtype of the weights, bf16 autocast,
the inference dtype, TRL's fused LM head, the written-out CPU decoding step, the CPU memory
tuning) is decided by :func:`runtime_choices`, so a GPU run and a CPU run differ in one place and a
test can ask what a run on another device would do. bf16 pays on CUDA and on CPUs with native bf16
kernels (Intel AMX or AVX512-BF16); elsewhere it is emulated and slower than fp32, so "auto" asks
the hardware rather than assuming. CPU-only tuning lives in :mod:`zerosearch.cpu`.
"""

from __future__ import annotations

from dataclasses import dataclass


def bf16_is_fast(device: str | None = None) -> bool:
    """True on a CUDA GPU with bf16, or a CPU whose oneDNN has native bf16 kernels. ``device``:
    ``cpu`` or ``cuda`` (None: CUDA when it is available)."""
    import torch

    kind = _device_kind(device)
    if kind == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if kind != "cpu":  # mps, xpu...: not probed, fp32
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _device_kind(device: str | None) -> str:
    """The device type of a string such as ``cuda:1`` (None: ``cuda`` when available, else
    ``cpu``)."""
    if device is None:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device).split(":")[0]


@dataclass(frozen=True)
class RuntimeChoices:
    """The device-dependent settings of one run (made by :func:`runtime_choices`)."""

    device: str
    """The device type: ``cpu``, ``cuda`` (or another torch device type, treated as neither)."""
    bf16_native: bool
    """Whether bf16 matmuls run natively on this device (GPU, AMX or AVX512-BF16)."""
    weights_dtype: str
    """dtype the trained weights are kept in (``model.dtype``; auto: float32 master weights, which
    the optimizer state follows)."""
    autocast: bool
    """bf16 autocast for the optimisation's forward passes (``training.bf16``; auto: where bf16 is
    native). The matmuls run in bf16, reductions and the loss in fp32, weights stay as they are."""
    generation_dtype: str
    """dtype inference runs in under "auto" (rollouts, evaluation, the in-process simulator)."""
    fused_lm_head: bool
    """TRL's tiled LM head (auto: on GPUs; the plain head is faster on a CPU)."""
    decode_step: bool
    """Rollout decoding through :mod:`zerosearch.cpu.decode_step` (oneDNN packed bf16 weights):
    CPUs with native bf16 only."""
    keep_freed_memory: bool
    """glibc's malloc keeps freed memory (:func:`zerosearch.cpu.memory.keep_freed_memory`):
    process-wide, so only where asked (``cpu_tuning``) and only on a CPU."""
    memory_cap: bool
    """The callback that hands kept memory back when the machine runs short (with the above)."""


DTYPES = ("auto", "float32", "bfloat16")
"""Values of the dtype settings."""


def runtime_choices(device: str | None = None, *, dtype: str = "auto", bf16: bool | str = "auto",
                    fused_lm_head: bool | str = "auto", cpu_tuning: bool = False,
                    bf16_native: bool | None = None) -> RuntimeChoices:
    """The settings a run on ``device`` (None: CUDA when available, else the CPU) uses for the
    given config values (``auto`` resolved here, explicit values kept). ``cpu_tuning`` asks for the
    process-wide CPU memory tuning; it is never applied on a GPU. ``bf16_native`` overrides the
    hardware probe (to ask what another machine would do). Raises ValueError for bf16 autocast
    asked for where bf16 would be emulated (slower than fp32) and for unknown values."""
    kind = _device_kind(device)
    native = bf16_is_fast(kind) if bf16_native is None else bool(bf16_native)
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if bf16 not in (True, False, "auto") or fused_lm_head not in (True, False, "auto"):
        raise ValueError(f"bf16 and fused_lm_head are true, false or auto (got {bf16!r}, "
                         f"{fused_lm_head!r})")
    if bf16 is True and not native:
        raise ValueError(f"bf16 needs a GPU or a CPU with native bf16 (AMX / AVX512-BF16); this "
                         f"{kind} would emulate it, slower than fp32")
    cpu_memory = bool(cpu_tuning) and kind == "cpu"
    return RuntimeChoices(
        device=kind, bf16_native=native,
        weights_dtype="float32" if dtype == "auto" else dtype,
        autocast=native if bf16 == "auto" else bool(bf16),
        generation_dtype="bfloat16" if native else "float32",
        fused_lm_head=(kind == "cuda") if fused_lm_head == "auto" else bool(fused_lm_head),
        decode_step=kind == "cpu" and native,
        keep_freed_memory=cpu_memory, memory_cap=cpu_memory)


def inference_dtype(device: str = "cpu"):
    """The torch dtype "auto" means for generation on ``device`` (:func:`runtime_choices`)."""
    import torch

    return getattr(torch, runtime_choices(device).generation_dtype)


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
