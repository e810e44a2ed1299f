"""The printed plan: per stage its command, inputs (with where each comes from), output and memory preflight.

The memory preflight is ``train.core.memory.estimate`` (model config, recipe, accelerate config, device memory,
device count) when that module exists and the config's ``preflight:`` section names the target machine
(``device_gb``, ``n_devices``); otherwise the plan says why there is none.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from transformers import AutoConfig

from train.pipeline.config import PipelineConfig
from train.pipeline.plan import Step

try:  # the preflight estimator is a later addition to train.core; the plan works without it
    from train.core import memory
except ImportError:  # pragma: no cover - depends on the checkout
    memory = None


def model_config(path: str) -> Any:
    """The model's config (local folder, or the hub cache; never the network); None when it cannot be read."""
    try:
        return AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError):
        return None


def preflight(cfg: PipelineConfig, step: Step) -> str:
    target = cfg.preflight
    if memory is None:
        return "not available (train.core.memory is not in this checkout)"
    if not target.get("device_gb"):
        return "off (no preflight.device_gb in the pipeline config)"
    # Every stage trains the base model's architecture: its config is the one to estimate with.
    base = cfg.base_model or next(i.value for i in step.inputs if i.key == "model_name_or_path")
    config = model_config(str(base))
    if config is None:
        return f"not estimated: the config of {base} is not available locally (download it, or run where it is)"
    accelerate = step.stage.accelerate_config or cfg.accelerate_config
    try:
        est = memory.estimate(config, step.stage.recipe, accelerate, target["device_gb"], target.get("n_devices", 1))
    except Exception as exc:  # an estimator's refusal is part of the plan, not a crash of the dry run
        return f"not estimated: {type(exc).__name__}: {exc}"
    verdict = "fits" if est.fits else "DOES NOT FIT"
    return f"{verdict}\n" + "\n".join("      " + line for line in est.table().splitlines())


def describe_plan(cfg: PipelineConfig, steps: list[Step], run_dir: Path) -> str:
    lines = [f"Pipeline {cfg.name!r}: {len(steps)} stage(s), run folder {run_dir}, seed {cfg.seed}"]
    if cfg.world is not None:
        lines.append(f"  world: the arithmetic world in {run_dir / 'world'} ({cfg.think_format or 'qwen3'} format)")
    env = " ".join(f"{k}={v}" for k, v in steps[0].env.items()) if steps else ""
    for n, step in enumerate(steps, 1):
        state = "done, skipped" if step.done else "to run"
        lines.append(f"\n[{n}] {step.name} ({step.stage.recipe}, {state})")
        for inp in step.inputs:
            flag = "" if inp.ready else f"  (made by {inp.producer})" if inp.producer else "  (not found here)"
            lines.append(f"    input  {inp.key} = {inp.value}  <- {inp.source}{flag}")
        lines.append(f"    output {step.output_dir}")
        lines.append(f"    memory {preflight(cfg, step)}")
        lines.append(f"    $ {env} {shlex.join(step.command)}")
    return "\n".join(lines)
