"""Device-agnostic precision and device choices, so that no recipe hard-codes a device.

accelerate places the model and wraps the optimiser; what it does not decide is the precision a trl config
should ask for. trl configs default to bf16, which transformers refuses on a CPU. ``resolve_precision`` picks,
from what is present: CUDA with bf16 support and Ascend NPU -> bf16; older CUDA -> fp16; MPS and CPU -> fp32
(and on CPU, no gradient checkpointing, which only slows tiny models down).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

logger = logging.getLogger(__name__)


def detect_device() -> str:
    """The accelerator type present: ``cuda``, ``npu``, ``xpu``, ``mps`` or ``cpu``."""
    if torch.cuda.is_available():
        return "cuda"
    npu = getattr(torch, "npu", None)  # registered by torch_npu on Ascend machines
    if npu is not None and npu.is_available():
        return "npu"
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        return "xpu"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def preferred_precision(device: str | None = None) -> str:
    """``bf16``, ``fp16`` or ``fp32`` for ``device`` (detected when None)."""
    device = device or detect_device()
    if device == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device in ("npu", "xpu"):
        return "bf16"
    return "fp32"  # CPU, and MPS where bf16 autocast support depends on the OS version


def resolve_precision(args: Any, device: str | None = None) -> Any:
    """Fill in ``bf16``/``fp16`` (and gradient checkpointing on CPU) on a trl config *before* its post-init.

    Only fields left at ``None`` are decided here; an explicit ``bf16: true`` in a config is kept (and
    transformers will refuse it on a machine that can't honour it, which is the right error).
    """
    device = device or detect_device()
    if getattr(args, "use_cpu", False):
        device = "cpu"
    precision = preferred_precision(device)
    if getattr(args, "bf16", None) is None:
        args.bf16 = precision == "bf16" and not getattr(args, "fp16", False)
    if getattr(args, "fp16", None) is None:
        args.fp16 = precision == "fp16" and not args.bf16
    if getattr(args, "gradient_checkpointing", False) is None:
        # Checkpointing trades compute for memory: worth it on accelerators, only a slowdown on CPU.
        args.gradient_checkpointing = device != "cpu"
    logger.debug("device=%s bf16=%s fp16=%s", device, args.bf16, args.fp16)
    return args


def model_dtype(device: str | None = None) -> torch.dtype:
    """The dtype to load weights in for inference on ``device``."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(preferred_precision(device), torch.float32)


def close_distributed() -> None:
    """Wait for every process of the run, then tear its process group down: a recipe's last call under
    ``accelerate launch``. Without it a process that finished first (a rank that does not save) exits while the
    others still write, and a gloo worker can abort on the way out ("terminate called without an active exception",
    seen once in two-process CPU runs), which fails the launch after the model was saved. A no-op in one process."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
