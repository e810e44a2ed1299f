"""Bounded-staleness rollouts on the CPU: one actor thread plus one learner thread against synchronous GRPO.

    python scripts/bench/rl_async.py --start outputs/bench-grpo-learning/start --json outputs/rl-async/result.json

Three arms, the same start, prompts, learner steps and seed (no dynamic sampling, no prompt queue: plain GRPO):

* ``sync``: trl's GRPOTrainer (FastslowGRPOTrainer with rollout_mode sync), generation and training in one thread,
  torch with 2 intra-op threads (the machine's 2 cores); ``sync1``, a control: the same with 1 intra-op thread;
* ``ssp0`` / ``ssp2``: rollout_mode ssp with max_staleness 0 / 2: the actor thread generates (TransformersSampler with
  sampling log-probs) while the learner thread trains; torch with 1 intra-op thread each (2 cores in all).

Measured per arm: wall time of ``train()``, completion tokens per second (trained completion tokens / wall), the
learner's idle fraction (time blocked waiting for the actor's groups / wall), the generator's idle fraction, the
observed staleness histogram, and greedy accuracy on held-out level-3 problems before and after. Targets (issue
#12): idle(s=2) <= idle(s=0) / 2; tokens/s(s=2) >= 1.25 x sync; |gain(s=2) - gain(sync)| <= 3 points; staleness
never above s. The ssp arms' measured actor calls (decode steps, seconds) and learner step times are written in the
scheduler simulator's ``--calibrate`` schema (docs/grpo_scheduler.md) and replayed through it (target: predicted
learner idle within 5 points of measured at s = 0 and s = 2).

The start is the learning benchmark's cached SFT start (scripts/bench/grpo_learning.py builds it: a small char-level
model whose level-3 sampled accuracy is 0.3-0.6); the level-3 prompts and held-out problems are drawn here by fixed
seeds. The machine is shared: the script prints ``uptime`` before and after.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from transformers import TrainerCallback

from train.core.checks import exact_match
from train.core.configs import GRPOConfig
from train.core.loading import load_model, load_model_and_tokenizer, load_tokenizer
from train.core.modes import Mode, ThinkFormat, parse_response
from train.eval.evaluation import per_prompt_scores
from train.rl.data import to_grpo_example
from train.rl.schedule_sim import calibrate
from train.rl.trainer import FastslowGRPOTrainer
from train.sampling import SamplerConfig, SamplingParams, make_sampler
from train.world.arithmetic import make_problems

EVAL_TOKENS = 96


def accuracy_reward(think: ThinkFormat):
    """1 when the reply's answer equals the reference, else 0 (the arithmetic world's exact match)."""

    def accuracy(prompts, completions, answer, **_):
        texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
        return [float(exact_match(parse_response(t, think).answer, {"answer": a})) for t, a in zip(texts, answer)]

    return accuracy


def greedy_accuracy(model_dir: Path, records: list[dict]) -> float:
    model, tok = load_model_and_tokenizer(model_dir)
    sampler = make_sampler(SamplerConfig(batch_size=128), model=model.eval(), tokenizer=tok)
    replies = sampler.sample([r["prompt"] for r in records], SamplingParams(max_new_tokens=EVAL_TOKENS), Mode.SLOW)
    rows = per_prompt_scores(records, replies, Mode.SLOW, exact_match, think=sampler.think)
    return float(np.mean([r["correct"][0] for r in rows]))


class StepClock(TrainerCallback):
    """Wall-clock start and end of every optimizer step."""

    def __init__(self):
        self.starts, self.ends = [], []

    def on_step_begin(self, args, state, control, **kwargs):
        self.starts.append(time.perf_counter())

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())


class Logged(FastslowGRPOTrainer):
    """Records the learner's cumulative wait for actor groups at each generation batch and every group it trained
    (its actor call, length and call seconds) for the calibration."""

    waits: list[float]
    call_log: list

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        if self.model.training and self._ssp_queue is not None:
            self.waits = [*getattr(self, "waits", []), self._ssp_queue.stats.wait_s]
        return out

    def _draw(self, n_groups_local):
        rows, positions = super()._draw(n_groups_local)
        if self.ssp:
            self.call_log = [*getattr(self, "call_log", []), *self._ssp_pending[-n_groups_local:]]
        return rows, positions


def run_arm(
    name: str,
    args: argparse.Namespace,
    dataset: Dataset,
    think: ThinkFormat,
    mode: str,
    s: int,
    threads: int,
    actor: str = "thread",
) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(args.seed)
    out = Path(args.out) / name
    config = GRPOConfig(
        output_dir=str(out),
        max_steps=args.steps,
        per_device_train_batch_size=args.groups * args.G,
        num_generations=args.G,
        max_completion_length=args.max_tokens,
        temperature=1.0,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        loss_type="dapo",
        beta=0.0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=args.seed,
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    clock = StepClock()
    trainer = Logged(
        model=load_model(args.start),
        reward_funcs=[accuracy_reward(think)],
        args=config,
        train_dataset=dataset,
        processing_class=load_tokenizer(args.start),
        rollout_mode=mode,
        max_staleness=s,
        groups_per_call=args.groups_per_call,
        actor=actor,
        callbacks=[clock],
    )
    t = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t
    trainer.save_model(str(out / "final"))
    logs = [h for h in trainer.state.log_history if "loss" in h]
    tokens = sum(h["completions/mean_length"] * args.groups * args.G for h in logs)
    row: dict[str, Any] = {"arm": name, "wall_s": wall, "steps": len(logs), "completion_tokens": tokens}
    row["tokens_per_s"] = tokens / wall
    # Steady state: from the end of step 1 to the end of the last step (no start-up, no first batch).
    window = clock.ends[-1] - clock.ends[0]
    row["steady_tokens_per_s"] = sum(h["completions/mean_length"] * args.groups * args.G for h in logs[1:]) / window
    row["accuracy"] = greedy_accuracy(out / "final", args.heldout_records)
    if mode == "ssp":
        row.update(ssp_measures(trainer, clock, wall, s, args))
    return row


def ssp_measures(trainer: Logged, clock: StepClock, wall: float, s: int, args: argparse.Namespace) -> dict:
    """Idle fractions, staleness, and the run in the simulator's calibration schema."""
    stats = trainer._ssp_queue.stats
    waits = np.diff([0.0, *trainer.waits])  # wait in each generation batch (one per step here)
    steps = [e - b for b, e in zip(clock.starts, clock.ends, strict=True)]
    train_s = [max(step - w, 1e-3) for step, w in zip(steps, waits, strict=True)]
    calls: dict[int, tuple[int, float]] = {}
    for g in trainer.call_log:
        length, seconds = calls.get(g.call, (0, g.seconds))
        calls[g.call] = (max(length, g.length), seconds)
    lengths = [length for length, _ in calls.values()]
    busy = sum(seconds for _, seconds in calls.values())
    learner_idle = stats.wait_s / wall
    # Start-up: the learner's first wait less the decoding of the calls that filled its first batch (a child's
    # imports and model load; ~0 for a thread actor).
    first = {g.call: g.seconds for g in trainer.call_log[: args.groups]}
    startup = max(0.0, waits[0] - sum(first.values()))
    return {
        "learner_idle_fraction": learner_idle,
        "steady_learner_idle_fraction": (trainer.waits[-1] - trainer.waits[0]) / (clock.ends[-1] - clock.ends[0]),
        "generator_idle_fraction": max(0.0, 1.0 - busy / wall),
        "staleness": {str(k): v for k, v in sorted(stats.staleness.items())},
        "dropped_groups": stats.dropped,
        "calibration": {
            "name": f"s{s}-{trainer.actor_kind}",
            "workers": 1,
            "batch_groups": args.groups // args.groups_per_call,
            "max_staleness": s,
            "decode_s_per_token": busy / max(sum(lengths), 1),
            "group_lengths": lengths,
            "train_s": train_s,
            "steps": len(train_s),
            "startup_s": startup,
            "measured": {"learner_idle_fraction": learner_idle, "generator_idle_fraction": 1.0 - busy / wall},
        },
    }


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--start", default="outputs/bench-grpo-learning/start", help="the SFT start (a model dir)")
    parser.add_argument("--n-rl", type=int, default=400, help="level-3 training prompts (drawn here, seed 12)")
    parser.add_argument("--out", default="outputs/rl-async")
    parser.add_argument("--json", default=None, help="write the results here (default <out>/result.json)")
    parser.add_argument("--steps", type=int, default=12, help="learner steps of every arm")
    parser.add_argument("--groups", type=int, default=8, help="groups (prompts) per learner step")
    parser.add_argument(
        "--groups-per-call",
        type=int,
        default=None,
        help="groups the actor decodes per generate call (default --groups: the whole step, the trainer's default)",
    )
    parser.add_argument("--G", type=int, default=4, help="completions per group")
    parser.add_argument("--max-tokens", type=int, default=72)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--n-heldout", type=int, default=400, help="held-out level-3 problems for accuracy")
    parser.add_argument(
        "--arms",
        default="sync,sync1,ssp0,ssp2,ssp0p,ssp2p",
        help="sync1: sync with 1 torch thread (control); ssp0p/ssp2p: the actor in a child process (no shared GIL)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.groups_per_call = args.groups_per_call or args.groups
    # Level-3 problems: held-out and training prompts disjoint (ids), drawn by fixed seeds.
    args.heldout_records = make_problems(args.n_heldout, [3], seed=21)
    records = make_problems(args.n_rl, [3], seed=12, exclude={r["id"] for r in args.heldout_records})
    think = ThinkFormat.from_tokenizer(load_tokenizer(args.start))
    dataset = Dataset.from_list([to_grpo_example(r, None, None) for r in records])
    before = uptime()
    print(f"before: {before}", flush=True)
    torch.set_num_threads(2)
    start_acc = greedy_accuracy(Path(args.start), args.heldout_records)
    print(f"start: held-out level-3 greedy accuracy {start_acc:.3f} on {len(args.heldout_records)}", flush=True)
    arms = {
        "sync": ("sync", 0, 2, "thread"),
        "sync1": ("sync", 0, 1, "thread"),
        "ssp0": ("ssp", 0, 1, "thread"),
        "ssp2": ("ssp", 2, 1, "thread"),
        "ssp0p": ("ssp", 0, 1, "process"),
        "ssp2p": ("ssp", 2, 1, "process"),
    }
    rows = {}
    for name in args.arms.split(","):
        rows[name] = run_arm(name, args, dataset, think, *arms[name])
        rows[name]["gain"] = rows[name]["accuracy"] - start_acc
        print(json.dumps({k: v for k, v in rows[name].items() if k != "calibration"}), flush=True)
    result = {"start_accuracy": start_acc, "arms": rows, "uptime_before": before, "uptime_after": uptime()}
    result["calibration"] = replay(rows, Path(args.out))
    print(summary(rows), flush=True)
    print(f"after: {result['uptime_after']}", flush=True)
    out = Path(args.json or Path(args.out) / "result.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    return result


def replay(rows: dict, out: Path) -> list[dict]:
    """Write the ssp arms' measurements in the simulator's schema and replay them (predicted vs measured idle)."""
    runs = [row["calibration"] for row in rows.values() if "calibration" in row]
    if not runs:
        return []
    path = out / "calibration.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"runs": runs}, indent=1) + "\n")
    table = calibrate(path)
    for r in table:
        lp, lm = r["predicted_learner_idle_fraction"], r["measured_learner_idle_fraction"]
        gp, gm = r["predicted_generator_idle_fraction"], r["measured_generator_idle_fraction"]
        print(
            f"calibration {r['name']}: learner idle predicted {lp:.1%} measured {lm:.1%} ({100 * (lp - lm):+.1f} "
            f"pts); generator idle predicted {gp:.1%} measured {gm:.1%}",
            flush=True,
        )
    print(f"calibration file: {path} (python scripts/rl_scheduler_sim.py --calibrate {path})", flush=True)
    return [{k: v for k, v in r.items() if k != "config"} for r in table]


def summary(rows: dict) -> str:
    lines = []
    if {"ssp0", "ssp2"} <= set(rows):
        a, b = rows["ssp0"]["learner_idle_fraction"], rows["ssp2"]["learner_idle_fraction"]
        lines.append(f"learner idle s=2 / s=0: {b:.1%} / {a:.1%} = {b / a:.2f} (target <= 0.5)")
    if {"sync", "ssp2"} <= set(rows):
        r = rows["ssp2"]["tokens_per_s"] / rows["sync"]["tokens_per_s"]
        lines.append(f"tokens/s s=2 vs sync: {r:.2f}x (target >= 1.25)")
        d = 100 * (rows["ssp2"]["gain"] - rows["sync"]["gain"])
        lines.append(f"accuracy gain s=2 minus sync: {d:+.1f} points (target within 3)")
    for name in ("ssp2", "ssp2p"):
        for base in ("sync", "sync1"):
            if {name, base} <= set(rows):
                a, b = rows[name], rows[base]
                lines.append(
                    f"tokens/s {name} vs {base}: {a['tokens_per_s'] / b['tokens_per_s']:.2f}x whole run, "
                    f"{a['steady_tokens_per_s'] / b['steady_tokens_per_s']:.2f}x steady state"
                )
    if {"ssp0p", "ssp2p"} <= set(rows):
        a, b = rows["ssp0p"]["learner_idle_fraction"], rows["ssp2p"]["learner_idle_fraction"]
        lines.append(f"process actor: learner idle s=2 / s=0: {b:.1%} / {a:.1%} = {b / a:.2f}")
    for name, row in rows.items():
        if "staleness" in row:
            lines.append(f"{name}: staleness {row['staleness']}, dropped {row['dropped_groups']}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
