"""The scheduler simulator: closed-form cases exact, the staleness bound, monotonicity in s, determinism, the CLIs."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import numpy as np
import pytest
from conftest import load_script

from train.rl.schedule_sim import (
    POLICIES,
    LengthModel,
    SimConfig,
    calibrate,
    dispatch_order,
    policy_config,
    reduction,
    simulate,
)

CONSTANT = LengthModel(mean=3.0, cv=0.0)  # every group decodes in 3 s at decode_s = 1


def tail_config(**overrides) -> SimConfig:
    """A small long-tailed setup: 16 workers, 32 groups a step, the learner balanced with the generators."""
    cfg = SimConfig(
        workers=16,
        batch_groups=32,
        steps=30,
        decode_s=0.01,
        train_s=32 * 40.96 / 16,
        lengths=LengthModel(mean=4096.0, cv=1.5, max_len=32768.0),
        predict_sigma=0.5,
        seed=3,
    )
    return replace(cfg, **overrides)


# ------------------------------------------------------------------------------------------------------ closed forms


def test_sync_with_constant_lengths_and_w_equal_b_is_exact():
    # each step: 3 s of decoding (the learner waits), 1 s of training (the generators wait)
    r = simulate(SimConfig(workers=4, batch_groups=4, steps=5, decode_s=1.0, train_s=1.0, lengths=CONSTANT))
    assert r.makespan == 20.0
    assert r.generator_idle_fraction == 1.0 / 4.0  # train / (train + gen)
    assert r.learner_idle_fraction == 3.0 / 4.0  # gen / (train + gen)
    assert r.total_idle == 15.0 + 4 * 5.0
    assert r.staleness == {0: 20}
    assert r.steps_per_hour == 5 * 3600 / 20


def test_startup_shifts_a_sync_run_by_exactly_the_startup():
    base = SimConfig(workers=4, batch_groups=4, steps=5, decode_s=1.0, train_s=1.0, lengths=CONSTANT)
    r = simulate(replace(base, startup_s=7.0))
    assert r.makespan == 27.0 and r.learner_waits[0] == 10.0  # 7 s start-up, then 3 s of decoding
    assert r.learner_idle == 15.0 + 7.0 and r.generator_idle == 4 * (5.0 + 7.0)
    with pytest.raises(ValueError, match="startup_s"):
        SimConfig(startup_s=-1.0)


def test_ssp_learner_never_idles_after_warm_up_when_generation_is_faster():
    cfg = SimConfig(workers=4, batch_groups=4, steps=5, max_staleness=1, decode_s=1.0, train_s=4.0, lengths=CONSTANT)
    r = simulate(cfg)
    assert r.learner_waits == [3.0, 0.0, 0.0, 0.0, 0.0]  # only the first batch is waited for
    assert r.makespan == 3.0 + 5 * 4.0
    assert r.staleness == {0: 4, 1: 16}  # from step 1 on every group was made one version back
    # the generators make 4 groups in 3 s and the learner eats 4 per 4 s: each worker blocks 1 s per step
    assert r.generator_idle == 4 * 5 * 1.0


def test_one_worker_sync_and_ssp_are_exact():
    sync = simulate(SimConfig(workers=1, batch_groups=3, steps=5, decode_s=1.0, train_s=4.0, lengths=CONSTANT))
    assert sync.makespan == 5 * (3 * 3.0 + 4.0)
    assert sync.generator_idle == 5 * 4.0 and sync.learner_idle == 5 * 9.0
    # s = 1 and a train step shorter than a batch's decoding: the worker never stops, the learner waits 9 - 4 s
    ssp = simulate(
        SimConfig(workers=1, batch_groups=3, steps=5, max_staleness=1, decode_s=1.0, train_s=4.0, lengths=CONSTANT)
    )
    assert ssp.makespan == 5 * 9.0 + 4.0
    assert ssp.generator_idle == 0.0
    assert ssp.learner_waits == [9.0, 5.0, 5.0, 5.0, 5.0]


def test_sync_is_ssp_with_zero_staleness_and_priority_needs_varied_lengths():
    cfg = tail_config()
    assert simulate(policy_config(cfg, "sync", 2)) == simulate(policy_config(cfg, "ssp", 0))
    constant = replace(cfg, lengths=CONSTANT, decode_s=1.0, train_s=1.0)
    assert simulate(policy_config(constant, "priority", 2)) == simulate(policy_config(constant, "sync", 2))


def test_dispatch_order_is_longest_predicted_first_within_each_batch():
    predicted = np.array([1.0, 3.0, 2.0, 5.0, 4.0, 6.0, 7.0])
    assert dispatch_order(predicted, 3, priority=False).tolist() == [0, 1, 2, 3, 4, 5, 6]
    assert dispatch_order(predicted, 3, priority=True).tolist() == [1, 2, 0, 5, 3, 4, 6]


def test_priority_with_an_oracle_shortens_sync_steps():
    # many groups per worker: longest-first list scheduling leaves a shorter tail than data order
    cfg = tail_config(batch_groups=128, train_s=128 * 40.96 / 16, predict_sigma=0.0, lengths=LengthModel(cv=1.0))
    sync, prio = (simulate(policy_config(cfg, p, 0)) for p in ("sync", "priority"))
    assert prio.makespan < sync.makespan
    assert reduction(sync, prio) > 0.05


# ------------------------------------------------------------------------------------------------------ invariants


@pytest.mark.parametrize("priority", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_idle_time_is_non_increasing_in_staleness(priority, seed):
    idle = [simulate(tail_config(max_staleness=s, priority=priority, seed=seed)).total_idle for s in range(5)]
    assert all(a >= b for a, b in zip(idle, idle[1:])), idle
    assert idle[2] < 0.5 * idle[0]


@pytest.mark.parametrize("s", [0, 1, 2, 3])
@pytest.mark.parametrize("priority", [False, True])
def test_observed_staleness_never_exceeds_s(s, priority):
    # heterogeneous workers and a fast learner push groups to their staleness limit
    decode = tuple(0.005 * (1 + w % 4) for w in range(16))
    r = simulate(tail_config(max_staleness=s, priority=priority, decode_s=decode, train_s=5.0, lengths=LengthModel()))
    assert max(r.staleness) <= s
    assert sum(r.staleness.values()) == 30 * 32  # every step trained exactly B groups


def test_deterministic_by_seed():
    cfg = tail_config(max_staleness=2, priority=True)
    assert simulate(cfg) == simulate(replace(cfg))
    assert simulate(tail_config(seed=4)).makespan != simulate(tail_config(seed=5)).makespan


def test_length_models():
    rng = np.random.default_rng(0)
    x = LengthModel(mean=1000.0, cv=1.5).sample(rng, 400_000)
    assert x.mean() == pytest.approx(1000.0, rel=0.03)
    assert x.std() / x.mean() == pytest.approx(1.5, rel=0.1)
    assert LengthModel(mean=1000.0, cv=1.5, max_len=2000.0).sample(rng, 1000).max() == 2000.0
    assert set(LengthModel(values=(5.0, 7.0)).sample(rng, 100)) == {5.0, 7.0}


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="unknown policy 'fifo'"):
        policy_config(SimConfig(), "fifo", 1)
    with pytest.raises(ValueError, match="decode_s has 2 values for 4 workers"):
        SimConfig(workers=4, decode_s=(0.1, 0.2))
    bad = tmp_path / "m.json"
    bad.write_text(json.dumps({"runs": [{"workers": 1, "measured": {}}]}))
    with pytest.raises(ValueError, match=r"m.json: runs\[0\] lacks batch_groups, decode_s_per_token"):
        calibrate(bad)


# ------------------------------------------------------------------------------------------------------ programs


def test_calibrate_predicts_a_constant_sync_run_exactly(tmp_path):
    run = {
        "name": "s0",
        "workers": 4,
        "batch_groups": 4,
        "max_staleness": 0,
        "decode_s_per_token": 0.5,
        "group_lengths": [6, 6, 6],
        "train_s": [1.0, 1.0],
        "steps": 5,
        "measured": {"learner_idle_fraction": 0.7, "generator_idle_fraction": 0.3},
    }
    path = tmp_path / "measured.json"
    path.write_text(json.dumps({"runs": [run]}))
    (row,) = calibrate(path)
    assert row["name"] == "s0" and row["measured_learner_idle_fraction"] == 0.7
    assert row["predicted_learner_idle_fraction"] == 0.75
    assert row["predicted_generator_idle_fraction"] == 0.25
    path.write_text(json.dumps({"runs": [dict(run, startup_s=5.0)]}))  # a child's start-up: 5 more idle seconds
    (row,) = calibrate(path)
    assert row["predicted_learner_idle_fraction"] == (15.0 + 5.0) / 25.0


def test_cli_prints_one_row_per_policy(capsys):
    cli = load_script("scripts/rl_scheduler_sim.py")
    cli.main(["--workers", "8", "--steps", "5", "--cv", "1.0", "--policies", "sync", "ssp", "--staleness", "1"])
    out = capsys.readouterr().out
    assert "W=8 B=16 steps=5 s=1 train_s=81.92" in out
    rows = [line.split() for line in out.splitlines()[2:]]
    assert [row[0] for row in rows] == ["sync", "ssp(1)"]
    assert rows[0][5] == "+0.0%" and rows[1][5].startswith("-")  # ssp has less idle time than sync


def test_bench_headline_at_1024_workers_is_fast_and_meets_the_target():
    bench = load_script("scripts/bench/rl_scheduler_sim.py")
    start = time.perf_counter()
    table, gains = bench.headline(bench.base_config(1024, steps=8, seed=0), staleness=2)
    assert time.perf_counter() - start < 30
    assert gains["ssp+priority"] >= 0.25
    assert gains["ssp+priority"] > gains["ssp"] > 0
    assert len(table.splitlines()) == 1 + len(POLICIES)
