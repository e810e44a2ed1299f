"""Model merging for fastslow: small pure methods, streaming safetensors merges, mergekit-compatible configs.

Function-level API (what the distillation loop calls)::

    from train.merging import merge_checkpoints
    out = merge_checkpoints("ema", [student_k], "runs/ema_k", base_model="runs/ema_k-1", parameters={"beta": 0.7})

See docs/merging.md for methods, parameters and the YAML format.
"""

from train.merging.api import (
    MANIFEST_NAME,
    IncompatibleModelsError,
    MergeError,
    NonFiniteError,
    TensorMismatchError,
    merge_checkpoints,
    merge_from_config,
    merge_lora,
    merge_state_dicts,
    open_model,
)
from train.merging.config import METHODS, MergeConfig, MergeConfigError, ModelInput
from train.merging.io import CheckpointError
from train.merging.lora import AdapterError

__all__ = [
    "MANIFEST_NAME",
    "METHODS",
    "AdapterError",
    "CheckpointError",
    "IncompatibleModelsError",
    "MergeConfig",
    "MergeConfigError",
    "MergeError",
    "ModelInput",
    "NonFiniteError",
    "TensorMismatchError",
    "merge_checkpoints",
    "merge_from_config",
    "merge_lora",
    "merge_state_dicts",
    "open_model",
]
