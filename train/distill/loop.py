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
selected set are reused when present (they are written atomically). ``<output_dir>/run_config.json`` records the
configuration that changes results (:func:`check_distill_config`): a rerun under another one is refused, naming the
keys; delete ``output_dir`` to start over. The merge step commits ``model/`` atomically and recovers the leftovers
of a commit killed half-way (:func:`train.merging.io.recover_commit`).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from train.core.fingerprint import check_recipe_config
from train.merging import merge_checkpoints
from train.merging.io import commit_dir, partial_dir, recover_commit

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


def check_distill_config(
    output_dir: str | Path, cfg: Any, training_args: Any, model_args: Any, *, write: bool = True
) -> dict[str, Any]:
    """Record (main process, ``write``) or check the run's configuration in ``<output_dir>/run_config.json``.

    Keys are ``distill.*`` (:class:`DistillConfig`), ``training.*`` and ``model.*``
    (:func:`train.core.fingerprint.check_recipe_config`). Raises :class:`train.core.fingerprint.ResumeConfigError`
    naming the keys that differ from the recorded ones.
    """
    return check_recipe_config(output_dir, "distill", cfg, training_args, model_args, write=write)


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
    The merge streams tensor by tensor (:func:`train.merging.merge_checkpoints`), so it also fits 7B models.
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
    if method == "ema":  # the running average: beta * previous + (1 - beta) * student
        models, base_model, weights, densities = [student], previous, None, None
    elif method == "linear":
        models, base_model, densities = [previous, student], None, None
    else:  # deltas of both against the initial model
        models, base_model = [previous, student], base
        densities = [float(parameters.get("density", 1.0))] * 2 if method == "ties" else None
    merge_checkpoints(
        method,
        [str(m) for m in models],
        out_dir,
        base_model=None if base_model is None else str(base_model),
        weights=weights,
        parameters={k: v for k, v in parameters.items() if k != "density"},
        tokenizer_source=str(student),
        densities=densities,
        overwrite=True,
        show_progress=False,
    )
    logger.info("merged %s and %s with %s into %s", previous, student, method, out_dir)
    return out_dir


def merge_iterations(
    method: str,
    students: list[str | Path],
    out_dir: str | Path,
    base: str | Path,
    parameters: dict[str, Any] | None = None,
) -> Path:
    """Merge the students of every iteration so far, as deltas against ``base`` (the initial model), into
    ``out_dir``: ``base + lambda * mean_i(student_i - base)`` for ``task_arithmetic``, the same with TIES' trim
    (``density``) and sign election for ``ties`` (the paper's "accumulating parameter deltas"; with two models
    of which the first is the previous merge, :func:`merge_models`' ``task_arithmetic`` is instead an affine mix
    of previous, student and base, and with the default weights the same as ``ema`` at beta 0.5).
    """
    if method not in ("task_arithmetic", "ties"):
        raise ValueError(f"merge_iterations merges deltas: task_arithmetic or ties, not {method!r}")
    if not students:
        raise ValueError("merge_iterations needs at least one student")
    parameters = dict(parameters or {})
    density = float(parameters.pop("density", 1.0))
    n = len(students)
    merge_checkpoints(
        method,
        [str(m) for m in students],
        out_dir,
        base_model=str(base),
        weights=[1.0 / n] * n,
        parameters={k: v for k, v in parameters.items() if k != "beta"},
        tokenizer_source=str(students[-1]),
        densities=[density] * n if method == "ties" else None,
        overwrite=True,
        show_progress=False,
    )
    logger.info("merged %d iteration students with %s into %s", n, method, out_dir)
    return Path(out_dir)


def _copy_model(src: str | Path, dst: Path) -> None:
    """Copy the student's loadable files to ``dst``, committed like a merge's output (atomic, self-cleaning)."""
    dst = Path(dst).resolve()
    recover_commit(dst)
    tmp = partial_dir(dst)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("checkpoint-*", "runs", "merged"))
        commit_dir(tmp, dst, overwrite=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
