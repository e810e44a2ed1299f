"""Benchmark: SFT step time of the tiny pipeline's Stage-2 mix under the speed levers trl and transformers offer.

    OMP_NUM_THREADS=1 python scripts/bench/sft_step.py                           # eager, pad32, compile; ~6 min
    python scripts/bench/sft_step.py --arms eager,padding_free,packing --steps 30 --out outputs/bench-sft-step

The workload is what Stage 2's phase 1 trains on in `make demo`: 64-row batches drawn from the tiny world's slow
replies and its fast pool, half each (the world is built here from the pipeline's seed, ~3 s; nothing is
downloaded), with the world's randomly initialised `small` model, `assistant_only_loss`, one torch thread. Every arm
runs in its own process (so no compile cache or allocator state carries over), the same rows in the same order and
the same seed; reported: seconds per step over the second half of the steps (compilation and warm-up excluded), the
ratio to the first arm, and the logged losses (an arm that changes the arithmetic shows it there). Arms:

* ``eager``: the trainer's defaults (padding to the longest row of each batch);
* ``pad32``: ``pad_to_multiple_of: 32`` (fewer distinct shapes);
* ``compile``: ``torch_compile: true`` with ``pad_to_multiple_of: 32`` (inductor; needs a C++ compiler);
* ``padding_free``: ``padding_free: true`` (rows concatenated, no padding);
* ``packing``: ``packing: true`` with ``packing_strategy: bfd`` into 144-token rows, 30 rows a step (~the same
  number of replies per step as 64 padded rows).

The machine is shared: `uptime` is printed before and after; compare arms within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
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
}


def build_world(folder: Path, seed: int) -> dict[str, Path]:
    return build(folder, WorldConfig(), "qwen3", seed)


def run_arm(arm: str, world: Path, steps: int, seed: int) -> dict:
    """One arm in this process: train ``steps`` steps and time them."""
    torch.set_num_threads(1)
    files = build_world(world, seed)
    rng = random.Random(seed)
    slow, fast = read_records(files["slow"]), read_records(files["fast_pool"])
    rows = rng.sample(slow, 3000) + rng.sample(fast, 3000)
    rng.shuffle(rows)
    data = sft_dataset(Dataset.from_list([{"prompt": r["prompt"], "response": r["response"]} for r in rows]))
    options = {"per_device_train_batch_size": 64, "max_length": 256, **ARMS[arm]}
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
    }


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", default="eager,pad32,compile", help=f"comma-separated, of {', '.join(ARMS)}")
    parser.add_argument("--steps", type=int, default=60, help="steps per arm (the second half is timed)")
    parser.add_argument("--seed", type=int, default=0, help="the world's and the training's seed")
    parser.add_argument("--out", default="outputs/bench-sft-step", help="the world and the results go here")
    parser.add_argument("--arm", default=None, help=argparse.SUPPRESS)  # internal: run one arm, print its JSON
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.arm:
        print("ARM " + json.dumps(run_arm(args.arm, out / "world", args.steps, args.seed)), flush=True)
        return {}
    arms = args.arms.split(",")
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        parser.error(f"unknown arm(s) {unknown}; choose from {', '.join(ARMS)}")
    build_world(out / "world", args.seed)
    result = {"uptime_before": uptime(), "arms": []}
    print(f"before: {result['uptime_before']}", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for arm in arms:
        cmd = [sys.executable, __file__, "--arm", arm, "--steps", str(args.steps), "--seed", str(args.seed),
               "--out", str(out)]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("ARM ")]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"arm {arm} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        row = json.loads(lines[-1][4:])
        row["vs_first"] = row["s_per_step"] / result["arms"][0]["s_per_step"] if result["arms"] else 1.0
        result["arms"].append(row)
        print(f"{arm:<13} {row['s_per_step']:.3f} s/step ({row['vs_first']:.2f}x the first arm), "
              f"{row['total_s']:.0f} s in all, {row['compiled_graphs']} compiled graphs; losses {row['losses']}",
              flush=True)  # fmt: skip
    result["uptime_after"] = uptime()
    print(f"after: {result['uptime_after']}", flush=True)
    (out / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
