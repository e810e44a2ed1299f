"""Stage 1: iterative distillation with model-aware complexity selection and merging between iterations.

    accelerate launch --config_file recipes/accelerate/cpu.yaml recipes/distill.py \
        --config recipes/configs/tiny/distill.yaml

Each of ``iterations`` rounds:

1. measure the complexity of candidate prompts for the current student (``1 - pass rate`` of ``complexity_samples``
   sampled replies, verified with the MARS rule rewards) and select a training set favouring medium complexity
   (Gaussian or band weights, optional replay of mastered prompts, a target size);
2. train the student on the teacher's verified (shortest-correct) responses to the selected prompts, full or LoRA,
   with the SFT recipe's trainer set-up;
3. merge the trained student with the previous iteration's model (``merge_method``);
4. evaluate the merged model on held-out prompts (and on the first iteration's data, to see forgetting) and write
   ``iteration_<t>/`` with the data statistics, checkpoint, metrics and a manifest (see ``train/distill/loop.py``).

A rerun resumes after the last complete iteration. Measurement, selection, merging and evaluation run on the main
process while the others wait; training runs on all of them. Every key can be overridden on the command line.
"""

from __future__ import annotations

import copy
import gc
import json
import logging
import random
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from transformers import set_seed
from trl import ModelConfig

from rewards.verify import check
from train.core.cli import parse_args, setup_logging
from train.core.configs import SFTConfig
from train.core.data import DataError, read_records, records_to_dataset, write_jsonl
from train.core.loading import load_model, load_tokenizer
from train.core.modes import parse_response
from train.distill.loop import (
    MERGE_METHODS,
    has_weights,
    iteration_dir,
    merge_models,
    resume_point,
    write_json,
    write_manifest,
)
from train.distill.selection import SelectionConfig, measure_complexity, plot_histogram, select, statistics
from train.sampling.generation import generate
from train.sft import build_sft_trainer, load_for_training, save_trained, sft_dataset

logger = logging.getLogger("recipes.distill")


@dataclass
class DistillConfig(SelectionConfig):
    """Options of the distillation loop (selection options are inherited from ``SelectionConfig``)."""

    train_file: str | None = field(
        default=None,
        metadata={"help": "Pool of verified teacher data: records with a `response` (scripts/select_data.py verify)."},
    )
    eval_file: str | None = field(default=None, metadata={"help": "Held-out records (prompt, answer) for accuracy."})
    iterations: int = field(default=2, metadata={"help": "Distillation iterations T."})
    candidates_per_iteration: int | None = field(
        default=None,
        metadata={"help": "Candidates scored per iteration, drawn from the pool (None: the whole unused pool)."},
    )
    fresh_candidates: bool = field(
        default=True, metadata={"help": "Draw candidates only from prompts not selected in an earlier iteration."}
    )
    selection: str = field(
        default="model_aware",
        metadata={
            "help": "`model_aware` (weights from the student's complexity) or `random` (same size, no scoring)."
        },
    )
    complexity_samples: int = field(default=8, metadata={"help": "Replies sampled per prompt to measure pass rates."})
    complexity_temperature: float = field(default=1.0, metadata={"help": "Sampling temperature for pass rates."})
    complexity_backend: str = field(
        default="transformers", metadata={"help": "`transformers`, `vllm`, or `auto` (vLLM when it and a GPU exist)."}
    )
    complexity_gpu_memory_utilization: float = field(
        default=0.5, metadata={"help": "vLLM complexity backend: share of the main process's GPU it may take."}
    )
    mode: str | None = field(
        default=None, metadata={"help": "Mode tag for sampling and evaluation (slow, fast); None keeps the prompts'."}
    )
    max_new_tokens: int = field(default=256, metadata={"help": "Longest sampled or evaluated reply, in tokens."})
    generation_batch_size: int = field(default=64, metadata={"help": "Prompts per generate() call."})
    merge_method: str = field(
        default="ema", metadata={"help": f"Merge of the new student with the previous model: one of {MERGE_METHODS}."}
    )
    merge_weights: list[float] | None = field(
        default=None, metadata={"help": "[previous, student] weights for linear/task_arithmetic/ties (default .5 .5)."}
    )
    merge_beta: float = field(default=0.5, metadata={"help": "EMA: the weight kept by the previous model."})
    merge_lambda: float = field(default=1.0, metadata={"help": "task_arithmetic/ties: scale of the merged delta."})
    merge_density: float = field(default=1.0, metadata={"help": "ties: share of each delta kept by magnitude."})
    eval_max_samples: int | None = field(default=None, metadata={"help": "Evaluate on at most this many records."})
    hard_min_difficulty: float | None = field(
        default=None, metadata={"help": "Records with difficulty >= this also count towards `accuracy_hard`."}
    )
    track_first_iteration: int = field(
        default=0,
        metadata={"help": "Also evaluate on up to this many of iteration 0's selected prompts (forgetting)."},
    )
    eval_initial: bool = field(default=True, metadata={"help": "Evaluate the starting model (initial_metrics.json)."})
    think_start: str | None = field(default=None, metadata={"help": "Think-block opening tag (default: tokenizer's)."})
    think_end: str | None = field(default=None, metadata={"help": "Think-block closing tag."})
    merge_lora: bool = field(default=True, metadata={"help": "With LoRA, save the adapter merged into its base."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.selection not in ("model_aware", "random"):
            raise ValueError(f"selection {self.selection!r}; expected 'model_aware' or 'random'")
        if self.merge_method not in MERGE_METHODS:
            raise ValueError(f"merge_method {self.merge_method!r}; expected one of {MERGE_METHODS}")
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")


# --------------------------------------------------------------------------------------------------- helpers


def _load_generation_model(path: str | Path, cfg: DistillConfig, device: torch.device) -> tuple[Any, Any]:
    tokenizer = load_tokenizer(path, cfg.think_start, cfg.think_end)
    model = load_model(path, tokenizer=tokenizer).to(device)
    return model, tokenizer


def evaluate(model: Any, tokenizer: Any, records: list[dict], cfg: DistillConfig) -> dict[str, Any]:
    """Greedy accuracy overall, per difficulty and on hard records; mean reply tokens."""
    if not records:
        return {}
    gens = generate(model, tokenizer, [r["prompt"] for r in records], mode=cfg.mode,
                    max_new_tokens=cfg.max_new_tokens, batch_size=cfg.generation_batch_size)  # fmt: skip
    per: dict[str, list[bool]] = defaultdict(list)
    hard: list[bool] = []
    tokens = 0
    for r, (g,) in zip(records, gens):
        ok = bool(check(parse_response(g.text).answer, r))
        per[str(r.get("difficulty"))].append(ok)
        if cfg.hard_min_difficulty is not None and (r.get("difficulty") or 0) >= cfg.hard_min_difficulty:
            hard.append(ok)
        tokens += g.num_tokens
    every = [x for xs in per.values() for x in xs]
    out = {
        "n": len(every),
        "accuracy": sum(every) / len(every),
        "mean_tokens": tokens / len(every),
        "accuracy_by_difficulty": {k: sum(v) / len(v) for k, v in sorted(per.items())},
    }
    if hard:
        out["accuracy_hard"] = sum(hard) / len(hard)
        out["n_hard"] = len(hard)
    return out


def _used_ids(output_dir: Path, t: int) -> set[str]:
    used: set[str] = set()
    for s in range(t):
        f = iteration_dir(output_dir, s) / "selected.jsonl"
        if f.exists():
            used |= {r["id"] for r in read_records(f, validate=False)}
    return used


def _candidates(pool: list[dict], cfg: DistillConfig, output_dir: Path, t: int, seed: int) -> list[dict]:
    used = _used_ids(output_dir, t) if cfg.fresh_candidates else set()
    fresh = [r for r in pool if r["id"] not in used]
    if cfg.candidates_per_iteration is not None and cfg.candidates_per_iteration < len(fresh):
        fresh = random.Random(seed + t).sample(fresh, cfg.candidates_per_iteration)
    if not fresh:
        raise DataError(f"{cfg.train_file}: no unused prompts left for iteration {t}")
    return fresh


def measure_and_select(
    current: Path, pool: list[dict], cfg: DistillConfig, it_dir: Path, t: int, seed: int, device: torch.device
) -> None:
    """Main process: complexity of the candidates for the current model, then the selected set and its stats."""
    candidates = _candidates(pool, cfg, it_dir.parent, t, seed)
    scored = it_dir / "complexity.jsonl"
    if scored.exists():  # an interrupted iteration: the measurement is reused
        candidates = read_records(scored, validate=False)
        complexities = [r["complexity"] for r in candidates]
    elif cfg.selection == "random":
        complexities = [float("nan")] * len(candidates)
    else:
        start = time.perf_counter()
        # Sampling draws from torch's global generator, which a fresh process seeds at random: without this the
        # same model, pool and seed gave different pass rates, selections and final accuracies from run to run.
        set_seed(seed + t)
        backend_model: Any
        if cfg.complexity_backend in ("vllm", "auto"):
            backend_model, tokenizer = current, None
        else:
            backend_model, tokenizer = _load_generation_model(current, cfg, device)
        complexities = measure_complexity(
            backend_model,
            tokenizer,
            candidates,
            num_samples=cfg.complexity_samples,
            mode=cfg.mode,
            temperature=cfg.complexity_temperature,
            max_new_tokens=cfg.max_new_tokens,
            batch_size=cfg.generation_batch_size,
            backend=cfg.complexity_backend,
            gpu_memory_utilization=cfg.complexity_gpu_memory_utilization,
        )
        logger.info("iteration %d: complexity of %d candidates in %.1fs", t, len(candidates),
                    time.perf_counter() - start)  # fmt: skip
        del backend_model
        write_jsonl(scored, [{**r, "complexity": c} for r, c in zip(candidates, complexities)])
    sel_cfg = SelectionConfig(**{k: getattr(cfg, k) for k in SelectionConfig.__dataclass_fields__})
    sel_cfg.selection_seed = seed + t
    if cfg.selection == "random":
        sel_cfg.weighting, sel_cfg.replay_fraction = "uniform", 0.0
        selection = select([0.5] * len(candidates), sel_cfg)
    else:
        selection = select(complexities, sel_cfg)
    chosen = [candidates[i] for i in selection.indices]
    stats = {"iteration": t, "selection": cfg.selection}
    if cfg.selection == "model_aware":
        stats.update(statistics(candidates, complexities, selection))
        plot_histogram(complexities, [complexities[i] for i in selection.indices], it_dir / "complexity.png")
    else:
        by_difficulty = Counter(str(r.get("difficulty")) for r in chosen)
        stats.update(
            candidates=len(candidates), selected=len(chosen), difficulty_after=dict(sorted(by_difficulty.items()))
        )
    stats["mean_response_tokens"] = sum(r.get("num_tokens") or len(r["response"]) for r in chosen) / max(
        len(chosen), 1
    )
    write_json(it_dir / "data_stats.json", stats)
    write_jsonl(it_dir / "selected.jsonl", [{k: v for k, v in r.items() if k != "complexity"} for r in chosen])
    logger.info("iteration %d: selected %d of %d candidates", t, len(chosen), len(candidates))


def train_student(
    current: Path, it_dir: Path, training_args: SFTConfig, model_args: ModelConfig, cfg: DistillConfig
) -> Path:
    """All processes: train the current model on the selected set; returns the loadable student folder."""
    student_dir = it_dir / "student"
    done = it_dir / "train_done.json"
    if done.exists() and has_weights(read_done(done)):
        logger.info("iteration %s: reusing the trained student", it_dir.name)
        return Path(read_done(done))
    args = copy.copy(training_args)
    args.output_dir = str(it_dir / "train")
    margs = copy.copy(model_args)
    margs.model_name_or_path = str(current)
    model, tokenizer = load_for_training(margs, cfg.think_start, cfg.think_end)
    train = sft_dataset(records_to_dataset(read_records(it_dir / "selected.jsonl")), str(it_dir / "selected.jsonl"))
    trainer = build_sft_trainer(model, tokenizer, args, margs, train)
    result = trainer.train()
    out = save_trained(trainer, student_dir, cfg.merge_lora)
    if trainer.accelerator.is_main_process:
        write_json(done, {"student": str(out), "train_loss": result.training_loss, "steps": result.global_step,
                          "examples": len(train)})  # fmt: skip
    del trainer, model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the main process may start vLLM next iteration
    return out


def read_done(path: Path) -> str:
    return json.loads(path.read_text(encoding="utf-8"))["student"]


def _eval_records(cfg: DistillConfig) -> list[dict]:
    if not cfg.eval_file:
        return []
    records = read_records(cfg.eval_file)
    return records[: cfg.eval_max_samples] if cfg.eval_max_samples else records


# ------------------------------------------------------------------------------------------------------ main


# The config dataclasses, in the order TrlParser fills them (also read by the config-validation test).
ARG_CLASSES = (DistillConfig, SFTConfig, ModelConfig)


def main(argv: list[str] | None = None) -> Path:
    cfg, training_args, model_args = parse_args(ARG_CLASSES, argv)
    # The process group comes from the training arguments so that it gets their `ddp_timeout`: the other ranks wait
    # at a barrier while the main process samples, which at scale takes far longer than torch's default timeout.
    _ = training_args.device
    state = PartialState()
    # trl's default log level is "passive" (warnings only); the loop's progress is worth seeing on the main process.
    passive = training_args.log_level == "passive"
    setup_logging(training_args.get_process_log_level() if not passive or not state.is_main_process else logging.INFO)
    output_dir = Path(training_args.output_dir)
    if not cfg.train_file:
        raise DataError("train_file: give the pool of verified teacher data (records with a `response`)")
    pool = read_records(cfg.train_file)
    if missing := [i for i, r in enumerate(pool, 1) if not r.get("response")]:
        raise DataError(f"{cfg.train_file}, row {missing[0]}, key 'response': the pool needs teacher responses")
    held_out = _eval_records(cfg)
    initial = Path(model_args.model_name_or_path)
    seed = training_args.seed

    start = resume_point(output_dir, cfg.iterations)
    current = initial if start == 0 else iteration_dir(output_dir, start - 1) / "model"
    if start:
        logger.info("resuming after iteration %d (%s)", start - 1, current)
    if (
        start == 0
        and cfg.eval_initial
        and state.is_main_process
        and not (output_dir / "initial_metrics.json").exists()
    ):
        model, tokenizer = _load_generation_model(initial, cfg, state.device)
        write_json(output_dir / "initial_metrics.json", {"held_out": evaluate(model, tokenizer, held_out, cfg)})
        del model

    for t in range(start, cfg.iterations):
        it_dir = iteration_dir(output_dir, t)
        began = time.time()
        # 1. Complexity and selection (main process; the others wait for the selected set).
        if state.is_main_process and not (it_dir / "selected.jsonl").exists():
            measure_and_select(current, pool, cfg, it_dir, t, seed, state.device)
        state.wait_for_everyone()
        # 2. Training (all processes).
        student = train_student(current, it_dir, training_args, model_args, cfg)
        state.wait_for_everyone()
        # 3. Merge and 4. evaluate (main process).
        if state.is_main_process:
            previous = current
            method = cfg.merge_method if t > 0 else "none"  # nothing earlier to merge with in the first round
            merge_models(method, previous, student, it_dir / "model", base=initial, weights=cfg.merge_weights,
                         parameters={"beta": cfg.merge_beta, "lambda": cfg.merge_lambda,
                                     "density": cfg.merge_density})  # fmt: skip
            model, tokenizer = _load_generation_model(it_dir / "model", cfg, state.device)
            metrics = {"iteration": t, "held_out": evaluate(model, tokenizer, held_out, cfg)}
            if cfg.track_first_iteration:
                first = read_records(iteration_dir(output_dir, 0) / "selected.jsonl")[: cfg.track_first_iteration]
                metrics["first_iteration_data"] = evaluate(model, tokenizer, first, cfg)
            del model
            write_json(it_dir / "metrics.json", metrics)
            write_manifest(
                it_dir,
                iteration=t,
                started_from=str(previous),
                student=str(student),
                merge_method=method,
                seconds=round(time.time() - began, 1),
                config=asdict(cfg),
            )
            logger.info("iteration %d done: %s", t, metrics["held_out"])
        state.wait_for_everyone()
        current = it_dir / "model"
    if state.is_main_process:
        write_json(output_dir / "final.json", {"model": str(current), "iterations": cfg.iterations})
    return current


if __name__ == "__main__":
    main()
