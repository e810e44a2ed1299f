"""trl configs that choose precision and gradient checkpointing from the device (see :mod:`train.core.device`).

Use these instead of trl's own so the same YAML runs on a CPU laptop and on a GPU or NPU cluster. ``SFTConfig`` also
carries ``length_micro_batches`` (:mod:`train.core.micro_batches`, read by ``train.sft.FastslowSFTTrainer``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trl

from train.core.device import resolve_precision

_BF16_HELP = (
    "bf16 mixed precision. Left unset, fastslow decides from the device: on for CUDA with bf16 support and "
    "Ascend NPU, off on CPU and MPS (train.core.device.resolve_precision)."
)
_GC_HELP = (
    "Gradient checkpointing. Left unset, fastslow decides from the device: on for accelerators, off on CPU, "
    "where it only slows small models down."
)

_MICRO_HELP = (
    "Train each device batch as this many micro-batches of rows of similar length, their gradients "
    "accumulated before the one optimizer step: the same rows and the same update (the loss is normalised by the "
    "whole batch's tokens), fewer padded tokens; the split points are the ones that pad least. 1: off. For batches "
    "that mix short and long rows (direct answers beside chains of thought) where padding-free attention is not "
    "available, as on a CPU; each micro-batch costs a forward and backward of its own, so a few are enough "
    "(scripts/bench/sft_step.py). Not with DeepSpeed, whose engine counts every backward as a micro-step."
)


@dataclass
class SFTConfig(trl.SFTConfig):
    """trl's ``SFTConfig`` with device-chosen precision and gradient checkpointing."""

    bf16: bool | None = field(default=None, metadata={"help": _BF16_HELP})
    gradient_checkpointing: bool | None = field(default=None, metadata={"help": _GC_HELP})
    length_micro_batches: int = field(default=1, metadata={"help": _MICRO_HELP})

    def __post_init__(self) -> None:
        if self.length_micro_batches < 1:
            raise ValueError(f"length_micro_batches: {self.length_micro_batches}; 1 (off) or more")
        resolve_precision(self)
        super().__post_init__()


@dataclass
class GRPOConfig(trl.GRPOConfig):
    """trl's ``GRPOConfig`` with device-chosen precision and gradient checkpointing."""

    bf16: bool | None = field(default=None, metadata={"help": _BF16_HELP})
    gradient_checkpointing: bool | None = field(default=None, metadata={"help": _GC_HELP})

    def __post_init__(self) -> None:
        resolve_precision(self)
        super().__post_init__()
