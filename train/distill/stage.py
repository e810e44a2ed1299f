"""The steps of one distillation iteration: candidates, complexity and selection, training, held-out evaluation.

``recipes/distill.py`` runs them in order, on the processes each needs (see its docstring); ``scripts/select_data.py
complexity`` runs the measure-and-select step alone. Files are those of :mod:`train.distill.loop`.
"""

from __future__ import annotations

import copy
import gc
import importlib.util
import json
import logging
import random
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from trl import ModelConfig

from rewards.verify import check
from train.core.configs import SFTConfig
from train.core.data import DataError, difficulty_bucket, read_records, records_to_dataset, write_jsonl
from train.core.fingerprint import fault_point
from train.core.modes import Mode, ThinkFormat
from train.core.sources import load_source_from
from train.distill.config import DistillConfig
from train.distill.loop import has_weights, iteration_dir, write_json
from train.distill.selection import measure_complexity, plot_histogram, select, statistics
from train.eval.evaluation import per_prompt_scores
from train.sampling.base import SamplerConfig, SamplingParams, make_sampler
from train.sampling.params import Sampler
from train.sampling.sharded import checkpoint_sampler
from train.sft import build_sft_trainer, load_for_training, save_trained, sft_dataset

logger = logging.getLogger(__name__)


def phase_sampler_config(cfg: DistillConfig, model_path: str | Path, pass_rates: bool = False) -> SamplerConfig:
    """The sampler of a sampling phase on the checkpoint ``model_path``: the ``sampler_*`` keys, with
    ``generation_batch_size``; pass rates take ``complexity_backend`` and ``complexity_gpu_memory_utilization``
    when set (``auto``: vLLM when it is installed and a GPU is visible)."""
    backend = (cfg.complexity_backend if pass_rates else None) or cfg.sampler_backend
    if backend == "auto":
        backend = (
            "vllm" if importlib.util.find_spec("vllm") is not None and torch.cuda.is_available() else "transformers"
        )
    options: dict[str, Any] = {"backend": backend, "batch_size": cfg.generation_batch_size}
    if pass_rates and cfg.complexity_gpu_memory_utilization is not None:
        options["gpu_memory_utilization"] = cfg.complexity_gpu_memory_utilization
    return cfg.sampler_for(model_path, **options)


def release() -> None:
    """Give a finished phase's memory back (its sampler closed and dropped first), for training or for vLLM."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------- candidates


def read_pool(cfg: DistillConfig) -> list[dict]:
    """The pool of verified teacher data: ``train_file``'s records, then the ``dataset_name`` data set's (read with
    its preset and column mapping, :func:`train.core.sources.load_source`). Refused up front (naming the source)
    when it is empty or a record has no response, rather than after the first evaluation when the first iteration
    finds no prompts to draw."""
    if not cfg.train_file and not cfg.dataset_name:
        raise DataError(
            "train_file / dataset_name: give the pool of verified teacher data (records with a `response`)"
        )
    sources = [(cfg.train_file, read_records(cfg.train_file))] if cfg.train_file else []
    if cfg.dataset_name:
        sources.append((f"{cfg.dataset_name} [{cfg.dataset_split}]", load_source_from(cfg)))
    for name, records in sources:
        if not records:
            raise DataError(f"{name}: the pool has no records")
        if missing := [i for i, r in enumerate(records, 1) if not r.get("response")]:
            raise DataError(f"{name}, row {missing[0]}, key 'response': the pool needs teacher responses")
    return [r for _, records in sources for r in records]


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
    state: Any = None,
) -> list[float]:
    """The complexity (``1 - pass rate``) of every candidate for the model in ``model_path``.

    Every process must call it: each samples its share of the candidates from its own copy of the checkpoint
    (:func:`train.sampling.sharded.checkpoint_sampler`) and all get every complexity back, in order. Sampling is
    seeded with ``seed``: unseeded, it draws from torch's global generator, which a fresh process seeds at random,
    and the same model, pool and seed gave different pass rates, selections and accuracies between runs.
    """
    start = time.perf_counter()
    sampler = checkpoint_sampler(phase_sampler_config(cfg, model_path, pass_rates=True), think, state)
    try:
        complexities = measure_complexity(
            None,
            None,
            candidates,
            num_samples=cfg.complexity_samples,
            mode=cfg.mode,
            temperature=cfg.complexity_temperature,
            max_new_tokens=cfg.max_new_tokens,
            seed=seed,
            sampler=sampler,
            think=think,
        )
    finally:
        sampler.close()
        del sampler
        release()
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
    state: Any = None,
    complexities: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Measure the candidates' complexity (unless ``complexities`` are given), select, and write the selection.

    Writes ``complexity.jsonl``, ``selected.jsonl``, ``data_stats.json`` and (model-aware) ``complexity.png`` into
    ``out_dir`` and returns the statistics. Sampling is seeded with ``seed + iteration``, the draw with
    ``cfg.selection_seed + iteration``; ``random`` selection measures nothing. In a multi-process run every process
    calls it (the measurement is sharded, :func:`measure`) and the main process writes the files.
    """
    state = state if state is not None else PartialState()
    writes = state.is_main_process
    out_dir = Path(out_dir)
    candidates = [{k: v for k, v in r.items() if k != "complexity"} for r in candidates]
    if complexities is None:
        if cfg.selection == "random":
            complexities = [float("nan")] * len(candidates)
        else:
            complexities = measure(model_path, candidates, cfg, think, seed + iteration, state)
        if writes:
            scored = [{**r, "complexity": c} for r, c in zip(candidates, complexities)]
            write_jsonl(out_dir / "complexity.jsonl", scored)
            fault_point("complexity")  # reliability tests: killed with the complexities written, nothing selected
    sel_cfg = cfg.selection_config(iteration)
    selection = select([0.5] * len(candidates) if cfg.selection == "random" else complexities, sel_cfg)
    chosen = [candidates[i] for i in selection.indices]
    stats: dict[str, Any] = {"iteration": iteration, "selection": cfg.selection}
    if cfg.selection == "model_aware":
        stats.update(statistics(candidates, complexities, selection))
        if writes:
            plot_histogram(complexities, [complexities[i] for i in selection.indices], out_dir / "complexity.png")
    else:
        by_difficulty = Counter(difficulty_bucket(r.get("difficulty")) for r in chosen)
        stats.update(
            candidates=len(candidates), selected=len(chosen), difficulty_after=dict(sorted(by_difficulty.items()))
        )
    if chosen and all(r.get("response") for r in chosen):
        stats["mean_response_tokens"] = sum(r.get("num_tokens") or len(r["response"]) for r in chosen) / len(chosen)
    if writes:
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
    state: Any = None,
) -> dict[str, Any]:
    """Iteration ``t``'s candidates, their complexity for ``current``, and the selected set.

    Every process calls it (the candidates are drawn the same way on each, the sampling is sharded); the main
    process writes the files. An interrupted iteration reuses the complexities it measured (``complexity.jsonl``).
    """
    scored = it_dir / "complexity.jsonl"
    if scored.exists():
        candidates = read_records(scored, validate=False)
        complexities = [r["complexity"] for r in candidates]
    else:
        candidates, complexities = draw_candidates(pool, cfg, it_dir.parent, t, seed), None
    return measure_and_select(current, candidates, cfg, it_dir, think, seed=seed, iteration=t, state=state,
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
    model, tokenizer = load_for_training(margs, cfg.think_start, cfg.think_end, training_args=args)
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
        torch.cuda.empty_cache()  # every process may start vLLM next (pass rates, evaluation)
    return out


# ----------------------------------------------------------------------------------------------- evaluation


def eval_records(cfg: DistillConfig) -> list[dict]:
    """The held-out records (at most ``eval_max_samples``) of ``eval_file`` or of ``dataset_name``'s
    ``dataset_eval_split``; none without either."""
    if cfg.eval_file and cfg.dataset_eval_split:
        raise DataError("eval_file and dataset_eval_split: give one held-out source, not both")
    if cfg.eval_file:
        records = read_records(cfg.eval_file)
    elif cfg.dataset_eval_split:
        records = load_source_from(cfg, split=cfg.dataset_eval_split, limit=cfg.eval_max_samples)
    else:
        return []
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
    model: PreTrainedModel | None, tokenizer: PreTrainedTokenizerBase | None, records: Sequence[dict],
    cfg: DistillConfig, think: ThinkFormat, sampler: Sampler | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Greedy replies to ``records`` in ``cfg.mode``, scored with the MARS rule checker (:func:`held_out_metrics`).

    Samples with ``sampler`` when given (a :class:`~train.sampling.sharded.ShardedSampler` splits the records across
    the processes), else with a transformers sampler over the loaded ``model`` on this process alone.
    """
    if not records:
        return {}
    if sampler is None:
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
    state: Any = None,
) -> dict[str, dict[str, Any]]:
    """:func:`evaluate` of the model in ``path`` on each named set of records (``held_out``, ...).

    Every process must call it: each loads the checkpoint whole (outside a live ZeRO-3 / FSDP context) on its own
    device with the ``sampler_*`` backend, answers its share of each set, and all get the same metrics.
    """
    if not any(record_sets.values()):
        return {name: {} for name in record_sets}
    sampler = checkpoint_sampler(phase_sampler_config(cfg, path), think, state)
    try:
        return {name: evaluate(None, None, records, cfg, think, sampler) for name, records in record_sets.items()}
    finally:
        sampler.close()
        del sampler
        release()
