"""The tiny end-to-end pipeline on a CPU: base model -> Stage 1a distillation -> Stage 1b GRPO -> Stage 2 dual system.

    python scripts/demo.py --out outputs/demo          # what `make demo` runs (~15-25 min on 2 CPU cores)
    python scripts/demo.py --out /tmp/demo --quick     # every stage for a few steps (a smoke run, ~3 min)
    python scripts/demo.py --out /tmp/pangu --think-format pangu   # openPangu's [unused16]/[unused17] delimiters

Every stage is the real recipe launched with `accelerate launch`, on the arithmetic world (data the repo
generates, no downloads):

0. a ~1M-parameter model, 1-3 digit sums, and a teacher pool: K replies per prompt from a programmatic teacher
   that pads and errs, verified, the shortest correct one kept (`generate_teacher.py`, `select_data.py verify`);
1. a *base model*: a short SFT warm-up on a slice of the pool. A real run starts from a pre-trained base; here it
   gives the student pass rates spread over [0, 1], which model-aware selection needs;
2. Stage 1a, `recipes/distill.py`: iterations of model-aware selection, SFT and an EMA merge with the previous
   iteration;
3. Stage 1b, `recipes/grpo.py`: GRPO with the MARS router on 3-digit sums;
4. Stage 2, `recipes/dual_system.py`: fusion data labelled by the model's own fast/slow pass rates, then
   explicit-tag and /auto_think phases;
5. greedy evaluation on held-out problems after every stage, in fast, slow and auto mode; the last stage's
   results also go to `eval/eval.{json,md,png}` (accuracy against tokens per mode).

``--think-format`` picks the think delimiters of the whole run: the tiny tokenizer is built for them, the data and
the teacher write them, and every stage reads them from the tokenizer. The arithmetic world is the same in either
format, so the two runs learn the same thing and score the same.

Each stage writes into its own folder under --out and is skipped on a rerun when its output is complete, so an
interrupted demo resumes where it stopped (with the format it was started with). `summary.json` and `summary.md`
hold the per-stage table.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from transformers.trainer_utils import get_last_checkpoint

from train.core.cli import setup_logging
from train.core.data import read_records, write_jsonl
from train.core.loading import load_model_and_tokenizer
from train.core.modes import THINK_FORMATS
from train.eval.evaluation import evaluate, write_results

ROOT = Path(__file__).resolve().parents[1]

logger = logging.getLogger("demo")
CPU = str(ROOT / "recipes" / "accelerate" / "cpu.yaml")
CONFIGS = ROOT / "recipes" / "configs" / "tiny"

# Step counts and sizes: the full demo, and --quick (a smoke run that only checks the plumbing).
FULL = dict(n_train=6000, n_test=300, warmup_examples=3000, warmup_steps=300, iterations=2, candidates=1000,
            target=500, distill_steps=150, distill_lr=1e-3, rl_prompts=400, rl_steps=30, fusion_prompts=600,
            phase1=400, phase2=150)  # fmt: skip
QUICK = dict(n_train=300, n_test=30, warmup_examples=100, warmup_steps=4, iterations=1, candidates=32,
             target=16, distill_steps=2, distill_lr=1e-3, rl_prompts=16, rl_steps=2, fusion_prompts=24, phase1=2,
             phase2=2)  # fmt: skip


def run(cmd: list[str], done: Path) -> None:
    """Run a stage unless its completion marker (holding its wall time) exists; a failure stops the demo."""
    if done.exists():
        logger.info("skip (done): %s", done.parent.name)
        return
    logger.info("run: %s", " ".join(cmd))
    start = time.perf_counter()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    done.parent.mkdir(parents=True, exist_ok=True)
    done.write_text(f"{time.perf_counter() - start:.1f}\n")


def launch(recipe: str, config: str, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", CPU,
            str(ROOT / "recipes" / recipe), "--config", str(CONFIGS / config), *overrides]  # fmt: skip


def script(name: str, *args: str) -> list[str]:
    return [sys.executable, str(ROOT / "scripts" / name), *args]


# ------------------------------------------------------------------------------------------------------ stages


def pin_think_format(out: Path, think_format: str) -> None:
    """Record the run's think format in --out; resuming a run with another one would mix the two."""
    marker = out / "think_format"
    if marker.exists() and marker.read_text().strip() != think_format:
        raise SystemExit(f"{out} was built with --think-format {marker.read_text().strip()}; use another --out")
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text(think_format + "\n")


def make_world(out: Path, p: dict[str, float], think_format: str) -> None:
    """Model, problems (slow.jsonl, and fast.jsonl: the same problems answered fast), the teacher pool, all in the
    run's think format (the teacher writes the format of the student's tokenizer)."""
    run(script("make_tiny_model.py", "--out", str(out / "model"), "--size", "small", "--think-format", think_format),
        out / "model" / ".done")  # fmt: skip
    data = out / "data"
    run(script("make_arithmetic_data.py", "--out", str(data), "--n-train", str(p["n_train"]),
               "--n-test", str(p["n_test"]), "--levels", "1", "2", "3", "--modes", "slow", "fast",
               "--think-format", think_format),
        data / ".done")  # fmt: skip
    if not (data / "fast.jsonl").exists():
        rows = read_records(data / "train.jsonl")
        write_jsonl(data / "slow.jsonl", [r for r in rows if "/no_think" not in r["prompt"]])
        write_jsonl(data / "fast.jsonl", [r for r in rows if "/no_think" in r["prompt"]])
    pool = out / "pool"
    run(script("generate_teacher.py", "--input", str(data / "slow.jsonl"), "--out",
               str(pool / "teacher.jsonl"), "--backend", "arithmetic", "--mode", "slow", "--k", "4",
               "--error_rate", "0.2", "--verbosity", "0.5", "--tokenizer", str(out / "model")),
        pool / ".teacher.done")  # fmt: skip
    run(script("select_data.py", "verify", "--input", str(pool / "teacher.jsonl"), "--out", str(pool / "pool.jsonl"),
               "--tokenizer", str(out / "model")),
        pool / ".done")  # fmt: skip


def warm_up(out: Path, model: Path, p: dict[str, float]) -> Path:
    """The base model: a short SFT of the initialised model on a random slice of the pool."""
    slice_file = out / "base" / "warmup.jsonl"
    if not slice_file.exists():
        pool = read_records(out / "pool" / "pool.jsonl")
        write_jsonl(slice_file, random.Random(0).sample(pool, min(p["warmup_examples"], len(pool))))
    run(launch("sft.py", "sft.yaml", "--model_name_or_path", str(model), "--train_files", str(slice_file),
               "--output_dir", str(out / "base"), "--max_steps", str(p["warmup_steps"]), "--disable_tqdm", "true"),
        out / "base" / ".done")  # fmt: skip
    return out / "base"


def distill(out: Path, base: Path, p: dict[str, float]) -> Path:
    """Stage 1a: model-aware selection, SFT and merge, ``iterations`` times."""
    run(launch("distill.py", "distill.yaml", "--model_name_or_path", str(base),
               "--train_file", str(out / "pool" / "pool.jsonl"), "--eval_file", str(out / "data" / "test.jsonl"),
               "--output_dir", str(out / "distill"), "--iterations", str(p["iterations"]),
               "--candidates_per_iteration", str(p["candidates"]), "--target_size", str(p["target"]),
               "--max_steps", str(p["distill_steps"]), "--learning_rate", str(p["distill_lr"]),
               "--per_device_train_batch_size", "64",
               "--eval_max_samples", "100", "--generation_batch_size", "256"),
        out / "distill" / ".done")  # fmt: skip
    return Path(json.loads((out / "distill" / "final.json").read_text())["model"])


def grpo(out: Path, policy: Path, p: dict[str, float]) -> Path:
    """Stage 1b: GRPO with MARS on 3-digit sums from the training problems."""
    rl_file = out / "grpo" / "prompts.jsonl"
    if not rl_file.exists():
        rows = [r for r in read_records(out / "data" / "slow.jsonl") if r.get("difficulty") == 3]
        write_jsonl(rl_file, [{k: r[k] for k in ("id", "prompt", "task", "answer")} for r in rows[: p["rl_prompts"]]])
    run(launch("grpo.py", "grpo_arithmetic.yaml", "--model_name_or_path", str(policy), "--train_files",
               str(rl_file), "--output_dir", str(out / "grpo"), "--max_steps", str(p["rl_steps"]),
               "--disable_tqdm", "true"),
        out / "grpo" / ".done")  # fmt: skip
    return out / "grpo"


def dual_system(out: Path, start: Path, p: dict[str, float]) -> Path:
    """Stage 2: fusion data from the model's own pass rates, then the two fusion phases.

    The fast answers to the training problems are the fast pool (``fast_files``) and the Stage-1 pool is replayed.
    """
    run(launch("dual_system.py", "dual_system.yaml", "--model_name_or_path", str(start),
               "--train_files", str(out / "data" / "slow.jsonl"), "--fast_files", str(out / "data" / "fast.jsonl"),
               "--replay_files", str(out / "pool" / "pool.jsonl"), "--output_dir", str(out / "dual_system"),
               "--max_prompts", str(p["fusion_prompts"]), "--phase1_steps", str(p["phase1"]),
               "--phase2_steps", str(p["phase2"]), "--disable_tqdm", "true"),
        out / "dual_system" / ".done")  # fmt: skip
    return out / "dual_system"


# (name, stage, output folder): each stage takes the previous stage's model.
STAGES = [("base (warm-up SFT)", warm_up, "base"), ("1a distillation", distill, "distill"),
          ("1b GRPO + MARS", grpo, "grpo"), ("2 dual system", dual_system, "dual_system")]  # fmt: skip


# -------------------------------------------------------------------------------------------------- evaluation


def evaluate_stage(name: str, model_dir: Path, out: Path, test: list[dict[str, Any]]) -> dict[str, Any]:
    """Greedy fast/slow/auto results of one stage's model, cached in ``eval/<name>.json``."""
    cached = out / "eval" / f"{name}.json"
    if cached.exists():
        return json.loads(cached.read_text())
    model, tok = load_model_and_tokenizer(model_dir)
    results = evaluate(model, tok, test, max_new_tokens=96, batch_size=150)
    write_results(results, out / "eval", name=name)
    return results


def summary_table(stages: dict[str, dict[str, Any]], seconds: dict[str, float]) -> str:
    lines = ["| stage | slow acc | fast acc | auto acc | slow tokens | auto tokens | auto fast share | wall |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, r in stages.items():
        m = r["modes"]
        lines.append(
            f"| {name} | {m['slow']['avg@1']:.1%} | {m['fast']['avg@1']:.1%} | {m['auto']['avg@1']:.1%} "
            f"| {m['slow']['mean_tokens']:.1f} | {m['auto']['mean_tokens']:.1f} | {m['auto']['fast_share']:.0%} "
            f"| {seconds.get(name, 0):.0f} s |"
        )
    return "\n".join(lines) + "\n"


def grpo_trend(out: Path) -> str:
    """The GRPO stage's logged MARS accuracy reward, first logged window against the last."""
    last = get_last_checkpoint(str(out / "grpo"))
    history = json.loads((Path(last) / "trainer_state.json").read_text())["log_history"] if last else []
    logs = [h for h in history if "mars/math/accuracy" in h]
    if len(logs) < 2:
        return "GRPO: too few logged steps to show a trend"
    first, last = logs[0], logs[-1]
    return (f"GRPO (MARS math accuracy of the sampled completions): {first['mars/math/accuracy']:.2f} at step "
            f"{first['step']} -> {last['mars/math/accuracy']:.2f} at step {last['step']}")  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/demo", help="working folder (resumable)")
    parser.add_argument("--quick", action="store_true", help="a few steps per stage: checks the plumbing only")
    parser.add_argument(
        "--think-format",
        default="qwen3",
        choices=sorted(THINK_FORMATS),
        help="think delimiters of the run: qwen3 (<think>/</think>) or pangu (openPangu's [unused16]/[unused17])",
    )
    args = parser.parse_args(argv)
    setup_logging()
    out = Path(args.out).resolve()
    p = QUICK if args.quick else FULL

    pin_think_format(out, args.think_format)
    make_world(out, p, args.think_format)
    models: dict[str, Path] = {}
    seconds: dict[str, float] = {}
    model = out / "model"
    for name, stage, folder in STAGES:
        model = models[name] = stage(out, model, p)
        seconds[name] = float((out / folder / ".done").read_text())
    logger.info("training stages took %.0f s in all", sum(seconds.values()))

    test = read_records(out / "data" / "test.jsonl")
    stages = {}
    for i, (name, path) in enumerate(models.items()):
        stages[name] = evaluate_stage(f"stage{i}", path, out, test)
    table = summary_table(stages, seconds)
    (out / "summary.md").write_text(table)
    summary = {"think_format": args.think_format, "stages": stages, "seconds": seconds}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\nHeld-out: {len(test)} problems of 1-3 digit sums, greedy, {args.think_format} think format, per stage:"
          f"\n\n{table}\n{grpo_trend(out)}")  # fmt: skip
    print(f"per-stage results: {out / 'eval'} (stage3.png: accuracy against tokens per mode)")
    return stages


if __name__ == "__main__":
    main()
