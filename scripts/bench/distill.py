"""Stage 1a's claims, measured with paired arms: model-aware selection against random, and the inter-iteration merge.

    OMP_NUM_THREADS=1 nice -n 5 python scripts/bench/distill.py --out outputs/bench-distill --jobs 2
    python scripts/bench/distill.py --out outputs/bench-distill --report-only     # tables of a finished run
    python scripts/bench/distill.py --out /tmp/bench-smoke --quick                # a smoke run (numbers mean nothing)

World: the arithmetic world. A teacher that errs (``--error-rate``) and pads (``--verbosity``) answers each pool
prompt K times; the shortest verified reply is kept (``rewards.verify.rejection_sample``). Two pools:

* ``skewed``: most prompts already mastered (1- and 2-digit sums) or out of reach (5- and 6-digit sums, 3x2-digit
  products, whose traces do not fit in the student's reply budget), a minority learnable now (3-digit sums);
* ``uniform``: levels 1-3 in equal shares (the pool of the earlier benchmark).

Paired design. Per seed, one student is warmed up (cached in ``<out>/warm/seed_<s>``); every arm starts from it,
sees the same candidate draws per iteration (disjoint across iterations), trains the same number of examples for
the same steps with the same training seed, and is scored on the same held-out problems (3-digit sums, "hard").
Selection arms (``--iterations`` rounds each, no merge): model-aware Gaussian at complexity 0.5, the Gaussian at
the adaptive ``informative`` centre (median complexity of the candidates with 0 < c < 1), the band [0.25, 0.75],
random, and an oracle that knows each problem's level (uniform over the learnable level). Every arm draws its
examples with the library's :func:`train.distill.selection.select`; complexity is ``1 - pass rate`` of
``--samples`` replies from the one sampler (:func:`train.distill.selection.measure_complexity`); training is the
SFT recipe's trainer (:func:`train.sft.build_sft_trainer`). Merge arms, on the uniform pool with random selection
(every example learnable, so there is something to forget; no complexity to measure; iteration 0 shared with the
no-merge chain, ``--merge-iterations`` rounds): none, EMA (beta 0.5,
:func:`train.distill.loop.merge_models`), task arithmetic and TIES over every iteration's delta against the start
(:func:`train.distill.loop.merge_iterations`). Forgetting: greedy accuracy on the first ``--forget-eval`` examples
of each earlier iteration's own training data, right after that iteration against after the last one.

Intervals: 95% percentile bootstrap, resampling seeds and held-out problems (crossed), the same draws for both arms
of a paired difference. Budget share: the selected examples by level (mastered: levels 1-2; out of reach: 6-8).
Results: ``<out>/seed_<s>/{start,skewed,uniform}.json`` per seed, ``<out>/results.json`` (all of them) and the
printed tables at the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from trl import ModelConfig

from rewards.verify import Verifier, check, rejection_sample
from train.core.configs import SFTConfig
from train.core.data import read_records, records_to_dataset, write_jsonl
from train.core.loading import load_model
from train.core.modes import QWEN3_THINK
from train.distill.loop import merge_iterations, merge_models, write_json
from train.distill.selection import SelectionConfig, measure_complexity, select
from train.distill.teacher import ArithmeticBackend
from train.sampling.base import SamplerConfig, make_sampler
from train.sampling.pass_rate import pass_rates
from train.sft import build_sft_trainer, sft_dataset
from train.world.arithmetic import make_mixed_problems, make_problems
from train.world.tiny import build_model, build_tokenizer

logger = logging.getLogger("bench.distill")

THINK = QWEN3_THINK
HARD_LEVEL = 3
MASTERED = (1, 2)
LEARNABLE = (3,)
OUT_OF_REACH = (6, 7, 8)
POOLS: dict[str, dict[int, float]] = {
    "skewed": {1: 0.04, 2: 0.36, 3: 0.2, 6: 0.14, 7: 0.13, 8: 0.13},
    "uniform": {1: 1 / 3, 2: 1 / 3, 3: 1 / 3},  # levels drawn uniformly per problem; few distinct 1-digit sums
}
ARMS: dict[str, dict[str, Any]] = {
    "gauss@0.5": {"weighting": "gaussian", "center": 0.5},
    "gauss@informative": {"weighting": "gaussian", "center_rule": "informative"},
    "band": {"weighting": "band"},
    "random": {"weighting": "uniform"},
    "oracle": {"weighting": "band"},  # on complexities given by the level, not measured
}
MERGE_POOL, MERGE_ARM = "uniform", "random"  # every example learnable: forgetting has something to lose
TASKS = (*POOLS, "merge")  # one worker each per seed: the selection arms of each pool, the merge arms
MERGES = ("none", "ema", "task_arithmetic", "ties")
MEASURED = ("gauss@0.5", "gauss@informative", "band")


# ------------------------------------------------------------------------------------------------ statistics


def bootstrap(values: np.ndarray, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean and 95% percentile interval of a seeds x items array, resampling seeds and items (crossed)."""
    values = np.asarray(values, dtype=float)
    s, n = values.shape
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, s, size=(n_boot, s))
    cols = rng.integers(0, n, size=(n_boot, n))
    means = np.array([values[np.ix_(r, c)].mean() for r, c in zip(rows, cols)])
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(values.mean()), float(lo), float(hi)


def budget_shares(levels: list[int]) -> dict[str, float]:
    """Shares of the selected examples that are mastered, learnable and out of reach, by level."""
    n = max(len(levels), 1)
    return {
        "mastered": sum(lv in MASTERED for lv in levels) / n,
        "learnable": sum(lv in LEARNABLE for lv in levels) / n,
        "out_of_reach": sum(lv in OUT_OF_REACH for lv in levels) / n,
    }


def fill_up(indices: list[int], n: int, target: int, seed: int) -> list[int]:
    """``indices`` topped up with random others to ``target`` (a band with too few candidates in it), so that every
    arm trains the same number of examples."""
    rest = sorted(set(range(n)) - set(indices))
    need = max(0, min(target, n) - len(indices))
    return list(indices) + random.Random(seed).sample(rest, need)


def oracle_complexity(level: int) -> float:
    """What an oracle knowing the levels would call the complexity: mastered 0, learnable 0.5, out of reach 1."""
    return 0.0 if level in MASTERED else 0.5 if level in LEARNABLE else 1.0


def fmt(m: tuple[float, float, float]) -> str:
    return f"{m[0]:.3f} [{m[1]:.3f}, {m[2]:.3f}]"


def signed(m: tuple[float, float, float]) -> str:
    return f"{m[0]:+.3f} [{m[1]:+.3f}, {m[2]:+.3f}]"


# ----------------------------------------------------------------------------------------------------- world


def build_world(args: argparse.Namespace, out: Path) -> None:
    """Held-out problems, the warm-up data and the two pools of verified teacher replies (cached in ``out``)."""
    if (out / "world.json").exists():
        return
    test = make_problems(args.n_test, levels=(HARD_LEVEL,), seed=101)
    probe = [
        p for lv in (*MASTERED, *LEARNABLE, *OUT_OF_REACH) for p in make_problems(args.n_probe, (lv,), seed=300 + lv)
    ]
    exclude = {r["id"] for r in test + probe}
    warm = make_problems(args.warmup_examples, levels=(1, 2, 3), seed=7, exclude=exclude)
    teacher = ArithmeticBackend(verbosity=args.verbosity, error_rate=args.error_rate, seed=0, think=THINK)
    report = {}
    for name, shares in [("warmup", None), *POOLS.items()]:
        if shares is None:
            prompts = warm
        elif name == "uniform":  # the earlier benchmark's pool: a level per draw, duplicates skipped
            prompts = make_problems(args.pool, tuple(shares), seed=11, exclude=exclude)
        else:
            prompts = make_mixed_problems(args.pool, shares, seed=11, exclude=exclude)
        rows = [
            {**r, "samples": [s.as_sample() for s in ss]} for r, ss in zip(prompts, teacher.generate(prompts, args.k))
        ]
        kept, rep = rejection_sample(rows, Verifier(think=THINK), progress=False)
        write_jsonl(out / f"{name}.jsonl", kept)
        report[name] = {"prompts": len(rows), "kept": len(kept), "kept_rate": rep["math"]["kept_rate"]}
    write_jsonl(out / "test.jsonl", test)
    write_jsonl(out / "probe.jsonl", probe)
    write_json(out / "world.json", report)


class Student:
    """Loads checkpoints of the run, trains, samples and scores them, with the library's trainer and sampler."""

    def __init__(self, args: argparse.Namespace, out: Path):
        self.args, self.out = args, out
        self.tokenizer = build_tokenizer(think=THINK)

    def load(self, path: Path) -> Any:
        return load_model(path, tokenizer=self.tokenizer)

    def correct(self, path: Path, records: list[dict]) -> list[int]:
        """Greedy correctness (0/1) of the model in ``path`` on each record."""
        sampler = make_sampler(SamplerConfig(batch_size=128), THINK, self.load(path), self.tokenizer)
        rates = pass_rates(sampler, records, 1, check, max_new_tokens=self.args.max_new_tokens)
        return [int(p.correct[0]) for p in rates]

    def complexity(self, path: Path, records: list[dict], seed: int) -> list[float]:
        return measure_complexity(self.load(path), self.tokenizer, records, num_samples=self.args.samples,
                                  mode=None, temperature=self.args.complexity_temperature,
                                  max_new_tokens=self.args.max_new_tokens, batch_size=128, seed=seed,
                                  think=THINK)  # fmt: skip

    def train(self, start: Path | None, records: list[dict], out_dir: Path, steps: int, seed: int, **kw: Any) -> Path:
        """SFT from ``start`` (None: a fresh model of ``--size`` initialised with ``seed``) on ``records``."""
        model = self.load(start) if start else build_model(self.tokenizer, size=self.args.size, seed=seed)
        a = self.args
        options = dict(output_dir=str(out_dir / "train"), max_steps=steps, per_device_train_batch_size=a.batch_size,
                       learning_rate=a.lr, lr_scheduler_type="constant_with_warmup", warmup_steps=2,
                       max_length=a.max_length,
                       assistant_only_loss=True, save_strategy="no", report_to="none", logging_steps=10_000,
                       disable_tqdm=True, use_cpu=True, seed=seed, data_seed=seed)  # fmt: skip
        options.update(kw)
        trainer = build_sft_trainer(
            model, self.tokenizer, SFTConfig(**options), _MODEL_ARGS, sft_dataset(records_to_dataset(records))
        )
        trainer.train()
        tmp = out_dir.with_name(out_dir.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        self.tokenizer.save_pretrained(tmp)
        shutil.rmtree(out_dir, ignore_errors=True)
        tmp.rename(out_dir)
        shutil.rmtree(out_dir / "train", ignore_errors=True)
        return out_dir


_MODEL_ARGS = ModelConfig()  # full fine-tuning, no LoRA


# ------------------------------------------------------------------------------------------------------ runs


def warm_up(student: Student, seed: int) -> Path:
    """The seed's starting model (cached): a fresh student trained on the warm-up slice."""
    path = student.out / "warm" / f"seed_{seed}"
    if (path / "config.json").exists():
        return path
    records = read_records(student.out / "warmup.jsonl", validate=False)
    args = student.args
    return student.train(None, records, path, args.warmup_steps, seed, lr_scheduler_type="cosine",
                         warmup_steps=0.05, learning_rate=args.warmup_lr)  # fmt: skip


def selection_config(arm: str, args: argparse.Namespace, seed: int) -> SelectionConfig:
    return SelectionConfig(**ARMS[arm], width=args.width, target_size=args.target, selection_seed=seed)


def run_chain(student: Student, seed_dir: Path, start: Path, pool: str, arm: str, merge: str, cands: list[list[dict]],
              seed: int) -> list[dict]:  # fmt: skip
    """One arm's iterations from the seed's start; each iteration's metrics are cached in its folder."""
    args, held_out = student.args, read_records(student.out / "test.jsonl", validate=False)
    chain = seed_dir / pool / f"{arm}+{merge}"
    current, students, out = start, [], []
    for t, candidates in enumerate(cands):
        it = chain / f"it{t}"
        if t == 0 and merge != "none":  # nothing to merge yet: iteration 0 is the no-merge chain's
            it = seed_dir / pool / f"{arm}+none" / "it0"
        metrics_file = it / "metrics.json"
        if not metrics_file.exists():
            step_seed = 100 * seed + t  # the same for every arm: sampling, selection and training are paired
            if arm in MEASURED:
                shared = seed_dir / pool / f"complexity_{t}.json"  # iteration 0: every arm's start is the same
                cached = shared if t == 0 else it / "complexity.json"
                if not cached.exists():
                    write_json(cached, student.complexity(current, candidates, step_seed))
                complexities = json.loads(cached.read_text())
            elif arm == "oracle":
                complexities = [oracle_complexity(r["difficulty"]) for r in candidates]
            else:
                complexities = [0.5] * len(candidates)
            selection = select(complexities, selection_config(arm, args, step_seed))
            chosen = [candidates[i] for i in fill_up(selection.indices, len(candidates), args.target, step_seed)]
            trained = student.train(current, chosen, it / "student", args.steps, step_seed)
            model = trained
            if t > 0 and merge == "ema":
                model = merge_models("ema", current, trained, it / "model", parameters={"beta": args.merge_beta})
            elif t > 0 and merge in ("task_arithmetic", "ties"):
                model = merge_iterations(merge, [*students, trained], it / "model", base=start,
                                         parameters={"density": args.ties_density})  # fmt: skip
            metrics = {
                "model": str(model),
                "student": str(trained),
                "center": selection.center,
                "levels": [r["difficulty"] for r in chosen],
                "filled": max(0, len(chosen) - len(selection.indices)),
                "hard": student.correct(model, held_out),
            }
            if pool == "merge":  # forgetting: each earlier iteration's own data
                metrics["own_data"] = student.correct(model, chosen[: args.forget_eval])
                metrics["earlier_data"] = [student.correct(model, o["data"]) for o in out]
            metrics["data"] = chosen[: args.forget_eval]
            write_json(metrics_file, metrics)
        metrics = json.loads(metrics_file.read_text())
        out.append(metrics)
        students.append(Path(metrics["student"]))
        current = Path(metrics["model"])
    return out


def run_start(args: argparse.Namespace, seed: int) -> dict:
    """The seed's warm-up (cached) and its accuracy: held-out hard problems and a probe per level."""
    torch.set_num_threads(1)
    began = time.perf_counter()
    student = Student(args, Path(args.out))
    done = student.out / f"seed_{seed}" / "start.json"
    if done.exists():
        return json.loads(done.read_text())
    start = warm_up(student, seed)
    probe = read_records(student.out / "probe.jsonl", validate=False)
    by_level: dict[str, list[int]] = {}
    for r, ok in zip(probe, student.correct(start, probe)):
        by_level.setdefault(str(r["difficulty"]), []).append(ok)
    result = {
        "seed": seed,
        "start_hard": student.correct(start, read_records(student.out / "test.jsonl", validate=False)),
        "start_by_level": {lv: sum(v) / len(v) for lv, v in by_level.items()},
        "seconds": time.perf_counter() - began,
    }
    write_json(done, result)
    return result


def chains_of(task: str, args: argparse.Namespace) -> list[tuple[str, str, int]]:
    """(arm, merge, iterations) of every chain of ``task``: a pool's selection arms, or the merge arms."""
    if task == "merge":
        return [(MERGE_ARM, merge, args.merge_iterations) for merge in MERGES]
    return [(arm, "none", args.iterations) for arm in ARMS]


def run_pool(args: argparse.Namespace, seed: int, pool: str) -> dict:
    """Every selection arm on ``pool``, or (``pool`` "merge") every merge arm on the merge pool, for one seed."""
    torch.set_num_threads(1)
    began = time.perf_counter()
    student = Student(args, Path(args.out))
    seed_dir = student.out / f"seed_{seed}"
    done = seed_dir / f"{pool}.json"
    if done.exists():
        return json.loads(done.read_text())
    start = warm_up(student, seed)
    records = read_records(student.out / f"{MERGE_POOL if pool == 'merge' else pool}.jsonl", validate=False)
    rounds = max(args.iterations, args.merge_iterations)
    drawn = random.Random(1000 * seed + len(pool)).sample(records, args.candidates * rounds)
    cands = [drawn[t * args.candidates : (t + 1) * args.candidates] for t in range(rounds)]
    result: dict[str, Any] = {"chains": {}}
    for arm, merge, rounds in chains_of(pool, args):
        chain = run_chain(student, seed_dir, start, pool, arm, merge, cands[:rounds], seed)
        result["chains"][f"{pool}/{arm}+{merge}"] = [{k: v for k, v in m.items() if k != "data"} for m in chain]
    result["seconds"] = time.perf_counter() - began
    write_json(done, result)
    logger.info("seed %d, pool %s done in %.0fs", seed, pool, result["seconds"])
    return result


def collect_seed(out: Path, seed: int, args: argparse.Namespace) -> dict | None:
    """What the seed has finished: its start, and every chain's completed iterations (None before the start)."""
    seed_dir = out / f"seed_{seed}"
    if not (seed_dir / "start.json").exists():
        return None
    result = {**json.loads((seed_dir / "start.json").read_text()), "chains": {}}
    for pool in TASKS:
        for arm, merge, rounds in chains_of(pool, args):
            chain = []
            for t in range(rounds):
                it = seed_dir / pool / f"{arm}+{'none' if t == 0 else merge}" / f"it{t}" / "metrics.json"
                if not it.exists():
                    break
                chain.append({k: v for k, v in json.loads(it.read_text()).items() if k != "data"})
            result["chains"][f"{pool}/{arm}+{merge}"] = chain
        if (seed_dir / pool / "complexity_0.json").exists():
            c0 = json.loads((seed_dir / pool / "complexity_0.json").read_text())
            informative = result["chains"].get(f"{pool}/gauss@informative+none")
            result[f"{pool}_start_complexity"] = {
                "mastered": sum(c == 0.0 for c in c0) / len(c0),
                "unsolved": sum(c == 1.0 for c in c0) / len(c0),
                "center_informative": informative[0]["center"] if informative else None,
            }
        if (seed_dir / f"{pool}.json").exists():
            result["seconds"] += json.loads((seed_dir / f"{pool}.json").read_text())["seconds"]
    return result


# ---------------------------------------------------------------------------------------------------- report


def forgetting(chain: list[dict]) -> list[float]:
    """Per example of each earlier iteration's data: correct right after its iteration minus correct at the end."""
    last = chain[-1]["earlier_data"]
    return [a - b for s, data in enumerate(last) for a, b in zip(chain[s]["own_data"], data)]


def complete(results: list[dict], key: str, rounds: int) -> list[dict]:
    """The seeds whose chain ``key`` has finished ``rounds`` iterations."""
    return [r for r in results if len(r["chains"].get(key, [])) >= rounds]


def report(results: list[dict], args: argparse.Namespace) -> str:
    seeds = [r["seed"] for r in results]
    T, M = args.iterations, args.merge_iterations
    lines = [f"Seeds {seeds}; {len(results[0]['start_hard'])} held-out hard problems (3-digit sums); 95% intervals: "
             "bootstrap over seeds and problems; a row marked (n seeds) had only n seeds finished.", ""]  # fmt: skip
    start = np.array([r["start_hard"] for r in results])
    lines += ["Warm-up start (before any arm): hard accuracy " + fmt(bootstrap(start)) + "; per seed "
              + ", ".join(f"{x:.3f}" for x in start.mean(axis=1)) + f" (spread {np.ptp(start.mean(axis=1)):.3f}).",
              "Start accuracy by level (mean over seeds): " + ", ".join(
                  f"{lv}: {np.mean([r['start_by_level'][lv] for r in results]):.2f}"
                  for lv in sorted(results[0]["start_by_level"], key=int)) + "."]  # fmt: skip
    for pool in POOLS:
        c0 = [r[f"{pool}_start_complexity"] for r in results if f"{pool}_start_complexity" in r]
        centres = [c["center_informative"] for c in c0 if c["center_informative"] is not None]
        lines += ["", f"### Pool `{pool}` ({', '.join(f'level {k}: {v:.0%}' for k, v in POOLS[pool].items())})", ""]
        if c0:
            lines += [f"Start: {np.mean([c['mastered'] for c in c0]):.0%} of candidates always solved, "
                      f"{np.mean([c['unsolved'] for c in c0]):.0%} never; informative centre at iteration 0: "
                      f"{np.mean(centres) if centres else float('nan'):.2f}.", ""]  # fmt: skip
        lines += ["| arm | " + " | ".join(f"hard acc. it {t}" for t in range(T)) + " | paired diff. to random (end) |"
                  " mastered / learnable / out-of-reach share of budget |", "|---|" + "---|" * (T + 2)]  # fmt: skip
        for arm in ARMS:
            key, rand_key = f"{pool}/{arm}+none", f"{pool}/random+none"
            done = complete(results, key, T)
            if not done:
                lines.append(f"| {arm} | " + " | ".join(["not finished"] * T) + " | - | - |")
                continue
            chains = [r["chains"][key] for r in done]
            cells = [fmt(bootstrap(np.array([c[t]["hard"] for c in chains]))) for t in range(T)]
            paired = [r for r in done if r in complete(results, rand_key, T)]
            diff = "-"
            if arm != "random" and paired:
                d = np.array([np.subtract(r["chains"][key][T - 1]["hard"], r["chains"][rand_key][T - 1]["hard"])
                              for r in paired])  # fmt: skip
                diff = signed(bootstrap(d)) + ("" if len(paired) == len(results) else f" ({len(paired)} seeds)")
            shares = [budget_shares([lv for m in c[:T] for lv in m["levels"]]) for c in chains]
            share = " / ".join(
                f"{np.mean([s[k] for s in shares]):.2f}" for k in ("mastered", "learnable", "out_of_reach")
            )
            note = "" if len(done) == len(results) else f" ({len(done)} seeds)"
            lines.append(f"| {arm}{note} | " + " | ".join(cells) + f" | {diff} | {share} |")
    title = f"### Merging between iterations (pool `{MERGE_POOL}`, {MERGE_ARM} selection, {M} rounds)"
    lines += ["", title, "",
              "| merge | hard acc. (end) | paired diff. to none | accuracy on earlier iterations' data (end) | "
              "forgetting (drop since its iteration) | forgetting: diff. to none (>0: forgets less) |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    base_key = f"merge/{MERGE_ARM}+none"
    for merge in MERGES:
        key = f"merge/{MERGE_ARM}+{merge}"
        done = [r for r in complete(results, key, M) if r in complete(results, base_key, M)]
        if not done:
            lines.append(f"| {merge} | not finished | - | - | - | - |")
            continue
        chains, base = [r["chains"][key] for r in done], [r["chains"][base_key] for r in done]
        end = np.array([c[-1]["hard"] for c in chains])
        kept = np.array([[x for d in c[-1]["earlier_data"] for x in d] for c in chains])
        forget = np.array([forgetting(c) for c in chains])
        base_end, base_forget = np.array([c[-1]["hard"] for c in base]), np.array([forgetting(c) for c in base])
        diff = "-" if merge == "none" else signed(bootstrap(end - base_end))
        fdiff = "-" if merge == "none" else signed(bootstrap(base_forget - forget))
        note = "" if len(done) == len(results) else f" ({len(done)} seeds)"
        lines.append(f"| {merge}{note} | {fmt(bootstrap(end))} | {diff} | {fmt(bootstrap(kept))} | "
                     f"{fmt(bootstrap(forget))} | {fdiff} |")  # fmt: skip
    return "\n".join(lines)


def compact(summary: dict) -> dict:
    """The run without per-problem scores: per seed and chain, hard accuracy and level counts per iteration."""
    seeds = [
        {"seed": r["seed"], "start_hard": float(np.mean(r["start_hard"])), "start_by_level": r["start_by_level"],
         "chains": {key: [{"hard": float(np.mean(m["hard"])), "levels": dict(Counter(map(str, m["levels"]))),
                           "center": m.get("center")} for m in chain] for key, chain in r["chains"].items()}}
        for r in summary["seeds"]
    ]  # fmt: skip
    return {**{k: v for k, v in summary.items() if k != "seeds"}, "seeds": seeds}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (reused: warm-ups and finished iterations)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5], help="seeds (paired arms each)")
    parser.add_argument("--jobs", type=int, default=6, help="processes: one per warm-up, then one per seed and pool")
    parser.add_argument("--iterations", type=int, default=2, help="iterations of each selection arm")
    parser.add_argument("--merge-iterations", type=int, default=3, help="iterations of each merge arm")
    parser.add_argument("--pool", type=int, default=1500, help="prompts per pool given to the teacher")
    parser.add_argument("--k", type=int, default=4, help="teacher replies per prompt")
    parser.add_argument("--error-rate", type=float, default=0.3, help="teacher's chance of a wrong result")
    parser.add_argument("--verbosity", type=float, default=0.5, help="teacher's chance of a padding line per step")
    parser.add_argument("--size", default="tiny", help="student size (train.world.tiny.SIZES)")
    parser.add_argument("--warmup-examples", type=int, default=1200, help="examples (levels 1-3) of the warm-up")
    parser.add_argument("--warmup-steps", type=int, default=400, help="SFT steps of the warm-up (cosine)")
    parser.add_argument("--warmup-lr", type=float, default=3e-3, help="warm-up peak learning rate")
    parser.add_argument("--candidates", type=int, default=192, help="candidates per iteration (same for all arms)")
    parser.add_argument("--complexity-temperature", type=float, default=0.5, help="sampling temperature of pass rates")
    parser.add_argument("--samples", type=int, default=4, help="student replies per candidate (pass rate)")
    parser.add_argument("--target", type=int, default=32, help="training examples per iteration")
    parser.add_argument("--steps", type=int, default=16, help="training steps per iteration")
    parser.add_argument("--batch-size", type=int, default=16, help="training batch size")
    parser.add_argument(
        "--lr", type=float, default=3e-4, help="learning rate per iteration (constant after 2 warm-up steps)"
    )
    parser.add_argument("--max-length", type=int, default=192, help="training sequence length")
    parser.add_argument("--max-new-tokens", type=int, default=80, help="longest sampled or evaluated reply")
    parser.add_argument("--width", type=float, default=0.25, help="Gaussian width")
    parser.add_argument("--merge-beta", type=float, default=0.5, help="EMA: weight kept by the previous model")
    parser.add_argument("--ties-density", type=float, default=0.5, help="TIES: share of each delta kept")
    parser.add_argument("--n-test", type=int, default=200, help="held-out hard problems")
    parser.add_argument("--n-probe", type=int, default=32, help="start-accuracy problems per level")
    parser.add_argument("--forget-eval", type=int, default=64, help="examples of each iteration's data re-scored")
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run (numbers mean nothing)")
    parser.add_argument("--report-only", action="store_true", help="print the tables of the finished seeds")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.jobs, args.iterations, args.pool, args.warmup_examples = [0, 1], 1, 2, 200, 64
        args.merge_iterations = 3
        args.warmup_steps, args.candidates, args.samples, args.target, args.steps = 4, 24, 2, 8, 2
        args.n_test, args.n_probe, args.forget_eval, args.size = 8, 2, 4, "nano"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    if not args.report_only:
        build_world(args, out)
        with ProcessPoolExecutor(max_workers=args.jobs) as workers:  # warm-ups first: the pools share them
            list(workers.map(_run, [(run_start, args, s) for s in args.seeds]))
            list(workers.map(_run, [(run_pool, args, s, p) for s in args.seeds for p in TASKS]))
    results = [r for r in (collect_seed(out, s, args) for s in args.seeds) if r is not None]
    text = report(results, args)
    wall = time.perf_counter() - began
    summary = {"args": vars(args), "world": json.loads((out / "world.json").read_text()), "wall_seconds": wall,
               "seed_seconds": [r["seconds"] for r in results], "load": os.getloadavg(), "report": text,
               "seeds": results}  # fmt: skip
    if not args.report_only:
        write_json(out / "results.json", summary)
    elif (out / "results.json").exists():  # the run's own wall time, load and options
        saved = json.loads((out / "results.json").read_text())
        summary.update({k: saved[k] for k in ("args", "wall_seconds", "load")})
    write_json(out / "summary.json", compact(summary))
    print(text)
    per_seed = ", ".join(f"{r['seconds']:.0f}s" for r in results)
    print(f"\nwall time {summary['wall_seconds']:.0f}s (per seed, its tasks' sum: {per_seed}); "
          f"load {summary['load'][0]:.1f}; results in {out / 'results.json'}")  # fmt: skip
    return summary


def _run(job: tuple) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return job[0](*job[1:])


if __name__ == "__main__":
    main()
