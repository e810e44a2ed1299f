"""The pipeline YAML: the base model, the data, each stage's recipe config with its overrides, the evaluation.

A config is read into :class:`PipelineConfig` (its sections are the dataclasses below); an unknown key, a wrong type
or a stage that names no recipe is a :class:`PipelineConfigError` naming the file and the key. ``quick:`` holds
overrides (same shape as the file) that ``--quick`` lays over the config: the smoke run of the same plan.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from train.core.cli import read_yaml_mapping
from train.core.modes import THINK_FORMATS
from train.sampling.params import SamplerConfig

RECIPES = ("sft", "distill", "grpo", "dual_system")
EVAL_CHECKS = ("exact", "benchmark")
EVAL_DTYPES = ("auto", "float32", "bfloat16", "float16")
# Merges are not a stage of their own: distillation merges each iteration with the ones before (its merge_* keys,
# set in its YAML or the stage's overrides), and a standalone merge is recipes/merge.py on finished models.
NOT_A_STAGE = {
    "merge": "distillation merges its iterations itself (merge_method and the other merge_* keys of its YAML or "
    "the stage's overrides); merge finished models with recipes/merge.py"
}


class PipelineConfigError(ValueError):
    """A pipeline YAML that cannot run: the message names the file and the key."""


@dataclass
class WorldConfig:
    """The arithmetic world (tiny runs only): model, problems, teacher pool and the dual-system stage's pools."""

    size: str = field(default="small", metadata={"help": "train.world.tiny size preset of the initial model."})
    n_train: int = field(default=6000, metadata={"help": "Training problems (levels 1-3), slow and fast replies."})
    n_test: int = field(default=100, metadata={"help": "Held-out problems per level (levels 1, 2, 3: equal thirds)."})
    teacher_k: int = field(default=4, metadata={"help": "Teacher replies per prompt; the shortest correct is kept."})
    teacher_error_rate: float = field(default=0.2, metadata={"help": "The teacher's chance of a wrong result."})
    teacher_verbosity: float = field(default=0.5, metadata={"help": "The teacher's chance of a padded step."})
    warmup_examples: int = field(default=3000, metadata={"help": "Pool rows in the warm-up (base model) slice."})
    warmup_levels: list[int] | None = field(
        default=None,
        metadata={"help": "Levels the warm-up slice draws from (null: all): a base that has not met the hard level."},
    )
    rl_prompts: int = field(default=400, metadata={"help": "Level-3 training problems given to GRPO."})
    n_fast_pool: int = field(
        default=9000, metadata={"help": "Fast pool: direct answers to every level-1 and this many L2:L3 (2:1) sums."}
    )
    n_phase2: int = field(default=1200, metadata={"help": "Problems labelled only by the phase-1 model (Stage 2)."})
    word_tokens: bool = field(
        default=False,
        metadata={
            "help": "Whole-word tokens for the role names, the instruction word and the mode tags (digits "
            "and replies stay one token per character): training rows 1.3-1.9x shorter."
        },
    )

    def __post_init__(self) -> None:
        levels = self.warmup_levels
        if levels is not None and (not levels or any(type(v) is not int or v not in (1, 2, 3) for v in levels)):
            raise PipelineConfigError(f"world.warmup_levels: expected some of the levels 1, 2, 3, got {levels!r}")


@dataclass
class DataSource:
    """A data name read from a data set (a hub id or a local path, through :func:`train.core.sources.load_source`)
    instead of a file: the pipeline writes its records once to ``<run_dir>/data/<name>.jsonl`` and hands that file
    to the stages and the evaluation."""

    dataset_name: str = field(metadata={"help": "Hub id (open-r1/OpenR1-Math-220k) or a local file or folder."})
    dataset_config: str | None = field(default=None, metadata={"help": "The hub data set's config (subset)."})
    dataset_split: str = field(default="train", metadata={"help": "Split, or a slice such as `train[:2000]`."})
    dataset_preset: str | None = field(
        default=None, metadata={"help": "Its schema: a preset of docs/data.md (openr1-math, math500, ...) or auto."}
    )
    column_mapping: dict[str, str] | None = field(
        default=None, metadata={"help": "{field: column}: read a preset field from another column."}
    )
    dataset_hint: bool = field(default=True, metadata={"help": "Append the preset's answer format to prompts."})
    max_samples: int | None = field(default=None, metadata={"help": "Keep the first this many records."})
    think_format: str | None = field(
        default=None,
        metadata={
            "help": "Think delimiters of the data set's replies: qwen3 (<think>...</think>, as DeepSeek-R1's and "
            "OpenR1's) or pangu. They are rewritten into the base model's (its tokenizer's), and a row whose reply "
            "has no think block is dropped (a reference solution is no teacher trace). null: replies kept as written."
        },
    )


@dataclass
class PreflightConfig:
    """The machine the dry run's memory preflight estimates for (train.core.memory)."""

    device_gb: float | None = field(default=None, metadata={"help": "Memory per device in GB (null: no estimate)."})
    n_devices: int = field(default=1, metadata={"help": "Devices the stages shard over."})
    model_config: str | None = field(
        default=None, metadata={"help": "The base model's config.json when it is neither local nor in the hub cache."}
    )


@dataclass
class StageConfig:
    """One stage: a recipe run under ``accelerate launch`` with its YAML, its inputs and its overrides."""

    name: str = field(metadata={"help": "Stage name: its folder under run_dir and its row in the tables."})
    recipe: str = field(metadata={"help": f"The recipe: one of {', '.join(RECIPES)} (recipes/<recipe>.py)."})
    config: str = field(metadata={"help": "The recipe's YAML (recipes/configs/<scale>/<recipe>.yaml)."})
    title: str | None = field(default=None, metadata={"help": "Row label in the tables (default: the name)."})
    start: str | None = field(
        default=None, metadata={"help": "Stage whose model this one starts from (default: the previous stage)."}
    )
    data: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "Recipe key -> data name (or list of names) from the data section."}
    )
    overrides: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "Recipe keys set on the command line, over the recipe's YAML."}
    )
    eval_modes: list[str] = field(
        default_factory=lambda: ["fast", "slow", "auto"],
        metadata={"help": "Modes its model is evaluated in (a slow-only model: [slow]); [] skips evaluation."},
    )
    accelerate_config: str | None = field(
        default=None, metadata={"help": "accelerate config of this stage (default: the pipeline's)."}
    )
    env: dict[str, str] = field(
        default_factory=dict,
        metadata={"help": "Environment of this stage's processes, over the pipeline's env (OMP_NUM_THREADS: '2')."},
    )

    def recipe_config(self, root: Path = Path(".")) -> dict[str, Any]:
        """The recipe YAML as the stage runs it: with the stage's overrides laid over it."""
        raw = yaml.safe_load((root / self.config).read_text()) or {}
        return {**raw, **self.overrides}


@dataclass
class EvalConfig:
    """Evaluation of every stage's model on the held-out set."""

    data: str = field(default="test", metadata={"help": "Data name of the held-out records."})
    max_new_tokens: int = field(default=96, metadata={"help": "Token budget of each reply."})
    batch_size: int = field(default=300, metadata={"help": "Prompts per generate() call."})
    sampled_k: int = field(default=4, metadata={"help": "Replies per hard prompt for sampled accuracy (T=1)."})
    hard_level: str = field(default="3", metadata={"help": "Difficulty bucket that counts as hard."})
    easy_levels: list[str] = field(default_factory=lambda: ["1", "2"], metadata={"help": "Easy difficulty buckets."})
    check: str = field(
        default="exact",
        metadata={
            "help": "Answer check: exact (whitespace-stripped equality: the arithmetic world) or benchmark (exact, "
            "else the MARS rules: math-verify, sandboxed code tests, the option letter: real held-out sets)."
        },
    )
    sampler_args: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "Sampler keys (train.sampling.SamplerConfig: backend transformers/vllm/endpoint, dtype, device, "
            "tensor_parallel_size, gpu_memory_utilization, max_model_len, ...); batch_size and "
            "trust_remote_code come from this section and the pipeline. Default: transformers on the best "
            "device present, in its precision."
        },
    )


@dataclass
class PipelineConfig:
    """The pipeline: base model, data, stages in order, evaluation."""

    name: str = field(metadata={"help": "Run name (shown in the report and the model card)."})
    run_dir: str = field(metadata={"help": "Folder of the run: one subfolder per stage, eval/, the report."})
    stages: list[StageConfig] = field(metadata={"help": "Stages in order; each starts from an earlier one's model."})
    base_model: str | None = field(
        default=None, metadata={"help": "Local folder or hub id of the base model (null: the world's tiny model)."}
    )
    seed: int = field(
        default=0,
        metadata={
            "help": "Seed of every stage and every random draw of the pipeline (each stage's `seed`, distillation's "
            "`selection_seed`, the evaluation's sampling, the world)."
        },
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={
            "help": "Run the checkpoint's own modelling code (openPangu needs it): passed to every stage, the "
            "evaluation and the preflight's config read."
        },
    )
    think_format: str | None = field(
        default=None, metadata={"help": "qwen3 or pangu: think delimiters of the world's model and data."}
    )
    accelerate_config: str = field(
        default="recipes/accelerate/cpu.yaml", metadata={"help": "accelerate config every stage is launched with."}
    )
    env: dict[str, str] = field(
        default_factory=dict,
        metadata={
            "help": "Environment of the stage processes (OMP_NUM_THREADS: '2'); its OMP_NUM_THREADS also sets the "
            "threads of the pipeline's own evaluation."
        },
    )
    world: WorldConfig | None = field(
        default=None, metadata={"help": "Build the arithmetic world (tiny runs); its files join the data names."}
    )
    data: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "Data name -> a file, a list of files, or a data set ({dataset_name, dataset_config, "
            "dataset_split, dataset_preset, column_mapping, dataset_hint, max_samples, think_format}: written once to "
            "<run_dir>/data/<name>.jsonl) the stages and the evaluation use."
        },
    )
    evaluation: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "Evaluation of every stage."})
    preflight: PreflightConfig = field(
        default_factory=PreflightConfig,
        metadata={"help": "Memory preflight of the dry run: device_gb, n_devices, model_config."},
    )
    quick: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "Overrides --quick lays over this config (same shape as the file)."}
    )

    def stage(self, name: str) -> StageConfig:
        for s in self.stages:
            if s.name == name:
                return s
        raise PipelineConfigError(f"no stage {name!r}; stages: {', '.join(s.name for s in self.stages)}")


SECTIONS = {"world": WorldConfig, "evaluation": EvalConfig, "preflight": PreflightConfig}


def _build(cls: type, raw: Any, where: str) -> Any:
    """``cls(**raw)``, refusing unknown keys (with the closest known one) and values of the wrong kind."""
    if not isinstance(raw, dict):
        raise PipelineConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in raw.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), sorted(names), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise PipelineConfigError(f"{where}: unknown key {key!r}{hint}")
        _check_kind(value, names[key], f"{where}.{key}")
    missing = [f.name for f in names.values() if f.name not in raw and _required(f)]
    if missing:
        raise PipelineConfigError(f"{where}: missing required key {missing[0]!r}")
    return cls(**raw)


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _check_kind(value: Any, f: dataclasses.Field, where: str) -> None:
    hint = str(f.type)
    kinds = {"dict": dict, "list": list, "int": int, "float": (int, float), "str": str, "bool": bool}
    if value is None:
        if "None" not in hint:
            raise PipelineConfigError(f"{where}: may not be null")
        return
    for name, kind in kinds.items():
        if hint.startswith(name):
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise PipelineConfigError(f"{where}: expected {name}, got {value!r}")
            return


def deep_update(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` laid on it; mappings merge key by key, stages by name, anything else is replaced."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if key == "stages" and isinstance(value, dict):
            by_name = {s["name"]: s for s in out.get("stages", [])}
            for name, stage_over in value.items():
                if name not in by_name:
                    raise PipelineConfigError(f"quick.stages: no stage {name!r}")
                by_name[name].update(deep_update(by_name[name], stage_over))
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_update(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_raw(path: str | Path) -> dict[str, Any]:
    return read_yaml_mapping(path, PipelineConfigError, "pipeline config")


def load_pipeline(path: str | Path, quick: bool = False, **overrides: Any) -> PipelineConfig:
    """Read, check and build the config; ``quick`` lays its ``quick:`` section over it, then ``overrides``."""
    raw = read_raw(path)
    if quick:
        raw = deep_update(raw, raw.get("quick") or {})
    raw.update({k: v for k, v in overrides.items() if v is not None})
    return from_mapping(raw, str(path))


def from_mapping(raw: dict[str, Any], where: str) -> PipelineConfig:
    raw = dict(raw)
    for key, cls in SECTIONS.items():
        if raw.get(key) is not None:
            raw[key] = _build(cls, raw[key], f"{where}: {key}")
    if not isinstance(raw.get("stages"), list) or not raw["stages"]:
        raise PipelineConfigError(f"{where}: stages: a non-empty list of stages is required")
    raw["stages"] = [_build(StageConfig, s, f"{where}: stages[{i}]") for i, s in enumerate(raw["stages"])]
    if isinstance(raw.get("data"), dict):
        raw["data"] = {name: _data_entry(value, f"{where}: data.{name}") for name, value in raw["data"].items()}
    cfg = _build(PipelineConfig, raw, where)
    check_stages(cfg, where)
    return cfg


def check_stages(cfg: PipelineConfig, where: str) -> None:
    """Stage names unique, recipes known, every ``start`` an earlier stage, every data name defined."""
    seen: list[str] = []
    data_names = set(cfg.data) | (WORLD_FILES if cfg.world is not None else set())
    for s in cfg.stages:
        at = f"{where}: stage {s.name!r}"
        if s.name in seen:
            raise PipelineConfigError(f"{at}: duplicate stage name")
        if s.recipe in NOT_A_STAGE:
            raise PipelineConfigError(
                f"{at}, key 'recipe': {s.recipe!r} is not a pipeline stage: {NOT_A_STAGE[s.recipe]}"
            )
        if s.recipe not in RECIPES:
            raise PipelineConfigError(f"{at}, key 'recipe': {s.recipe!r} is not one of {', '.join(RECIPES)}")
        if s.start is not None and s.start not in seen:
            raise PipelineConfigError(f"{at}, key 'start': {s.start!r} is not an earlier stage ({seen or 'none'})")
        for key, names in s.data.items():
            for name in names if isinstance(names, list) else [names]:
                if name not in data_names:
                    raise PipelineConfigError(f"{at}, key 'data.{key}': no data named {name!r}")
        seen.append(s.name)
    check_sampler_args(cfg.evaluation.sampler_args, f"{where}, key 'evaluation.sampler_args'")
    if cfg.evaluation.check not in EVAL_CHECKS:
        raise PipelineConfigError(f"{where}, key 'evaluation.check': {cfg.evaluation.check!r}; one of {EVAL_CHECKS}")
    if cfg.evaluation.data not in data_names and any(s.eval_modes for s in cfg.stages):
        raise PipelineConfigError(f"{where}, key 'evaluation.data': no data named {cfg.evaluation.data!r}")
    if cfg.base_model is None and cfg.world is None:
        raise PipelineConfigError(f"{where}: base_model is required without a world")


def check_sampler_args(args: dict[str, Any], where: str) -> None:
    """The evaluation's sampler keys: SamplerConfig's, less those the pipeline sets (checked before anything runs,
    not when the evaluation starts after hours of training)."""
    known = {f.name for f in dataclasses.fields(SamplerConfig)} - SET_BY_PIPELINE
    for key in args:
        if key in SET_BY_PIPELINE:
            raise PipelineConfigError(f"{where}: {key!r} is set by the pipeline (the stage's model, evaluation."
                                      "batch_size, trust_remote_code)")  # fmt: skip
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            raise PipelineConfigError(
                f"{where}: unknown key {key!r}" + (f"; did you mean {close[0]!r}?" if close else "")
            )
    try:
        sampler = SamplerConfig(**args)
    except ValueError as exc:
        raise PipelineConfigError(f"{where}: {exc}") from exc
    if sampler.backend == "endpoint":  # a server holds one model; the evaluation loads each stage's folder
        raise PipelineConfigError(f"{where}: backend 'endpoint' cannot load each stage's model; transformers or vllm")
    if sampler.dtype not in EVAL_DTYPES:
        raise PipelineConfigError(f"{where}: dtype {sampler.dtype!r}; one of {', '.join(EVAL_DTYPES)}")


# The sampler keys the pipeline sets for every stage's evaluation.
SET_BY_PIPELINE = {"model", "batch_size", "trust_remote_code"}


def _data_entry(value: Any, where: str) -> str | list[str] | DataSource:
    """A data name's value: a path, a list of paths, or a data set (a mapping, checked key by key)."""
    if isinstance(value, dict):
        source = _build(DataSource, value, where)
        if source.think_format not in (None, *THINK_FORMATS):
            raise PipelineConfigError(
                f"{where}.think_format: {source.think_format!r}; one of {', '.join(THINK_FORMATS)}"
            )
        return source
    if isinstance(value, str) or (isinstance(value, list) and value and all(isinstance(v, str) for v in value)):
        return value
    raise PipelineConfigError(f"{where}: expected a path, a list of paths or a data set mapping, got {value!r}")


# The files the arithmetic world writes (train.pipeline.world), usable as data names.
WORLD_FILES = {"model", "train", "slow", "fast", "test", "pool", "warmup", "rl_prompts", "fast_pool", "phase2"}
