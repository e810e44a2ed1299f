"""Scheduler simulator benchmark: how much idle time SSP and the prioritized queue remove at 1,024 workers.

    python scripts/bench/rl_scheduler_sim.py            # ~20 s on a 2-core CPU; deterministic (seed 0)

The setup (train/rl/schedule_sim.py has the model): W = 1,024 generator workers, B = 2,048 groups per learner step,
group lengths lognormal with mean 4,096 tokens capped at 32,768 (max_tokens), 0.01 s per decode step, a learner step
of 81.92 s = the mean decode time of a batch spread over the workers (the learner can just keep up: neither side is
the bottleneck), the length predictor off by a lognormal factor of sigma 0.5, 20 steps.

(a) at CV = 1: total idle time (learner + generators, worker-hours) of sync, SSP(s=2), priority, SSP(2)+priority;
    the reduction of SSP(2)+priority against sync (target >= 25%; the paper reports ~30% at 1,024 NPUs) and its
    split: SSP alone against sync, then priority on top of SSP.
(b) a sweep over CV: each policy's reduction against sync, and the CV below which each gain drops under 10%.

Calibration against the CPU actor (`scripts/bench/rl_async.py`) waits for that bench: see
``scripts/rl_scheduler_sim.py --calibrate``.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

from train.rl.schedule_sim import LengthModel, SimConfig, format_table, reduction, run_policies

POLICIES = ("sync", "ssp", "priority", "ssp+priority")
CVS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
THRESHOLD = 0.10


def base_config(workers: int, steps: int, seed: int) -> SimConfig:
    big_b, mean_len, decode_s = 2 * workers, 4096.0, 0.01
    return SimConfig(
        workers=workers,
        batch_groups=big_b,
        steps=steps,
        decode_s=decode_s,
        train_s=big_b * mean_len * decode_s / workers,
        lengths=LengthModel(mean=mean_len, cv=1.0, max_len=8 * mean_len),
        predict_sigma=0.5,
        seed=seed,
    )


def headline(base: SimConfig, staleness: int) -> tuple[str, dict[str, float]]:
    """Table (a) and its figures: each policy's reduction against sync, and priority's gain on top of SSP."""
    results = run_policies(base, POLICIES, staleness)
    sync, ssp, prio, both = results.values()
    gains = {
        "ssp+priority": reduction(sync, both),
        "ssp": reduction(sync, ssp),
        "priority": reduction(sync, prio),
        "priority on top of ssp": reduction(ssp, both),
    }
    return format_table(results, reference="sync"), gains


def crossing(xs: list[float], ys: list[float], level: float) -> str:
    """The x below which y stays under ``level``: linear interpolation after the last point under it."""
    if all(y >= level for y in ys):
        return f"none: >= {level:.0%} at every CV down to {xs[0]}"
    if ys[-1] < level:  # no clean threshold: name the CVs where it is under
        return f"under {level:.0%} at CV " + ", ".join(f"{x}" for x, y in zip(xs, ys) if y < level)
    i = max(j for j, y in enumerate(ys) if y < level)
    x0, x1, y0, y1 = xs[i], xs[i + 1], ys[i], ys[i + 1]
    return f"{x0 + (level - y0) * (x1 - x0) / (y1 - y0):.2f}"


def sweep(base: SimConfig, staleness: int) -> str:
    """Table (b): per CV, sync's idle and each policy's reduction; the CV where each gain crosses 10%."""
    lines = [f"{'CV':>5} {'sync idle (w-h)':>16} {'ssp':>8} {'priority':>9} {'ssp+prio':>9} {'prio on ssp':>12}"]
    gains: dict[str, list[float]] = {"ssp": [], "priority": [], "ssp+prio": [], "prio on ssp": []}
    for cv in CVS:
        cfg = replace(base, lengths=replace(base.lengths, cv=cv))
        sync, ssp, prio, both = run_policies(cfg, POLICIES, staleness).values()
        row = {"ssp": reduction(sync, ssp), "priority": reduction(sync, prio), "ssp+prio": reduction(sync, both)}
        row["prio on ssp"] = reduction(ssp, both)
        for key, value in row.items():
            gains[key].append(value)
        lines.append(
            f"{cv:>5.2f} {sync.total_idle / 3600:>16.1f} {row['ssp']:>8.1%} {row['priority']:>9.1%}"
            f" {row['ssp+prio']:>9.1%} {row['prio on ssp']:>12.1%}"
        )
    lines.append(f"CV below which the gain is under {THRESHOLD:.0%}:")
    lines += [f"  {key:<12} {crossing(list(CVS), values, THRESHOLD)}" for key, values in gains.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=1024)
    parser.add_argument("--staleness", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    base = base_config(args.workers, args.steps, args.seed)
    print(
        f"W={base.workers} B={base.batch_groups} steps={base.steps} s={args.staleness} train_s={base.train_s}"
        f" mean_len={base.lengths.mean:.0f} max_len={base.lengths.max_len:.0f} decode_s={base.decode_s}"
        f" predict_sigma={base.predict_sigma} seed={base.seed}"
    )
    table, gains = headline(base, args.staleness)
    print(f"\n(a) CV = {base.lengths.cv}\n{table}")
    print(
        f"SSP({args.staleness})+priority cuts total idle by {gains['ssp+priority']:.1%} against sync (target >= 25%):"
        f" SSP alone {gains['ssp']:.1%}, priority on top of SSP a further {gains['priority on top of ssp']:.1%}"
        f" of SSP's idle; priority alone (sync) {gains['priority']:.1%}"
    )
    print(f"\n(b) reduction of total idle against sync, by length CV\n{sweep(base, args.staleness)}")
    print(f"\n({time.perf_counter() - start:.1f} s)")  # the only line that differs between two runs


if __name__ == "__main__":
    main()
