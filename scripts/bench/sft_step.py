"""Benchmark: SFT step time of the tiny pipeline's Stage-2 mix under the speed levers trl and transformers offer.

    OMP_NUM_THREADS=1 python scripts/bench/sft_step.py                           # eager, pad32, compile; ~6 min
    python scripts/bench/sft_step.py --arms eager,padding_free,packing --steps 30 --out outputs/bench-sft-step
    python scripts/bench/sft_step.py --arms eager,split2,split3,split4 --repeats 3 --mix warmup

The workload (``--mix``) is what a stage of `make demo` trains on: ``phase1``, Stage 2's phase 1, 64-row batches
drawn from the tiny world's slow replies and its fast pool, half each; ``warmup``, the base stage's slow replies of
the distillation pool. The world is the tiny pipeline's (whole-word tokens; ``--char_level`` for the world before
them), built here from the pipeline's seed (~3 s; nothing is downloaded), with its randomly initialised `small`
model, `assistant_only_loss`, one torch thread (two in the `threads2` arms). Every arm
runs in its own process (so no compile cache or allocator state carries over), the same rows in the same order and
the same seed; reported: seconds per step over the second half of the steps (compilation and warm-up excluded), the
ratio to the first arm, and the logged losses (an arm that changes the arithmetic shows it there). Arms:

* ``eager``: the trainer's defaults (padding to the longest row of each batch);
* ``pad32``: ``pad_to_multiple_of: 32`` (fewer distinct shapes);
* ``compile``: ``torch_compile: true`` with ``pad_to_multiple_of: 32`` (inductor; needs a C++ compiler);
* ``padding_free``: ``padding_free: true`` (rows concatenated, no padding);
* ``packing``: ``packing: true`` with ``packing_strategy: bfd`` into 144-token rows, 30 rows a step (~the same
  number of replies per step as 64 padded rows);
* ``split2``/``split3``/``split4``: ``length_micro_batches`` 2/3/4 (each batch as length-sorted micro-batches, the
  same update; :mod:`train.core.micro_batches`);
* ``threads2``: the trainer's defaults on two torch threads (``OMP_NUM_THREADS=2``), ``threads2_passive`` the same
  with ``OMP_WAIT_POLICY=passive`` (idle OpenMP threads sleep instead of spinning).

Each arm also reports a SHA-256 of its final weights: equal hashes are the same bits. With ``--busy`` the arms run
beside one ``while True: pass`` process (a shared machine's other job).

With ``--repeats N`` the arms run N times in turn (arm A, B, C, A, B, C, ...) and the table gives each arm's median
and range. The machine is shared: `uptime` is printed before and after; compare arms within one run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from datasets import Dataset
from transformers import TrainerCallback
from trl import ModelConfig

from train.core.configs import SFTConfig
from train.core.data import read_records
from train.pipeline.config import WorldConfig
from train.pipeline.world import build_world as build
from train.sft import build_sft_trainer, load_for_training, sft_dataset

ARMS = {
    "eager": {},
    "pad32": {"pad_to_multiple_of": 32},
    "compile": {"pad_to_multiple_of": 32, "torch_compile": True},
    "padding_free": {"padding_free": True},
    "packing": {"packing": True, "packing_strategy": "bfd", "max_length": 144, "per_device_train_batch_size": 30},
    "split2": {"length_micro_batches": 2},
    "split3": {"length_micro_batches": 3},
    "split4": {"length_micro_batches": 4},
    "threads2": {},
    "threads2_passive": {},
}
#: The environment of an arm's process beyond one torch thread.
ARM_ENV = {
    "threads2": {"OMP_NUM_THREADS": "2"},
    "threads2_passive": {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "passive"},
}
MIXES = ("phase1", "warmup")


def build_world(folder: Path, seed: int, char_level: bool = False) -> dict[str, Path]:
    return build(folder, WorldConfig(word_tokens=not char_level), "qwen3", seed)


def mix_rows(files: dict[str, Path], mix: str, seed: int) -> list[dict]:
    """The rows a stage trains on: Stage 2's phase-1 mix (slow and fast, half each) or the base's warm-up."""
    rng = random.Random(seed)
    if mix == "warmup":
        return read_records(files["warmup"])
    slow, fast = read_records(files["slow"]), read_records(files["fast_pool"])
    rows = rng.sample(slow, 3000) + rng.sample(fast, 3000)
    rng.shuffle(rows)
    return rows


def run_arm(arm: str, world: Path, steps: int, seed: int, mix: str = "phase1", char_level: bool = False,
            batch_size: int = 64) -> dict:  # fmt: skip
    """One arm in this process: train ``steps`` steps and time them."""
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    files = build_world(world, seed, char_level)
    rows = mix_rows(files, mix, seed)
    data = sft_dataset(Dataset.from_list([{"prompt": r["prompt"], "response": r["response"]} for r in rows]))
    options = {"per_device_train_batch_size": batch_size, "max_length": 256, **ARMS[arm]}
    args = SFTConfig(output_dir=str(world / "bench-out" / arm), max_steps=steps, learning_rate=1e-3,
                     assistant_only_loss=True, report_to="none", save_strategy="no", logging_steps=max(1, steps // 10),
                     disable_tqdm=True, seed=seed, **options)  # fmt: skip
    model_args = ModelConfig(model_name_or_path=str(files["model"]), dtype="float32")
    model, tokenizer = load_for_training(model_args, None, None, training_args=args)
    trainer = build_sft_trainer(model, tokenizer, args, model_args, data)
    ends: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *_args, **_kwargs):
            ends.append(time.perf_counter())

    trainer.add_callback(Clock())
    began = time.perf_counter()
    trainer.train()
    half = len(ends) // 2
    return {
        "arm": arm,
        "options": options,
        "total_s": time.perf_counter() - began,
        "s_per_step": (ends[-1] - ends[half]) / max(1, len(ends) - 1 - half),
        "losses": [round(h["loss"], 4) for h in trainer.state.log_history if "loss" in h],
        "compiled_graphs": int(torch._dynamo.utils.counters["stats"]["unique_graphs"]),  # 0: nothing was compiled
        "weights_sha256": weights_hash(trainer.model),
    }


def weights_hash(model: torch.nn.Module) -> str:
    """SHA-256 of every parameter's bytes, in order: two arms with the same hash trained the same bits."""
    digest = hashlib.sha256()
    for _, param in sorted(model.named_parameters()):
        digest.update(param.detach().contiguous().flatten().view(torch.uint8).numpy().tobytes())  # any dtype
    return digest.hexdigest()


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", default="eager,pad32,compile", help=f"comma-separated, of {', '.join(ARMS)}")
    parser.add_argument("--steps", type=int, default=60, help="steps per arm (the second half is timed)")
    parser.add_argument("--seed", type=int, default=0, help="the world's and the training's seed")
    parser.add_argument("--out", default="outputs/bench-sft-step", help="the world and the results go here")
    parser.add_argument("--mix", default="phase1", choices=MIXES, help="the rows: Stage 2's phase 1 or the warm-up")
    parser.add_argument("--char_level", action="store_true", help="the world before whole-word tokens")
    parser.add_argument("--repeats", type=int, default=1, help="run the arms this many times in turn")
    parser.add_argument("--batch_size", type=int, default=64, help="rows per step (Stage 2's processes take 32)")
    parser.add_argument("--busy", action="store_true", help="run the arms beside one busy-looping process")
    parser.add_argument("--arm", default=None, help=argparse.SUPPRESS)  # internal: run one arm, print its JSON
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.arm:
        row = run_arm(args.arm, out / "world", args.steps, args.seed, args.mix, args.char_level, args.batch_size)
        print("ARM " + json.dumps(row), flush=True)
        return {}
    arms = args.arms.split(",")
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        parser.error(f"unknown arm(s) {unknown}; choose from {', '.join(ARMS)}")
    build_world(out / "world", args.seed, args.char_level)
    result = {"mix": args.mix, "char_level": args.char_level, "batch_size": args.batch_size, "busy": args.busy,
              "uptime_before": uptime(), "runs": []}  # fmt: skip
    print(f"before: {result['uptime_before']}", flush=True)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.busy else None
    try:
        for repeat in range(args.repeats):
            for arm in arms:
                row = run_one(arm, args, out)
                result["runs"].append({**row, "repeat": repeat})
                print(f"{arm:<16} {row['s_per_step']:.3f} s/step, {row['total_s']:.0f} s in all, "
                      f"{row['compiled_graphs']} compiled graphs, weights {row['weights_sha256'][:12]}; "
                      f"losses {row['losses']}", flush=True)  # fmt: skip
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    result["uptime_after"] = uptime()
    result["arms"] = summarise(result["runs"], arms)
    print(f"after: {result['uptime_after']}", flush=True)
    for row in result["arms"]:
        print(f"{row['arm']:<16} median {row['median_s_per_step']:.3f} s/step (range {row['min']:.3f}-{row['max']:.3f}"
              f", {row['n']} runs): {row['vs_first']:.2f}x the first arm's time", flush=True)  # fmt: skip
    (out / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def run_one(arm: str, args: argparse.Namespace, out: Path) -> dict:
    """One arm in its own process (no compile cache or allocator state carries over)."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}  # only the passive arm sets it
    env = {**env, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **ARM_ENV.get(arm, {})}
    cmd = [sys.executable, __file__, "--arm", arm, "--steps", str(args.steps), "--seed", str(args.seed),
           "--out", str(out), "--mix", args.mix, "--batch_size", str(args.batch_size),
           *(["--char_level"] if args.char_level else [])]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("ARM ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"arm {arm} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][4:])


def summarise(runs: list[dict], arms: list[str]) -> list[dict]:
    """Each arm's median seconds per step, its range, and the ratio of medians to the first arm's."""
    rows = []
    for arm in arms:
        times = [r["s_per_step"] for r in runs if r["arm"] == arm]
        rows.append({"arm": arm, "n": len(times), "median_s_per_step": statistics.median(times),
                     "min": min(times), "max": max(times)})  # fmt: skip
    for row in rows:
        row["vs_first"] = row["median_s_per_step"] / rows[0]["median_s_per_step"]
    return rows


if __name__ == "__main__":
    main()
