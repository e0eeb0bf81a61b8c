"""Which floating-point precision the networks run in: bf16 autocast + channels-last, or float32.

bf16 pays only where the hardware does bf16 arithmetic natively: NVIDIA GPUs (Ampere and later), and CPUs with
AMX-BF16 (Intel Sapphire Rapids and later) or AVX512-BF16 (Intel Cooper Lake, AMD Zen 4 and later). On such a
CPU one optimisation step runs about 3x faster and inference 2-5x (see ``benchmarks/``). On a CPU without
them, PyTorch emulates bf16 and it is *slower* than float32, so there the networks stay in float32. The setting
is detected, never assumed; ``"bf16"`` or ``"fp32"`` forces it (``COLORIZERS_PRECISION``, ``--precision``).

Only the networks run in bf16. Losses, the colour conversion and the final recombination of the predicted a,b
with the photo's own L stay float32, so the output's L is the input's in either precision.
"""
from __future__ import annotations

import contextlib
import functools
import os

import torch

PRECISIONS = ("auto", "bf16", "fp32")
PRECISION_ENV = "COLORIZERS_PRECISION"
#: /proc/cpuinfo flags of native bf16 arithmetic on x86 (AMX tiles, AVX512-BF16 dot products).
NATIVE_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def _cpuinfo_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU does bf16 arithmetic in hardware (AMX-BF16 or AVX512-BF16), as PyTorch's own CPU probe
    (``torch._C._cpu``) reports it, or else as /proc/cpuinfo's flags say."""
    probe = getattr(torch._C, "_cpu", None)
    checks = [getattr(probe, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    checks = [check for check in checks if check is not None]
    if checks:
        try:
            return any(bool(check()) for check in checks)
        except RuntimeError:
            pass
    return any(flag in _cpuinfo_flags() for flag in NATIVE_BF16_CPU_FLAGS)


def device_has_native_bf16(device: str | torch.device) -> bool:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_has_native_bf16()
    return False


def resolve_precision(precision: str | None, device: str | torch.device) -> str:
    """``"bf16"`` or ``"fp32"`` for ``device``. ``precision``: ``"auto"`` (bf16 where the device does it natively),
    ``"bf16"``, ``"fp32"``, or ``None`` for ``$COLORIZERS_PRECISION`` (default ``"auto"``)."""
    if precision is None:
        precision = os.environ.get(PRECISION_ENV, "auto").strip().lower() or "auto"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bf16" if device_has_native_bf16(device) else "fp32"
    return precision


def memory_format(precision: str) -> torch.memory_format:
    """Channels-last goes with bf16 (oneDNN's and cuDNN's fast convolution layout); float32 stays contiguous."""
    return torch.channels_last if precision == "bf16" else torch.contiguous_format


def autocast(device: str | torch.device, precision: str):
    """bf16 autocast on ``device`` for ``precision == "bf16"``; a no-op for ``"fp32"``."""
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
