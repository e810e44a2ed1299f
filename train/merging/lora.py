"""PEFT LoRA adapters as merge inputs: the base checkpoint with ``scaling * B @ A`` added, one tensor at a time.

An adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``, as ``PeftModel.save_pretrained`` writes)
becomes a read-only view of the merged model, so "merge an adapter into its base" is a one-input merge and "merge
several adapters" is any merge method over such views, all streamed. The arithmetic is PEFT's
(``peft/tuners/lora/layer.py`` ``get_delta_weight``): ``scaling = lora_alpha / r`` (``/ sqrt(r)`` with rsLoRA), the
delta is transposed for ``fan_in_fan_out`` layers and for embeddings, and tensors the adapter saved whole
(``modules_to_save``, resized embeddings saved as ``base_layer``) replace the base's. Variants whose merge is not a
plain low-rank delta (DoRA, LoRA bias, other PEFT types) are refused rather than merged wrongly.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch

from train.merging.io import CheckpointError, SafetensorsCheckpoint, TensorInfo

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PREFIX = "base_model.model."


class AdapterError(ValueError):
    """An adapter that cannot be merged (unsupported PEFT type or option, or tensors that do not fit the base)."""


def is_adapter(folder: str | Path) -> bool:
    return (Path(folder) / ADAPTER_CONFIG).is_file()


def _pattern_value(patterns: dict, module: str, default):
    """PEFT's rank/alpha pattern lookup: a key matches a module name it ends (as whole dotted parts)."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


class LoraSource:
    """The tensors of ``base`` with a LoRA adapter merged in, read lazily with the same interface as a checkpoint."""

    def __init__(self, base_dir: str | Path, adapter_dir: str | Path):
        self.base_dir, self.adapter_dir = Path(base_dir), Path(adapter_dir)
        cfg_path = self.adapter_dir / ADAPTER_CONFIG
        self.adapter_config = json.loads(cfg_path.read_text())
        self._check_config(cfg_path)
        weights = self.adapter_dir / ADAPTER_WEIGHTS
        if not weights.is_file():
            raise AdapterError(f"{self.adapter_dir}: no {ADAPTER_WEIGHTS} (only safetensors adapters are supported)")
        self.base = SafetensorsCheckpoint(self.base_dir)
        self.adapter = SafetensorsCheckpoint.from_files(self.adapter_dir, [weights])
        self.files = [*self.base.files, weights]
        self._lora: dict[str, tuple[str, str, float, bool]] = {}  # base tensor -> (A key, B key, scaling, transpose)
        self._replace: dict[str, str] = {}  # base tensor -> adapter key holding its full replacement
        self._index_adapter()

    def _check_config(self, path: Path) -> None:
        c = self.adapter_config
        if c.get("peft_type") != "LORA":
            raise AdapterError(f"{path}: peft_type {c.get('peft_type')!r} is not supported; only LORA adapters merge")
        for flag, why in [("use_dora", "DoRA"), ("lora_bias", "LoRA bias"), ("use_qalora", "QA-LoRA")]:
            if c.get(flag):
                raise AdapterError(f"{path}: {why} adapters are not supported by the streaming merge (use peft)")
        if c.get("layer_replication"):
            raise AdapterError(f"{path}: layer_replication changes the architecture; merge it with peft")

    def _index_adapter(self) -> None:
        c = self.adapter_config
        r_default, alpha_default = c["r"], c["lora_alpha"]
        base_names = set(self.base.names())
        for key in self.adapter.names():
            if not key.startswith(_PREFIX):
                raise AdapterError(f"{self.adapter_dir}: unexpected adapter tensor {key!r}")
            rest = key[len(_PREFIX) :]
            m = re.fullmatch(r"(.+)\.(lora_A\.weight|lora_embedding_A)", rest)
            if m:
                module, kind = m.groups()
                b_key = key.replace("lora_A.weight", "lora_B.weight").replace("lora_embedding_A", "lora_embedding_B")
                target = f"{module}.weight"
                if target not in base_names:
                    raise AdapterError(
                        f"{self.adapter_dir}: adapter tensor {key!r} targets {target!r}, not in the base"
                    )
                r = _pattern_value(c.get("rank_pattern") or {}, module, r_default)
                alpha = _pattern_value(c.get("alpha_pattern") or {}, module, alpha_default)
                scaling = alpha / math.sqrt(r) if c.get("use_rslora") else alpha / r
                transpose = kind == "lora_embedding_A" or bool(c.get("fan_in_fan_out"))
                self._lora[target] = (key, b_key, scaling, transpose)
            elif re.search(r"\.(lora_B\.weight|lora_embedding_B)$", rest):
                continue  # read together with its A
            else:
                target = rest.replace(".base_layer.", ".")
                if target not in base_names:
                    raise AdapterError(
                        f"{self.adapter_dir}: adapter tensor {key!r} replaces {target!r}, which the base checkpoint "
                        "does not have (tied weights or a different architecture?)"
                    )
                if self.adapter.info(key).shape != self.base.info(target).shape:
                    raise AdapterError(
                        f"{self.adapter_dir}: {key!r} has shape {self.adapter.info(key).shape}, base tensor "
                        f"{target!r} has {self.base.info(target).shape} (resized vocabulary?)"
                    )
                self._replace[target] = key

    @property
    def folder(self) -> Path:
        return self.adapter_dir

    def names(self) -> list[str]:
        return self.base.names()

    def info(self, name: str) -> TensorInfo:
        return self.base.info(name)

    def delta(self, name: str) -> torch.Tensor | None:
        """The LoRA delta ``scaling * B @ A`` for a base tensor (float32), or None when the adapter leaves it alone."""
        if name not in self._lora:
            return None
        a_key, b_key, scaling, transpose = self._lora[name]
        a = self.adapter.read(a_key).float()
        b = self.adapter.read(b_key).float()
        d = (b @ a) * scaling
        return d.T if transpose else d

    def read(self, name: str, prefault: bool = False) -> torch.Tensor:
        if name in self._replace:
            t = self.adapter.read(self._replace[name], prefault=prefault)
        else:
            t = self.base.read(name, prefault=prefault)
        d = self.delta(name)
        if d is None:
            return t
        if tuple(d.shape) != tuple(t.shape):
            raise AdapterError(f"{self.adapter_dir}: LoRA delta for {name!r} is {tuple(d.shape)}, tensor is {t.shape}")
        return (t.float() + d).to(t.dtype)

    def start_hashing(self, executor) -> None:
        self.base.start_hashing(executor)
        self.adapter.start_hashing(executor)

    def file_hashes(self) -> dict[Path, str]:
        return {**self.base.file_hashes(), **self.adapter.file_hashes()}

    def close(self) -> None:
        self.base.close()
        self.adapter.close()


def resolve_adapter_base(adapter_dir: str | Path) -> Path:
    """The local base model folder an adapter names in ``base_model_name_or_path`` (never downloaded)."""
    cfg = json.loads((Path(adapter_dir) / ADAPTER_CONFIG).read_text())
    base = cfg.get("base_model_name_or_path")
    if not base or not Path(base).is_dir():
        raise CheckpointError(
            f"{adapter_dir}: adapter's base_model_name_or_path {base!r} is not a local folder; give the base "
            f"explicitly as 'BASE_DIR+{adapter_dir}' (fastslow never downloads models)"
        )
    return Path(base)


__all__ = ["AdapterError", "LoraSource", "is_adapter", "resolve_adapter_base"]
