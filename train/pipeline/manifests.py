"""What a finished stage leaves behind, and where the next stage finds its model.

Each recipe says it finished in its own way: distillation writes ``final.json`` naming the last iteration's merged
model; SFT, GRPO and the dual-system recipe save the model in ``output_dir`` (``merged/`` for a LoRA run). The
pipeline reads those, never a path typed in its YAML, and records the result in ``pipeline_stage.json`` (model,
command, inputs, wall time) once the recipe has exited cleanly: that file is what makes a stage *finished*.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from train.core.fingerprint import write_json_atomic

STAGE_MANIFEST = "pipeline_stage.json"


def saved_model(folder: Path) -> bool:
    return (folder / "config.json").exists() and any(folder.glob("*.safetensors"))


def recipe_model(recipe: str, output_dir: Path) -> Path | None:
    """The model a finished recipe run saved in ``output_dir``, from its own manifest; None if there is none."""
    if recipe == "distill":
        final = output_dir / "final.json"
        return Path(json.loads(final.read_text())["model"]) if final.exists() else None
    merged = output_dir / "merged"
    for folder in (merged, output_dir):
        if saved_model(folder):
            return folder
    return None


def expected_model(recipe: str, output_dir: Path) -> str:
    """How a plan names the model of a stage that has not run yet."""
    if recipe == "distill":
        return f"{output_dir}/final.json -> model"
    return str(output_dir)


def read_stage(output_dir: Path) -> dict[str, Any] | None:
    path = output_dir / STAGE_MANIFEST
    return json.loads(path.read_text()) if path.exists() else None


def finish_stage(output_dir: Path, recipe: str, record: dict[str, Any]) -> dict[str, Any]:
    """Record a cleanly exited recipe run; refuses one that left no model (the recipe's own manifest is missing)."""
    model = recipe_model(recipe, output_dir)
    if model is None:
        raise RuntimeError(f"{output_dir}: the {recipe} recipe exited without saving a model (no manifest found)")
    record = {**record, "model": str(model)}
    write_json_atomic(output_dir / STAGE_MANIFEST, record)
    return record


def trainer_logs(output_dir: Path) -> list[dict[str, Any]]:
    """Every ``trainer_state.json`` log history under a stage's folder (a phase, an iteration, a checkpoint),
    the longest per subfolder, tagged with the subfolder it came from."""
    best: dict[Path, list[dict[str, Any]]] = {}
    for state in sorted(output_dir.rglob("trainer_state.json")):
        run = state.parent.parent if state.parent.name.startswith("checkpoint-") else state.parent
        history = json.loads(state.read_text()).get("log_history", [])
        if len(history) > len(best.get(run, [])):
            best[run] = history
    return [{"run": str(run.relative_to(output_dir)) or ".", "log_history": h} for run, h in sorted(best.items())]
