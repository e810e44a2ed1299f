"""trl configs that choose precision and gradient checkpointing from the device (see :mod:`train.core.device`).

Use these instead of trl's own so the same YAML runs on a CPU laptop and on a GPU or NPU cluster.
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


@dataclass
class SFTConfig(trl.SFTConfig):
    """trl's ``SFTConfig`` with device-chosen precision and gradient checkpointing."""

    bf16: bool | None = field(default=None, metadata={"help": _BF16_HELP})
    gradient_checkpointing: bool | None = field(default=None, metadata={"help": _GC_HELP})

    def __post_init__(self) -> None:
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
