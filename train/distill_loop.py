"""State of the iterative distillation loop: per-iteration folders, manifests, resume, and the merge step.

Each iteration ``t`` writes ``<output_dir>/iteration_<t>/``:

=====================  ===================================================================================
``complexity.jsonl``   the candidates with their complexity for the student that started the iteration
``selected.jsonl``     the training set chosen from them
``data_stats.json``    selection statistics (counts, histograms before/after, per difficulty)
``complexity.png``     the complexity histogram before and after selection
``student/``           the model trained in the iteration
``model/``             the student merged with the previous iteration's model: the next iteration's start
``metrics.json``       held-out accuracy (and on the first iteration's data) of ``model/``
``manifest.json``      written last: the iteration is complete when it exists and ``model/`` has weights
=====================  ===================================================================================

A rerun starts after the last complete iteration; inside an unfinished one, measured complexities and the
selected set are reused when present (they are written atomically).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

MERGE_METHODS = ("none", "ema", "linear", "task_arithmetic", "ties")


def iteration_dir(output_dir: str | Path, t: int) -> Path:
    return Path(output_dir) / f"iteration_{t}"


def has_weights(folder: str | Path) -> bool:
    folder = Path(folder)
    return folder.is_dir() and (any(folder.glob("*.safetensors")) or any(folder.glob("*.bin")))


def is_complete(folder: str | Path) -> bool:
    """An iteration is complete when its manifest says so and its merged model is still there."""
    folder = Path(folder)
    manifest = folder / "manifest.json"
    if not manifest.exists():
        return False
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return False
    return bool(data.get("complete")) and has_weights(folder / data.get("model", "model"))


def resume_point(output_dir: str | Path, iterations: int) -> int:
    """The first iteration to run: one after the last complete iteration of an unbroken run from 0."""
    t = 0
    while t < iterations and is_complete(iteration_dir(output_dir, t)):
        t += 1
    return t


def write_json(path: str | Path, data: Any) -> Path:
    """Write JSON atomically (temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def write_manifest(folder: str | Path, **fields: Any) -> Path:
    """The iteration's manifest, marking it complete; written last."""
    data = {"complete": True, "model": "model", "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    data.update(fields)
    return write_json(Path(folder) / "manifest.json", data)


# --------------------------------------------------------------------------------------------------- merging


def merge_models(
    method: str,
    previous: str | Path,
    student: str | Path,
    out_dir: str | Path,
    base: str | Path | None = None,
    weights: list[float] | None = None,
    parameters: dict[str, Any] | None = None,
) -> Path:
    """Merge the iteration's ``student`` with the ``previous`` model into ``out_dir`` (tokenizer from the student).

    ``none``: the student as is. ``ema``: ``beta * previous + (1 - beta) * student`` (``parameters.beta``).
    ``linear``: weighted mean of ``[previous, student]``. ``task_arithmetic`` (delta accumulation) and ``ties``:
    deltas of both against ``base`` (the initial model), weighted, (TIES: trimmed and sign-elected), added to it.
    Uses fastslow's streaming merger (:mod:`train.merging`) when it offers ``merge_checkpoints``, else merges the
    state dicts in memory with the same per-tensor functions.
    """
    if method not in MERGE_METHODS:
        raise ValueError(f"merge method {method!r}; expected one of {MERGE_METHODS}")
    out_dir = Path(out_dir)
    if method == "none":
        _copy_model(student, out_dir)
        return out_dir
    if method in ("task_arithmetic", "ties") and base is None:
        raise ValueError(f"merge method {method!r} needs a base model (the initial student)")
    weights = list(weights) if weights else [0.5, 0.5]
    if len(weights) != 2:
        raise ValueError(f"merge_weights: one weight for the previous model and one for the student, got {weights}")
    parameters = dict(parameters or {})
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        from train.merging import merge_checkpoints  # the streaming merger, when it is there
    except ImportError:
        merge_checkpoints = None
    if merge_checkpoints is not None:
        merge_checkpoints(
            method,
            [str(previous), str(student)],
            str(tmp),
            base_model=None if method in ("linear", "ema") else str(base),
            weights=None if method == "ema" else weights,
            parameters=parameters,
        )
        _copy_tokenizer(student, tmp)
    else:
        _merge_in_memory(method, previous, student, tmp, base, weights, parameters)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.replace(out_dir)
    logger.info("merged %s and %s with %s into %s", previous, student, method, out_dir)
    return out_dir


def _merge_in_memory(
    method: str,
    previous: str | Path,
    student: str | Path,
    out_dir: Path,
    base: str | Path | None,
    weights: list[float],
    parameters: dict[str, Any],
) -> None:
    from transformers import AutoModelForCausalLM

    from train.merging import methods

    def state(path: str | Path) -> dict[str, torch.Tensor]:
        return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).state_dict()

    model = AutoModelForCausalLM.from_pretrained(str(student), dtype=torch.float32)
    new = {k: v.clone() for k, v in model.state_dict().items()}  # state_dict tensors alias the parameters
    prev = state(previous)
    origin = state(base) if base is not None and method in ("task_arithmetic", "ties") else None
    merged = {}
    for name, x in new.items():
        if method == "ema":
            merged[name] = methods.ema([prev[name], x], beta=float(parameters.get("beta", 0.5)))
        elif method == "linear":
            merged[name] = methods.linear([prev[name], x], weights)
        elif method == "task_arithmetic":
            merged[name] = methods.task_arithmetic(
                origin[name], [prev[name], x], weights, lambda_=float(parameters.get("lambda", 1.0))
            )
        else:
            density = float(parameters.get("density", 1.0))
            merged[name] = methods.ties(
                origin[name],
                [prev[name], x],
                weights,
                [density, density],
                lambda_=float(parameters.get("lambda", 1.0)),
            )
    model.load_state_dict({k: v.to(new[k].dtype) for k, v in merged.items()})
    model.save_pretrained(out_dir)
    _copy_tokenizer(student, out_dir)


def _copy_tokenizer(src: str | Path, dst: str | Path) -> None:
    src, dst = Path(src), Path(dst)
    for f in src.iterdir():
        if f.is_file() and ("token" in f.name or f.name in ("chat_template.jinja", "special_tokens_map.json")):
            shutil.copy2(f, dst / f.name)


def _copy_model(src: str | Path, dst: Path) -> None:
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("checkpoint-*", "runs", "merged"))
    shutil.rmtree(dst, ignore_errors=True)
    tmp.replace(dst)
