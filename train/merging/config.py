"""Merge configuration: mergekit's YAML format (the subset fastslow supports) and the method table.

A mergekit config runs unchanged when it uses ``models:`` (or a single ``slices:`` entry that covers every layer of
every source), one of the supported ``merge_method`` values, and ``parameters`` given as scalars, layer gradients
(lists) or ``filter``/``value`` conditions, exactly as mergekit evaluates them. Keys mergekit has and fastslow does not
implement (``modules``, layer stacking, ``tokenizer_source: union``, a ``tokenizer:`` block) raise a clear error
instead of being ignored.

Defaults are mergekit's (``mergekit/merge_methods/registry.py`` and ``generalized_task_arithmetic.py``):

==================  ====  =========  =======  ======  =====================================
method              base  normalize  rescale  lambda  per-model parameters
==================  ====  =========  =======  ======  =====================================
linear              no    true       -        -       weight (required)
task_arithmetic     yes   false      false    1.0     weight (required), density (unused)
ties                yes   true       false    1.0     weight (required), density=1.0
dare_linear         yes   false      true     1.0     weight (required), density=1.0
dare_ties           yes   false      true     1.0     weight (required), density=1.0
slerp               yes   -          -        -       (global ``t``, required)
ema (fastslow)      opt.  -          -        -       (global ``beta``, default 0.5)
==================  ====  =========  =======  ======  =====================================
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

REQUIRED = object()


class MergeConfigError(ValueError):
    """A merge configuration that is invalid or uses a mergekit feature fastslow does not support."""


@dataclass(frozen=True)
class MethodSpec:
    """What a merge method needs: whether it uses a base model and its parameters with their defaults."""

    name: str
    base: str  # "required", "optional" or "unused"
    global_params: dict[str, Any]
    model_params: dict[str, Any]
    sparsify: str | None = None
    consensus: str | None = None
    description: str = ""


# int8_mask only changes the dtype of mergekit's sign mask (memory); results are the same, so it is accepted and unused
_GTA_GLOBAL = {"int8_mask": False, "lambda": 1.0, "rescale": False}

METHODS: dict[str, MethodSpec] = {
    "linear": MethodSpec(
        "linear", "unused", {"normalize": True}, {"weight": REQUIRED}, description="weighted average of the models"
    ),
    "task_arithmetic": MethodSpec(
        "task_arithmetic",
        "required",
        {**_GTA_GLOBAL, "normalize": False},
        {"weight": REQUIRED, "density": 1.0},  # density is accepted (as mergekit does) and unused: no sparsification
        description="base + lambda * sum of weighted deltas",
    ),
    "ties": MethodSpec(
        "ties",
        "required",
        {**_GTA_GLOBAL, "normalize": True},
        {"weight": REQUIRED, "density": 1.0},
        sparsify="magnitude",
        consensus="sum",
        description="trim deltas by magnitude, elect signs, disjoint mean",
    ),
    "dare_linear": MethodSpec(
        "dare_linear",
        "required",
        {**_GTA_GLOBAL, "normalize": False, "rescale": True},
        {"weight": REQUIRED, "density": 1.0},
        sparsify="random",
        description="drop-and-rescale deltas (seeded), weighted sum",
    ),
    "dare_ties": MethodSpec(
        "dare_ties",
        "required",
        {**_GTA_GLOBAL, "normalize": False, "rescale": True},
        {"weight": REQUIRED, "density": 1.0},
        sparsify="random",
        consensus="sum",
        description="drop-and-rescale deltas (seeded), elect signs, disjoint merge",
    ),
    "slerp": MethodSpec(
        "slerp", "required", {"t": REQUIRED}, {}, description="spherical interpolation from base (t=0) to the other"
    ),
    "ema": MethodSpec(
        "ema",
        "optional",
        {"beta": 0.5},
        {},
        description="running average: avg = beta*avg + (1-beta)*model, base_model (if any) is the running average",
    ),
}

DTYPE_ALIASES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float64": torch.float64,
}

VOCAB_MISMATCH = ("error", "truncate", "source")


def parse_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    if name is None or isinstance(name, torch.dtype):
        return name
    key = str(name).removeprefix("torch.").lower()
    if key not in DTYPE_ALIASES:
        raise MergeConfigError(f"unknown dtype {name!r}; expected one of {sorted(DTYPE_ALIASES)}")
    return DTYPE_ALIASES[key]


@dataclass
class ModelInput:
    """One input model: a local ``save_pretrained`` folder, a PEFT adapter folder, or ``base_dir+adapter_dir``."""

    model: str
    parameters: dict[str, Any] = field(default_factory=dict)
    layer_range: tuple[int, int] | None = None


@dataclass
class MergeConfig:
    """A parsed merge configuration (mergekit keys plus fastslow's own, documented in docs/merging.md)."""

    merge_method: str
    models: list[ModelInput]
    base_model: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    dtype: str | None = None
    out_dtype: str | None = None
    tokenizer_source: str | None = None
    # fastslow's own keys (mergekit ignores unknown top-level keys, so these never break a mergekit run)
    vocab_mismatch: str = "error"
    random_seed: int = 0
    max_shard_size: str | int = "5GB"

    def __post_init__(self) -> None:
        self.validate()

    @property
    def method(self) -> MethodSpec:
        return METHODS[self.merge_method]

    def validate(self) -> None:
        if self.merge_method not in METHODS:
            raise MergeConfigError(f"unknown merge_method {self.merge_method!r}; fastslow supports {sorted(METHODS)}")
        if not self.models:
            raise MergeConfigError("no models to merge: 'models' is empty")
        spec = self.method
        if spec.base == "required" and not self.base_model:
            raise MergeConfigError(f"merge_method {spec.name!r} needs a base_model")
        others = self.non_base_models()
        if spec.name == "slerp" and len(others) != 1:
            raise MergeConfigError(
                f"slerp merges exactly two models (base_model and one other); got {len(others)} besides the base"
            )
        if spec.base == "required" and not others and spec.name != "slerp":
            raise MergeConfigError(f"{spec.name} needs at least one model besides the base_model")
        if self.vocab_mismatch not in VOCAB_MISMATCH:
            raise MergeConfigError(f"vocab_mismatch must be one of {VOCAB_MISMATCH}, got {self.vocab_mismatch!r}")
        if self.tokenizer_source == "union":
            raise MergeConfigError(
                "tokenizer_source: union is not supported (it needs token-wise embedding permutation); "
                "use 'base', a model path, and vocab_mismatch: truncate|source"
            )
        parse_dtype(self.dtype)
        parse_dtype(self.out_dtype)
        known = set(spec.global_params) | set(spec.model_params)
        for where, params in [("parameters", self.parameters)] + [
            (f"models[{i}].parameters", m.parameters) for i, m in enumerate(self.models)
        ]:
            for key, value in params.items():
                if key not in known:
                    raise MergeConfigError(
                        f"{where}: unknown parameter {key!r} for merge_method {spec.name!r}; known: {sorted(known)}"
                    )
                default = spec.global_params.get(key, spec.model_params.get(key))
                _check_setting(f"{where}.{key}", value, bool if isinstance(default, bool) else float)

    def non_base_models(self) -> list[ModelInput]:
        return [m for m in self.models if m.model != self.base_model]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for m in d["models"]:
            if m["layer_range"] is None:
                del m["layer_range"]
            else:
                m["layer_range"] = list(m["layer_range"])
        return d

    # -- construction --------------------------------------------------------------------------------------------

    @classmethod
    def from_yaml(cls, path: str | Path) -> MergeConfig:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise MergeConfigError(f"{path}: invalid YAML ({e})") from e
        if not isinstance(data, dict):
            raise MergeConfigError(f"{path}: a merge config must be a YAML mapping")
        try:
            return cls.from_dict(data)
        except MergeConfigError as e:
            raise MergeConfigError(f"{path}: {e}") from e

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MergeConfig:
        data = dict(data)
        for unsupported, why in [
            ("modules", "multi-module merges"),
            ("tokenizer", "the 'tokenizer:' block (token-wise embedding surgery)"),
            ("chat_template", "'chat_template' (the template is copied with the tokenizer_source's tokenizer)"),
        ]:
            if data.get(unsupported) is not None:
                raise MergeConfigError(f"mergekit key {unsupported!r} is not supported by fastslow: {why}")
        if "merge_method" not in data:
            raise MergeConfigError("missing required key 'merge_method'")
        slices = data.pop("slices", None)
        models = data.pop("models", None)
        parameters = dict(data.pop("parameters", None) or {})
        if slices is not None and models is not None:
            raise MergeConfigError("give either 'models' or 'slices', not both")
        if slices is not None:
            models, slice_params = _models_from_slices(slices)
            parameters = {**parameters, **slice_params}  # slice-level parameters take precedence, as in mergekit
        if not isinstance(models, list):
            raise MergeConfigError("'models' must be a list of {model: PATH, parameters: {...}}")
        inputs = []
        for i, m in enumerate(models):
            if isinstance(m, str):
                m = {"model": m}
            if not isinstance(m, dict) or "model" not in m:
                raise MergeConfigError(f"models[{i}] must be a mapping with a 'model' key, got {m!r}")
            extra = set(m) - {"model", "parameters", "layer_range"}
            if extra:
                raise MergeConfigError(f"models[{i}]: unknown keys {sorted(extra)}")
            lr = m.get("layer_range")
            inputs.append(ModelInput(str(m["model"]), dict(m.get("parameters") or {}), tuple(lr) if lr else None))
        known = {f for f in cls.__dataclass_fields__} - {"models", "parameters"}
        extra = set(data) - known
        if extra:
            raise MergeConfigError(f"unknown top-level keys {sorted(extra)}")
        base = data.pop("base_model", None)
        return cls(
            models=inputs,
            parameters=parameters,
            base_model=str(base) if base is not None else None,
            **data,
        )


def _models_from_slices(slices: Any) -> tuple[list[dict], dict]:
    """A single slice whose sources cover whole models is the same as ``models:``; anything else is layer surgery."""
    if not isinstance(slices, list) or len(slices) != 1:
        raise MergeConfigError(
            "only a single 'slices' entry covering whole models is supported (layer stacking/passthrough is not)"
        )
    sl = slices[0]
    if sl.get("base_model") or sl.get("residual_weight") is not None:
        raise MergeConfigError("per-slice base_model/residual_weight are not supported; use the top-level base_model")
    sources = []
    for src in sl.get("sources") or []:
        if "layer_range" not in src:
            raise MergeConfigError(f"slice source {src.get('model')!r} has no layer_range")
        sources.append({"model": src["model"], "parameters": src.get("parameters"), "layer_range": src["layer_range"]})
    return sources, dict(sl.get("parameters") or {})


def _check_setting(where: str, setting: Any, kind: type) -> None:
    """A parameter setting holds values of ``kind`` (a number, or a bool for switches) as a scalar, a gradient
    list, or ``{filter, value}`` conditions; anything else (``weight: heavy``) is an error naming the key, raised
    when the config is read rather than deep inside the merge."""
    if isinstance(setting, dict):
        setting = [setting]
    if isinstance(setting, list):
        for i, item in enumerate(setting):
            if isinstance(item, dict):
                if "value" not in item:
                    raise MergeConfigError(f"{where}[{i}]: a condition needs a 'value' ({{filter: ..., value: ...}})")
                _check_setting(f"{where}[{i}].value", item["value"], kind)
            else:
                _check_setting(f"{where}[{i}]", item, kind)
        return
    ok = (
        isinstance(setting, bool)
        if kind is bool
        else isinstance(setting, (int, float)) and not isinstance(setting, bool)
    )
    if setting is not None and not ok:
        expected = "true or false" if kind is bool else "a number"
        raise MergeConfigError(f"{where}: expected {expected} (or a list or conditions of them), got {setting!r}")


# -- per-tensor parameter evaluation (mergekit semantics) ---------------------------------------------------------

_LAYER_RE = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.")


def tensor_t(name: str, num_layers: int | None) -> float:
    """mergekit's position of a tensor in the network, used to interpolate gradient parameters.

    Layer ``i`` of ``n`` gets ``i / (n - 1)``; weights before the layers (embeddings) get 0 and weights after them
    (final norm, lm_head) get 1.
    """
    m = _LAYER_RE.search(name)
    if m and num_layers:
        return int(m.group(1)) / (num_layers - 1) if num_layers > 1 else 1.0
    return 0.0 if ("embed" in name or "wte" in name or "wpe" in name) else 1.0


def evaluate_setting(name: str, setting: Any, t: float) -> Any:
    """Value of a parameter setting for tensor ``name`` at position ``t``: scalar, gradient or filter conditions."""
    if setting is None or isinstance(setting, (bool, int, float, str)):
        return setting
    if isinstance(setting, dict):
        setting = [setting]
    if isinstance(setting, list):
        if not setting:
            return None
        if all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in setting):
            scaled = t * (len(setting) - 1)
            i0 = int(scaled)
            i1 = min(len(setting) - 1, i0 + 1)
            frac = scaled - i0
            return (1 - frac) * setting[i0] + frac * setting[i1]
        if all(isinstance(e, (bool, int, float, str)) for e in setting):
            return setting[int(t * (len(setting) - 1))]
        for cond in setting:
            if not isinstance(cond, dict) or "value" not in cond:
                raise MergeConfigError(f"bad parameter condition {cond!r}: expected {{filter: ..., value: ...}}")
            filt = cond.get("filter")
            if filt is None or filt == "*" or filt in name:
                return evaluate_setting(name, cond["value"], t)
        return None
    raise MergeConfigError(f"unexpected parameter value {setting!r}")


def resolve_parameters(
    config: MergeConfig, name: str, t: float, models: list[ModelInput]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Global and per-model parameters for one tensor, with mergekit's precedence and defaults.

    Per-model parameters fall back to the top-level ``parameters`` and then to the method default; a missing required
    parameter is an error naming the model and tensor.
    """
    spec = config.method
    glob = {}
    for key, default in spec.global_params.items():
        value = evaluate_setting(name, config.parameters.get(key), t)
        if value is None:
            if default is REQUIRED:
                raise MergeConfigError(f"missing required parameter {key!r} for {spec.name} (tensor {name})")
            value = default
        glob[key] = value
    per_model = []
    for m in models:
        p = {}
        for key, default in spec.model_params.items():
            value = evaluate_setting(name, m.parameters.get(key), t)
            if value is None:
                value = evaluate_setting(name, config.parameters.get(key), t)
            if value is None:
                if default is REQUIRED:
                    raise MergeConfigError(
                        f"missing required parameter {key!r} for model {m.model!r} (tensor {name}, {spec.name})"
                    )
                value = default
            p[key] = value
        per_model.append(p)
    return glob, per_model


__all__ = [
    "METHODS",
    "MergeConfig",
    "MergeConfigError",
    "MethodSpec",
    "ModelInput",
    "evaluate_setting",
    "parse_dtype",
    "resolve_parameters",
    "tensor_t",
]
