"""The printed plan: per stage its command, inputs (with where each comes from), output and memory preflight.

The memory preflight is :func:`train.core.memory.estimate` for the stage's recipe YAML with the pipeline's
overrides laid over it, under the stage's accelerate config, on the machine the config's ``preflight:`` section
names (``device_gb``, ``n_devices``), for the base model's ``config.json`` (``preflight.model_config``, else the
base model's folder or the local hub cache: the network is never asked). Without them the plan says why there is
no estimate.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from transformers import AutoConfig

from train.core.memory import PreflightError, estimate
from train.pipeline.config import PipelineConfig
from train.pipeline.plan import Step


def model_config(cfg: PipelineConfig, step: Step) -> Any:
    """The base model's config (every stage trains its architecture), or None when it cannot be read here."""
    given = cfg.preflight.model_config
    if given:
        return json.loads(Path(given).read_text())
    base = cfg.base_model or next(i.value for i in step.inputs if i.key == "model_name_or_path")
    try:
        return AutoConfig.from_pretrained(str(base), local_files_only=True, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError):
        return None


def preflight(cfg: PipelineConfig, step: Step) -> str:
    target = cfg.preflight
    if not target.device_gb:
        return "off (no preflight.device_gb in the pipeline config)"
    config = model_config(cfg, step)
    if config is None:
        return "not estimated: the base model's config.json is not here (set preflight.model_config to its path)"
    accelerate = step.stage.accelerate_config or cfg.accelerate_config
    try:
        est = estimate(config, step.stage.recipe_config(), accelerate, target.device_gb, target.n_devices,
                       kind=step.stage.recipe)  # fmt: skip
    except (PreflightError, KeyError, ValueError) as exc:  # an estimator's refusal is part of the plan
        return f"not estimated: {type(exc).__name__}: {exc}"
    verdict = f"fits (peak {est.peak_gb:.1f} GB per device)" if est.fits else "DOES NOT FIT"
    return verdict + "\n" + "\n".join("      " + line for line in est.table().splitlines())


def describe_plan(cfg: PipelineConfig, steps: list[Step], run_dir: Path) -> str:
    lines = [f"Pipeline {cfg.name!r}: {len(steps)} stage(s), run folder {run_dir}, seed {cfg.seed}"]
    missing: dict[str, None] = {}
    if cfg.world is not None:
        lines.append(f"  world: the arithmetic world in {run_dir / 'world'} ({cfg.think_format or 'qwen3'} format)")
    for n, step in enumerate(steps, 1):
        state = "done, skipped" if step.done else "to run"
        lines.append(f"\n[{n}] {step.name} ({step.stage.recipe}, {state})")
        for inp in step.inputs:
            flag = "" if inp.ready else f"  (made by {inp.producer})" if inp.producer else "  (not found here)"
            if inp.unprovided and len(inp.unprovided) < (len(inp.value) if isinstance(inp.value, list) else 1):
                flag = f"  (not found here: {', '.join(inp.unprovided)})"
            lines.append(f"    input  {inp.key} = {inp.value}  <- {inp.source}{flag}")
            missing.update((v, None) for v in inp.unprovided)
        lines.append(f"    output {step.output_dir}")
        lines.append(f"    memory {preflight(cfg, step)}")
        env = " ".join(f"{k}={v}" for k, v in step.env.items())  # a stage's env may differ from the others'
        lines.append(f"    $ {env} {shlex.join(step.command)}")
    if missing:  # nothing in the run makes them: the user's own files
        lines.append("\nTo provide before running (no stage or data set makes them): " + ", ".join(missing))
    return "\n".join(lines)
