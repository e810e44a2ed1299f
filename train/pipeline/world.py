"""The tiny runs' data: the arithmetic world, built by the pipeline before its first stage.

Everything is drawn from the pipeline's seed (each file from its own offset of it), so two fresh runs write the
same bytes. Files (``world.json`` maps each name to its path; it is written last, so a world is complete or
rebuilt):

* ``model``: a randomly initialised tiny model whose tokenizer carries the run's think format (with
  ``word_tokens``, also whole-word tokens for :data:`WORDS`);
* ``train``: ``n_train`` problems of levels 1-3 with slow and fast teacher replies, split into ``slow`` and ``fast``;
* ``test``: ``n_test`` problems of each level 1, 2, 3 (equal thirds); levels 2-3 disjoint from every training file,
  level 1 drawn from its 100 sums (all of them seen in training: level 1 cannot be held out);
* ``pool``: the teacher pool for distillation: ``teacher_k`` replies per slow prompt from a teacher that errs and
  pads, verified, the shortest correct kept (:func:`rewards.verify.rejection_sample`);
* ``warmup``: a random slice of the pool (of ``warmup_levels``), the base model's SFT data;
* ``rl_prompts``: fresh level-3 problems for GRPO (not in the test set);
* ``fast_pool``: the teacher's direct answers (``/no_think``) to every level-1 sum and more level-2/3 sums (2:1);
* ``phase2``: problems labelled only by the dual-system stage's phase-1 model (30 of level 1, the rest 2 and 3).

The last two are the settings with which ``scripts/bench/dual_system.py`` met the dual-system targets.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rewards.verify import Verifier, rejection_sample
from train.core.data import read_records, write_jsonl
from train.core.fingerprint import write_json_atomic
from train.core.modes import THINK_FORMATS, Mode, ThinkFormat, apply_mode
from train.distill.teacher import ArithmeticBackend, generate_teacher, read_teacher_file
from train.pipeline.config import WorldConfig
from train.world.arithmetic import ArithmeticTeacher, corpus, make_dataset, make_problems
from train.world.tiny import make_tiny

logger = logging.getLogger(__name__)

RL_KEYS = ("id", "prompt", "task", "answer", "difficulty")
# The fixed words of every rendered row: the template's role names, the problems' instruction word and the mode
# tags. Whole-word tokens for them shorten a training row 1.3-1.9x; a reply's digits and words stay characters.
WORDS = ("system", "user", "assistant", "Compute", *(m.tag for m in Mode))


def world_files(folder: Path) -> dict[str, Path] | None:
    """The world's files when it is complete, else None."""
    manifest = folder / "world.json"
    if not manifest.exists():
        return None
    return {k: Path(v) for k, v in json.loads(manifest.read_text())["files"].items()}


def planned_world_files(folder: Path) -> dict[str, Path]:
    """Where :func:`build_world` writes each file (for a plan made before the world exists)."""
    names = ("train", "slow", "fast", "test", "pool", "warmup", "rl_prompts", "fast_pool", "phase2")
    return {"model": folder / "model", **{n: folder / "data" / f"{n}.jsonl" for n in names}}


def ensure_world(folder: Path, cfg: WorldConfig, think_format: str, seed: int) -> float:
    """Build the world unless ``folder`` holds a complete one; returns the seconds it took (recorded in world.json).

    A world built with another think format, seed or world config (``word_tokens``, sizes) is refused: the stages
    after it would mix two runs.
    """
    manifest = folder / "world.json"
    if manifest.exists():
        recorded = json.loads(manifest.read_text())
        # A world recorded without its config predates word_tokens: it was built with one token per character.
        built = {"think_format": recorded["think_format"], "seed": recorded["seed"],
                 **recorded.get("config", {"word_tokens": False})}  # fmt: skip
        asked = {"think_format": think_format, "seed": seed, **asdict(cfg)}
        for key, value in built.items():
            if asked.get(key, value) != value:
                raise ValueError(f"{manifest}: this run's world was built with {key} {value!r}, not "
                                 f"{asked[key]!r}; use another run_dir")  # fmt: skip
        return recorded.get("seconds", 0.0)
    began = time.perf_counter()
    build_world(folder, cfg, think_format, seed)
    seconds = round(time.perf_counter() - began, 1)
    recorded = {**json.loads(manifest.read_text()), "seconds": seconds}
    write_json_atomic(manifest, recorded)
    return seconds


def build_world(folder: Path, cfg: WorldConfig, think_format: str, seed: int) -> dict[str, Path]:
    """Build (or reuse) the world in ``folder``; returns its files by name."""
    done = world_files(folder)
    if done is not None:
        return done
    think = THINK_FORMATS[think_format]
    paths = planned_world_files(folder)
    rows, _ = make_dataset(cfg.n_train, 1, [1, 2, 3], ["slow", "fast"], seed=seed, think=think)
    write_jsonl(paths["train"], rows)
    write_jsonl(paths["slow"], [r for r in rows if "/no_think" not in r["prompt"]])
    write_jsonl(paths["fast"], [r for r in rows if "/no_think" in r["prompt"]])
    train_ids = {r["id"] for r in rows}
    words = WORDS if cfg.word_tokens else ()
    make_tiny(paths["model"], corpus(rows, think), size=cfg.size, seed=seed, think=think, words=words)

    test = held_out(cfg.n_test, seed, train_ids)
    write_jsonl(paths["test"], test)
    test_ids = {r["id"] for r in test}
    teacher_pool(paths, cfg, think, seed)
    pool = read_records(paths["pool"])
    write_jsonl(paths["warmup"], warmup_slice(pool, cfg, seed))
    rl = make_problems(cfg.rl_prompts, (3,), seed=seed + 12, exclude=test_ids | train_ids)
    write_jsonl(paths["rl_prompts"], [{k: r[k] for k in RL_KEYS} for r in rl])
    phase2 = phase2_problems(cfg.n_phase2, seed, test_ids | train_ids | {r["id"] for r in rl})
    write_jsonl(paths["phase2"], phase2)
    write_jsonl(paths["fast_pool"], fast_pool(cfg.n_fast_pool, seed, think, test_ids | {r["id"] for r in phase2}))

    manifest = {"files": {k: str(v) for k, v in paths.items()}, "think_format": think_format, "seed": seed,
                "config": asdict(cfg)}  # fmt: skip
    write_json_atomic(folder / "world.json", manifest)
    return paths


def warmup_slice(pool: list[dict[str, Any]], cfg: WorldConfig, seed: int) -> list[dict[str, Any]]:
    """``warmup_examples`` random pool rows (at most all of them) of ``warmup_levels`` (every level when None)."""
    if cfg.warmup_levels is not None:
        pool = [r for r in pool if int(r["difficulty"]) in cfg.warmup_levels]
    return random.Random(seed).sample(pool, min(cfg.warmup_examples, len(pool)))


def held_out(n: int, seed: int, exclude: set[str]) -> list[dict[str, Any]]:
    """``n`` problems of each level; level 1 from all 100 sums (at most ``n``), levels 2-3 outside ``exclude``."""
    rows = make_problems(min(n, 100), (1,), seed=seed + 101)
    for level in (2, 3):
        rows += make_problems(n, (level,), seed=seed + 100 + level, exclude=exclude)
    return rows


def teacher_pool(paths: dict[str, Path], cfg: WorldConfig, think: ThinkFormat, seed: int) -> None:
    """K teacher replies per slow prompt (resumable file), verified: the shortest correct reply per prompt."""
    backend = ArithmeticBackend(cfg.teacher_verbosity, cfg.teacher_error_rate, seed, "slow", think=think)
    teacher_file = paths["pool"].with_name("teacher.jsonl")
    generate_teacher(read_records(paths["slow"]), backend, teacher_file, k=cfg.teacher_k, progress=False)
    kept, report = rejection_sample(read_teacher_file(teacher_file), Verifier(think=think), progress=False)
    write_jsonl(paths["pool"], kept)
    logger.info("teacher pool: %s", {t: f"{r['kept']} of {r['prompts']}" for t, r in report.items()})


def phase2_problems(n: int, seed: int, exclude: set[str]) -> list[dict[str, Any]]:
    """30 level-1 sums (a tenth at most: level 1 cannot avoid training), the rest of levels 2 and 3 (1:1)."""
    if n <= 0:
        return []
    n1 = min(30, n // 10)
    rest = n - n1
    rows = make_problems(n1, (1,), seed=seed + 301)
    rows += make_problems(rest // 2, (2,), seed=seed + 302, exclude=exclude)
    return rows + make_problems(rest - rest // 2, (3,), seed=seed + 303, exclude=exclude)


def fast_pool(n: int, seed: int, think: ThinkFormat, exclude: set[str]) -> list[dict[str, Any]]:
    """The teacher's direct answers to every level-1 sum and ``n`` level-2/3 sums (2:1), none in ``exclude``."""
    if n <= 0:
        return []
    problems = make_problems(100, (1,), seed=seed + 201)
    problems += make_problems(n * 2 // 3, (2,), seed=seed + 202, exclude=exclude)
    problems += make_problems(n // 3, (3,), seed=seed + 203, exclude=exclude)
    teacher = ArithmeticTeacher(think, seed=seed)
    fast = Mode.FAST
    return [{**p, "prompt": apply_mode(p["prompt"], fast)[0]["content"], "response": teacher.respond(p, fast)}
            for p in problems]  # fmt: skip
