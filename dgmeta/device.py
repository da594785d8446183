"""The one device a run computes on (``--device``) and its arithmetic (``--precision``).

``--device auto|cpu|cuda|cuda:N``: ``auto`` is CUDA when ``torch.cuda.is_available()``, else the
CPU; ``cuda`` is the process's own GPU (``LOCAL_RANK`` under torchrun, else GPU 0). A device the
machine lacks is a one-line :class:`ConfigError` raised by ``RunConfig.validate``, i.e. before any
MLflow run exists.

``--precision fp32|bf16|fp16``: autocast on the device's type; fp16 adds a gradient scaler
(:func:`grad_scaler`). Two combinations are refused rather than run slowly or wrongly:

* bf16 on a CPU without native bf16 instructions (no ``avx512_bf16``/``amx_bf16``, or ``bf16`` on
  Arm): every bf16 operation is emulated there, and a 5-step PACS run did not finish in 15
  minutes where fp32 takes a few (issue #16, an AVX2-only EPYC).
* fp16 on the CPU (no loss-scaled CPU path worth having) and fp16 with a meta mode: the
  scaler protects the gradients of the base loss only, while the meta-gradient and the
  Feature-Critic's gradients are taken with ``torch.autograd.grad`` on unscaled losses and would
  underflow in fp16; bf16 has fp32's range and needs no scaling.

This module sits below every pipeline stage (like ``dgmeta.errors``): it imports only torch.
"""

from __future__ import annotations

import functools
import os
import re
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from dgmeta.errors import ConfigError

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_CUDA = re.compile(r"^cuda(?::(\d+))?$")
_CPU_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}  # x86 AVX-512 BF16, Intel AMX, Arm FEAT_BF16


def resolve_device(name: str | None = "auto") -> torch.device:
    """The ``torch.device`` for ``--device name``; a one-line ConfigError when it is not there."""
    text = "auto" if name is None else str(name).strip().lower()
    if text == "auto":
        return _cuda_device(None, "auto") if torch.cuda.is_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    match = _CUDA.match(text)
    if match is None:
        raise ConfigError(f"unknown --device {name!r}", "choose auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise ConfigError(
            f"--device {text}: this machine has no usable CUDA GPU (torch {torch.__version__}, {build})",
            "use --device cpu, or --device auto to take a GPU only where there is one",
        )
    return _cuda_device(None if match.group(1) is None else int(match.group(1)), text)


def _cuda_device(index: int | None, given: str) -> torch.device:
    count = torch.cuda.device_count()
    if index is None:  # one process per GPU under torchrun
        index = int(os.environ.get("LOCAL_RANK", 0))
    if not 0 <= index < count:
        raise ConfigError(f"--device {given}: this machine has {count} CUDA device(s), no cuda:{index}", f"use cuda:0..cuda:{count - 1}")
    return torch.device("cuda", index)


def device_label(device: torch.device) -> str:
    """``cpu`` or ``cuda:0 (NVIDIA H200)``, for logs and MLflow params."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True if the CPU computes bf16 natively (see the module docstring)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: ask oneDNN, which checks the instruction set itself
        return bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)())
    return cpuinfo_has_native_bf16(text)


def cpuinfo_has_native_bf16(text: str) -> bool:
    """Whether ``/proc/cpuinfo`` text lists a bf16 instruction set (x86 ``flags``, Arm ``Features``)."""
    flags: set[str] = set()
    for line in text.splitlines():
        if line.lower().startswith(("flags", "features")):
            flags.update(line.split(":", 1)[-1].split())
    return bool(flags & _CPU_BF16_FLAGS)


def check_precision(precision: str, device: torch.device, meta: str = "none") -> str:
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown --precision {precision!r}", "choose fp32, bf16 or fp16")
    if device.type == "cpu" and precision == "bf16" and not cpu_has_native_bf16():
        raise ConfigError(
            "--precision bf16: this CPU has no native bf16 (no avx512_bf16 or amx_bf16 in /proc/cpuinfo), so bf16 is emulated and runs many times slower than fp32",
            "use --precision fp32 on this machine",
        )
    if precision == "fp16" and device.type == "cpu":
        raise ConfigError("--precision fp16 needs a CUDA GPU", "use --precision fp32 (or bf16 on a CPU with native bf16)")
    if precision == "fp16" and meta not in ("none", ""):
        raise ConfigError(
            f"--precision fp16 with --meta {meta}: fp16 loss scaling covers the base gradients, not the meta-gradient",
            "use --precision bf16 (fp32's range, no scaling needed) or fp32",
        )
    if device.type == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"--precision bf16: {torch.cuda.get_device_name(device)} has no bf16", "use --precision fp16 or fp32")
    return precision


def autocast(precision: str, device_type: str = "cpu"):
    """Mixed precision on ``device_type`` (a no-op context for fp32)."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type, dtype=_DTYPES[precision])


def grad_scaler(precision: str, device: torch.device) -> "torch.amp.GradScaler | None":
    """fp16's dynamic loss scaler; None for fp32/bf16, which need none."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


def module_device(module: nn.Module) -> torch.device:
    """Where ``module`` computes: its first parameter's (or buffer's) device, else the CPU."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def configure_device(device: torch.device, deterministic: bool = False) -> None:
    """Process-wide settings for computing on ``device``: on CUDA, make it current and let cuDNN
    pick the fastest convolution algorithms for the (fixed) batch shapes, unless determinism was
    asked for. Nothing on the CPU."""
    if device.type != "cuda":
        return
    torch.cuda.set_device(device)
    torch.backends.cudnn.benchmark = not deterministic


def host_to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``; to a GPU through pinned host memory, so the copy does not wait
    for the host and overlaps the computation queued before it."""
    if device.type != "cuda" or tensor.device == device:
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)
