"""What this machine does fast, for the settings whose best value depends on it.

bf16 mixed precision pays on CUDA and on CPUs with native bf16 matrix units (Intel AMX or
AVX512-BF16): on this project's 2-core Xeon a bf16 matmul runs about 8x faster than fp32 and a
SmolLM2 SFT step about 2x faster, and a SmolLM2 decoding step with bf16 weights 1.6-1.9x faster
(half the bytes to stream; batches 8-64, benchmarks/train_step.py, 2026-11-21). On other CPUs bf16 is emulated and
slower than fp32, so "auto" settings must ask rather than assume.
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
