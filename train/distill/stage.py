"""The steps of one distillation iteration: candidates, complexity and selection, training, held-out evaluation.

``recipes/distill.py`` runs them in order, on the processes each needs (see its docstring); ``scripts/select_data.py
complexity`` runs the measure-and-select step alone. Files are those of :mod:`train.distill.loop`.
"""

from __future__ import annotations

import copy
import gc
import json
import logging
import random
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from trl import ModelConfig

from rewards.verify import check
from train.core.configs import SFTConfig
from train.core.data import DataError, difficulty_bucket, read_records, records_to_dataset, write_jsonl
from train.core.fingerprint import fault_point
from train.core.loading import load_model, load_tokenizer
from train.core.modes import Mode, ThinkFormat
from train.distill.config import DistillConfig
from train.distill.loop import has_weights, iteration_dir, write_json
from train.distill.selection import measure_complexity, plot_histogram, select, statistics
from train.eval.evaluation import per_prompt_scores
from train.sampling.base import SamplerConfig, SamplingParams, make_sampler
from train.sft import build_sft_trainer, load_for_training, save_trained, sft_dataset

logger = logging.getLogger(__name__)


def load_generation_model(
    path: str | Path, think: ThinkFormat, device: torch.device | str = "cpu"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A model and tokenizer to sample or evaluate with, its tokenizer in the run's think format."""
    tokenizer = load_tokenizer(path, think_start=think.start, think_end=think.end)
    return load_model(path, tokenizer=tokenizer).to(device), tokenizer


# ------------------------------------------------------------------------------------------- candidates


def read_pool(cfg: DistillConfig) -> list[dict]:
    """The pool of verified teacher data, refused up front (naming the file) when it is empty or a record has no
    response, rather than after the first evaluation when the first iteration finds no prompts to draw."""
    if not cfg.train_file:
        raise DataError("train_file: give the pool of verified teacher data (records with a `response`)")
    pool = read_records(cfg.train_file)
    if not pool:
        raise DataError(f"{cfg.train_file}: the pool has no records")
    if missing := [i for i, r in enumerate(pool, 1) if not r.get("response")]:
        raise DataError(f"{cfg.train_file}, row {missing[0]}, key 'response': the pool needs teacher responses")
    return pool


def used_ids(output_dir: str | Path, t: int) -> set[str]:
    """Ids of the prompts selected in iterations ``0 .. t-1``."""
    used: set[str] = set()
    for s in range(t):
        f = iteration_dir(output_dir, s) / "selected.jsonl"
        if f.exists():
            used |= {r["id"] for r in read_records(f, validate=False)}
    return used


def draw_candidates(pool: list[dict], cfg: DistillConfig, output_dir: str | Path, t: int, seed: int) -> list[dict]:
    """Iteration ``t``'s candidates: the pool (less earlier selections with ``fresh_candidates``), of which
    ``candidates_per_iteration`` are drawn with the run's ``seed + t``."""
    used = used_ids(output_dir, t) if cfg.fresh_candidates else set()
    fresh = [r for r in pool if r["id"] not in used]
    if cfg.candidates_per_iteration is not None and cfg.candidates_per_iteration < len(fresh):
        fresh = random.Random(seed + t).sample(fresh, cfg.candidates_per_iteration)
    if not fresh:
        raise DataError(f"{cfg.train_file}: no unused prompts left for iteration {t}")
    return fresh


# --------------------------------------------------------------------------------- complexity and selection


def measure(
    model_path: str | Path,
    candidates: Sequence[dict],
    cfg: DistillConfig,
    think: ThinkFormat,
    seed: int,
    device: torch.device | str = "cpu",
) -> list[float]:
    """The complexity (``1 - pass rate``) of every candidate for the model in ``model_path``.

    Sampling is seeded with ``seed``: unseeded, it draws from torch's global generator, which a fresh process seeds
    at random, and the same model, pool and seed gave different pass rates, selections and accuracies between runs.
    """
    start = time.perf_counter()
    model: Any
    tokenizer: Any = None
    if cfg.complexity_backend in ("vllm", "auto"):
        model = model_path  # sampled from its folder
    else:
        model, tokenizer = load_generation_model(model_path, think, device)
    complexities = measure_complexity(
        model,
        tokenizer,
        candidates,
        num_samples=cfg.complexity_samples,
        mode=cfg.mode,
        temperature=cfg.complexity_temperature,
        max_new_tokens=cfg.max_new_tokens,
        batch_size=cfg.generation_batch_size,
        backend=cfg.complexity_backend,
        gpu_memory_utilization=cfg.complexity_gpu_memory_utilization,
        seed=seed,
    )
    logger.info("complexity of %d candidates in %.1fs", len(candidates), time.perf_counter() - start)
    return complexities


def measure_and_select(
    model_path: str | Path,
    candidates: Sequence[dict],
    cfg: DistillConfig,
    out_dir: str | Path,
    think: ThinkFormat,
    *,
    seed: int,
    iteration: int = 0,
    device: torch.device | str = "cpu",
    complexities: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Measure the candidates' complexity (unless ``complexities`` are given), select, and write the selection.

    Writes ``complexity.jsonl``, ``selected.jsonl``, ``data_stats.json`` and (model-aware) ``complexity.png`` into
    ``out_dir`` and returns the statistics. Sampling is seeded with ``seed + iteration``, the draw with
    ``cfg.selection_seed + iteration``; ``random`` selection measures nothing.
    """
    out_dir = Path(out_dir)
    candidates = [{k: v for k, v in r.items() if k != "complexity"} for r in candidates]
    if complexities is None:
        if cfg.selection == "random":
            complexities = [float("nan")] * len(candidates)
        else:
            complexities = measure(model_path, candidates, cfg, think, seed + iteration, device)
        write_jsonl(out_dir / "complexity.jsonl", [{**r, "complexity": c} for r, c in zip(candidates, complexities)])
        fault_point("complexity")  # reliability tests: killed with the complexities written, nothing selected
    sel_cfg = cfg.selection_config(iteration)
    selection = select([0.5] * len(candidates) if cfg.selection == "random" else complexities, sel_cfg)
    chosen = [candidates[i] for i in selection.indices]
    stats: dict[str, Any] = {"iteration": iteration, "selection": cfg.selection}
    if cfg.selection == "model_aware":
        stats.update(statistics(candidates, complexities, selection))
        plot_histogram(complexities, [complexities[i] for i in selection.indices], out_dir / "complexity.png")
    else:
        by_difficulty = Counter(difficulty_bucket(r.get("difficulty")) for r in chosen)
        stats.update(
            candidates=len(candidates), selected=len(chosen), difficulty_after=dict(sorted(by_difficulty.items()))
        )
    if chosen and all(r.get("response") for r in chosen):
        stats["mean_response_tokens"] = sum(r.get("num_tokens") or len(r["response"]) for r in chosen) / len(chosen)
    write_json(out_dir / "data_stats.json", stats)
    write_jsonl(out_dir / "selected.jsonl", chosen)
    logger.info("iteration %d: selected %d of %d candidates", iteration, len(chosen), len(candidates))
    return stats


def select_iteration(
    current: str | Path,
    pool: list[dict],
    cfg: DistillConfig,
    it_dir: Path,
    t: int,
    seed: int,
    think: ThinkFormat,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Main process: iteration ``t``'s candidates, their complexity for ``current``, and the selected set.

    An interrupted iteration reuses the complexities it measured (``complexity.jsonl``).
    """
    scored = it_dir / "complexity.jsonl"
    if scored.exists():
        candidates = read_records(scored, validate=False)
        complexities = [r["complexity"] for r in candidates]
    else:
        candidates, complexities = draw_candidates(pool, cfg, it_dir.parent, t, seed), None
    return measure_and_select(current, candidates, cfg, it_dir, think, seed=seed, iteration=t, device=device,
                              complexities=complexities)  # fmt: skip


# ------------------------------------------------------------------------------------------------- training


def read_done(path: str | Path) -> str:
    """The student folder recorded in a ``train_done.json``."""
    return json.loads(Path(path).read_text(encoding="utf-8"))["student"]


def train_student(
    current: Path, it_dir: Path, training_args: SFTConfig, model_args: ModelConfig, cfg: DistillConfig
) -> Path:
    """All processes: train the current model on the selected set; returns the loadable student folder."""
    done = it_dir / "train_done.json"
    if done.exists() and has_weights(read_done(done)):
        logger.info("iteration %s: reusing the trained student", it_dir.name)
        return Path(read_done(done))
    args = copy.copy(training_args)  # this iteration's copy: the parsed config is left as it was
    args.output_dir = str(it_dir / "train")
    margs = copy.copy(model_args)
    margs.model_name_or_path = str(current)
    model, tokenizer = load_for_training(margs, cfg.think_start, cfg.think_end)
    train = sft_dataset(records_to_dataset(read_records(it_dir / "selected.jsonl")), str(it_dir / "selected.jsonl"))
    trainer = build_sft_trainer(model, tokenizer, args, margs, train)
    result = trainer.train()
    fault_point("training")  # reliability tests: killed after training, before the student is saved
    out = save_trained(trainer, it_dir / "student", cfg.merge_lora)
    if trainer.accelerator.is_main_process:
        write_json(done, {"student": str(out), "train_loss": result.training_loss, "steps": result.global_step,
                          "examples": len(train)})  # fmt: skip
    del trainer, model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the main process may start vLLM next iteration
    return out


# ----------------------------------------------------------------------------------------------- evaluation


def eval_records(cfg: DistillConfig) -> list[dict]:
    """The held-out records (at most ``eval_max_samples``), none without an ``eval_file``."""
    if not cfg.eval_file:
        return []
    records = read_records(cfg.eval_file)
    return records[: cfg.eval_max_samples] if cfg.eval_max_samples else records


def held_out_metrics(
    records: Sequence[dict], scores: Sequence[dict], hard_min_difficulty: float | None = None
) -> dict[str, Any]:
    """``n``, ``accuracy``, ``mean_tokens`` and ``accuracy_by_difficulty`` (plus ``accuracy_hard``/``n_hard`` for
    records with difficulty >= ``hard_min_difficulty``) of one greedy reply per record, from
    :func:`train.eval.evaluation.per_prompt_scores`."""
    if not scores:
        return {}
    correct = [p["correct"][0] for p in scores]
    by_bucket: dict[str, list[bool]] = defaultdict(list)
    for p, ok in zip(scores, correct):
        by_bucket[p["bucket"]].append(ok)
    out: dict[str, Any] = {
        "n": len(correct),
        "accuracy": sum(correct) / len(correct),
        "mean_tokens": sum(p["tokens"][0] for p in scores) / len(scores),
        "accuracy_by_difficulty": {b: sum(v) / len(v) for b, v in sorted(by_bucket.items())},
    }
    if hard_min_difficulty is not None:
        hard = [ok for r, ok in zip(records, correct) if float(r.get("difficulty") or 0) >= hard_min_difficulty]
        if hard:
            out.update(accuracy_hard=sum(hard) / len(hard), n_hard=len(hard))
    return out


def evaluate(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, records: Sequence[dict], cfg: DistillConfig,
    think: ThinkFormat,
) -> dict[str, Any]:  # fmt: skip
    """Greedy replies to ``records`` in ``cfg.mode``, scored with the MARS rule checker (:func:`held_out_metrics`)."""
    if not records:
        return {}
    sampler = make_sampler(SamplerConfig(batch_size=cfg.generation_batch_size), think, model, tokenizer)
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=cfg.max_new_tokens)
    replies = sampler.sample([r["prompt"] for r in records], params, mode=cfg.mode)
    # Without a mode the prompts keep their own tags; the mode only decides compliance, which is not reported.
    scores = per_prompt_scores(records, replies, cfg.mode or Mode.SLOW, check, think=think)
    return held_out_metrics(records, scores, cfg.hard_min_difficulty)


def evaluate_checkpoint(
    path: str | Path,
    record_sets: dict[str, Sequence[dict]],
    cfg: DistillConfig,
    think: ThinkFormat,
    device: torch.device | str = "cpu",
) -> dict[str, dict[str, Any]]:
    """:func:`evaluate` of the model in ``path`` on each named set of records (``held_out``, ...)."""
    model, tokenizer = load_generation_model(path, think, device)
    metrics = {name: evaluate(model, tokenizer, records, cfg, think) for name, records in record_sets.items()}
    del model
    return metrics
