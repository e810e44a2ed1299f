"""The plan of a pipeline run: one step per stage, each a real recipe under ``accelerate launch``.

A stage's model input is the model an earlier stage saved, read from that stage's manifest
(:mod:`train.pipeline.manifests`) when it has run, and named by where that manifest will be when it has not (the
dry run's plan); its data inputs are the data section's files (or the arithmetic world's). Nothing is typed twice:
the stage YAMLs keep their own defaults, and the pipeline sets only the chained keys (``model_name_or_path``,
``output_dir``, ``seed``, the data keys) and the stage's ``overrides``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from train.core.fingerprint import config_fingerprint, differing_keys
from train.pipeline.attempts import timed_attempt
from train.pipeline.config import DataSource, PipelineConfig, PipelineConfigError, StageConfig
from train.pipeline.data import data_provenance, data_source_file
from train.pipeline.manifests import expected_model, finish_stage, read_stage, recipe_model
from train.pipeline.world import planned_world_files, world_files

logger = logging.getLogger(__name__)


@dataclass
class Input:
    """One resolved input: the recipe key, the path(s), and where they come from."""

    key: str
    value: str | list[str]
    source: str  # "base model", "data: pool", "stage distill (its manifest)", ...
    ready: bool  # the path exists now (a stage's output that has not run yet is not ready)
    producer: str | None = None  # what makes it when it is not ready: "world", a stage's name; None: the user
    unprovided: list[str] = field(default_factory=list)  # its files neither here nor made during the run


@dataclass
class Step:
    """One stage of the plan."""

    stage: StageConfig
    output_dir: Path
    inputs: list[Input]
    command: list[str]
    env: dict[str, str]
    done: dict[str, Any] | None = None  # the stage's manifest when it has finished
    settings: dict[str, Any] = field(default_factory=dict)  # what it runs with beyond its inputs (stage_settings)
    preflight: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.stage.name


# Keys the pipeline sets on a stage beyond model, output and data: its seed, and per recipe the other seeds that
# would otherwise stay at their YAML value whatever the pipeline's seed (every draw follows the pipeline's seed).
CHAINED_KEYS = ("model_name_or_path", "output_dir", "seed")
RECIPE_SEEDS = {"distill": ("selection_seed",)}


def made_by(cfg: PipelineConfig, name: str) -> str | None:
    """What writes data name ``name`` during the run: the world, the pipeline's data step, or nothing (a file)."""
    if isinstance(cfg.data.get(name), DataSource):
        return "data (" + cfg.data[name].dataset_name + ")"
    if cfg.world is not None and name not in cfg.data and name in planned_world_files(Path(".")):
        return "world"
    return None


def data_files(cfg: PipelineConfig, run_dir: Path) -> dict[str, Any]:
    """Data name -> path(s): the arithmetic world's files (built or planned), then the data section's (a data set's
    records file for a data set entry)."""
    files: dict[str, Any] = {}
    if cfg.world is not None:
        world = run_dir / "world"
        files.update({k: str(v) for k, v in (world_files(world) or planned_world_files(world)).items()})
    for name, value in cfg.data.items():
        files[name] = str(data_source_file(run_dir, name)) if isinstance(value, DataSource) else value
    return files


def base_model(cfg: PipelineConfig, run_dir: Path) -> str:
    return cfg.base_model or data_files(cfg, run_dir)["model"]


def _exists(value: str | list[str]) -> bool:
    values = value if isinstance(value, list) else [value]
    return all(Path(v).exists() for v in values)


def cli_args(key: str, value: Any) -> list[str]:
    """``--key value`` as the recipes' TrlParser reads it: lists as several values, mappings as JSON, and null as an
    empty string (the parser has no null: ``--fusion_file null`` would be the file ``null``; the recipes test such
    optional keys for truth)."""
    if isinstance(value, bool):
        return [f"--{key}", "true" if value else "false"]
    if isinstance(value, list):
        return [f"--{key}", *map(str, value)]
    if isinstance(value, dict):
        return [f"--{key}", json.dumps(value)]
    return [f"--{key}", "" if value is None else str(value)]


def build_plan(cfg: PipelineConfig, run_dir: Path, recipes_dir: Path) -> list[Step]:
    """Every stage in order, with its inputs resolved from the manifests written so far."""
    files = data_files(cfg, run_dir)
    steps: list[Step] = []
    by_name: dict[str, Step] = {}
    for i, stage in enumerate(cfg.stages):
        out = run_dir / stage.name
        start = stage.start or (cfg.stages[i - 1].name if i else None)
        inputs = [model_input(cfg, run_dir, by_name.get(start), start)]
        for key, names in stage.data.items():
            listed = names if isinstance(names, list) else [names]
            value = [files[n] for n in listed] if isinstance(names, list) else files[names]
            # Made during the run only if every file not here is made by the world or the data step.
            absent = [n for n in listed if not _exists(files[n])]
            made = [made_by(cfg, n) for n in absent]
            producer = ", ".join(dict.fromkeys(made)) if absent and all(made) else None
            unprovided = [str(files[n]) for n, m in zip(absent, made) if not m]
            inputs.append(Input(key, value, "data: " + ", ".join(listed), not absent, producer, unprovided))
        settings = stage_settings(cfg, stage, recipes_dir.parent, run_dir)
        step = Step(stage, out, inputs, [], stage_env(cfg, stage), done=read_stage(out), settings=settings)
        check_finished(step)
        step.command = stage_command(cfg, step, recipes_dir)
        steps.append(step)
        by_name[stage.name] = step
    return steps


def stage_settings(cfg: PipelineConfig, stage: StageConfig, root: Path, run_dir: Path) -> dict[str, Any]:
    """What a stage runs with beyond its chained inputs: recorded in its manifest, compared when it is skipped.

    The recipe YAML counts by its parsed content, so an edited comment does not make a finished stage stale.
    """
    config = root / stage.config
    content = (yaml.safe_load(config.read_text()) if config.exists() else None) or {}
    settings = {"recipe": stage.recipe, "config": stage.config,
                "config_content_sha256": config_fingerprint(content)["hash"],
                "overrides": stage.overrides, "data": stage.data,
                "accelerate_config": stage.accelerate_config or cfg.accelerate_config}  # fmt: skip
    names = [n for v in stage.data.values() for n in (v if isinstance(v, list) else [v])]
    sources = {n: {**dataclasses.asdict(cfg.data[n]), "read": data_provenance(run_dir, n)}
               for n in names if isinstance(cfg.data.get(n), DataSource)}  # fmt: skip
    if sources:  # another data set behind the same name, or the same one read again, makes the stage stale
        settings["data_sources"] = sources
    return config_fingerprint(settings)["keys"]  # as the manifest will read back


def check_finished(step: Step) -> None:
    """A finished stage is skipped only if it ran with the settings the config asks for now.

    Skipping it otherwise would hand on a model the config does not describe (say, a Stage 2 trained with another
    margin). A manifest from before the settings were recorded is not checked.
    """
    recorded = (step.done or {}).get("settings")
    if recorded is None:
        return
    changed = differing_keys(recorded, step.settings)
    if changed:
        raise PipelineConfigError(
            f"{step.output_dir / 'pipeline_stage.json'}: stage {step.name!r} finished with other settings "
            f"({', '.join(changed)} changed since); use another run_dir, or delete {step.output_dir} to run it again"
        )


def model_input(cfg: PipelineConfig, run_dir: Path, start: Step | None, name: str | None) -> Input:
    if start is None:
        model = base_model(cfg, run_dir)
        local = Path(model).exists()
        source = "base model" + ("" if local or cfg.world is not None else " (hub id)")
        return Input("model_name_or_path", model, source, local or cfg.world is None, "world" if cfg.world else None)
    made = recipe_model(start.stage.recipe, start.output_dir) if start.done else None
    if made is not None:
        return Input("model_name_or_path", str(made), f"stage {name} (its manifest)", True)
    expected = expected_model(start.stage.recipe, start.output_dir)
    return Input("model_name_or_path", expected, f"stage {name}", False, f"stage {name}")


def stage_env(cfg: PipelineConfig, stage: StageConfig | None = None) -> dict[str, str]:
    """The environment of a stage's processes: the pipeline's ``env``, then the stage's own."""
    # One hash seed for every stage: nothing in a stage may depend on the interpreter's random string hashes.
    env = {**cfg.env, **(stage.env if stage is not None else {})}
    return {"PYTHONHASHSEED": str(cfg.seed), **{k: str(v) for k, v in env.items()}}


def stage_command(cfg: PipelineConfig, step: Step, recipes_dir: Path) -> list[str]:
    stage = step.stage
    accelerate = stage.accelerate_config or cfg.accelerate_config
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", accelerate,
           str(recipes_dir / f"{stage.recipe}.py"), "--config", stage.config]  # fmt: skip
    for inp in step.inputs:
        cmd += cli_args(inp.key, inp.value)
    cmd += cli_args("output_dir", str(step.output_dir)) + cli_args("seed", cfg.seed)
    chained = {**{k: cfg.seed for k in RECIPE_SEEDS.get(stage.recipe, ())},
               **({"trust_remote_code": True} if cfg.trust_remote_code else {})}  # fmt: skip
    for key, value in chained.items():
        cmd += cli_args(key, value)
    for key, value in stage.overrides.items():
        if key in CHAINED_KEYS or key in chained or key in stage.data:
            raise PipelineConfigError(f"stage {stage.name!r}, key 'overrides.{key}': set by the pipeline itself")
        cmd += cli_args(key, value)
    return cmd


def children_cpu() -> float:
    """User + system CPU seconds of the finished child processes (and theirs) of this process."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def select(steps: list[Step], start_from: str | None, only: str | None) -> list[Step]:
    """The steps ``--from STAGE`` (that stage and the ones after it) or ``--only STAGE`` asks for."""
    names = [s.name for s in steps]
    for asked in (start_from, only):
        if asked is not None and asked not in names:
            raise PipelineConfigError(f"no stage {asked!r}; stages: {', '.join(names)}")
    if only is not None:
        return [s for s in steps if s.name == only]
    if start_from is not None:
        return steps[names.index(start_from) :]
    return steps


def run_step(step: Step, cwd: Path) -> dict[str, Any]:
    """Run one stage's recipe (an unfinished one resumes: the recipes pick up their own partial output) and
    record its manifest; a finished stage is skipped. A failing recipe stops the pipeline."""
    if step.done is not None:
        logger.info("skip (done): %s", step.name)
        return step.done
    missing = [i for i in step.inputs if not _exists(i.value) and not i.source.endswith("(hub id)")]
    if missing:
        raise FileNotFoundError(f"stage {step.name!r}: input {missing[0].key} = {missing[0].value} does not exist")
    logger.info("run %s: %s", step.name, " ".join(step.command))
    with timed_attempt(step.output_dir) as earlier:
        began, cpu = time.perf_counter(), children_cpu()
        subprocess.run(step.command, cwd=cwd, env={**os.environ, **step.env}, check=True)
        # Wall time of every attempt (a killed one's to its last heartbeat), and the CPU time of this attempt's
        # processes (a killed process tree's is lost with it): on a machine shared with other jobs the wall time
        # says more about the load than the stage.
        seconds, cpu = time.perf_counter() - began, children_cpu() - cpu
        attempts = [*earlier, round(seconds, 1)]
        record = {"stage": step.name, "recipe": step.stage.recipe, "config": step.stage.config,
                  "seconds": round(sum(attempts), 1), "attempts": attempts, "cpu_seconds": round(cpu, 1),
                  "command": step.command, "inputs": {i.key: i.value for i in step.inputs},
                  "settings": step.settings}  # fmt: skip
        step.done = finish_stage(step.output_dir, step.stage.recipe, record)
    return step.done
