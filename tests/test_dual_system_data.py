"""The dual-system stages' data: the prompt split for phase-2 labels, the fast pool, the phase mixes, the RL prompts
and the config's checks."""

from __future__ import annotations

import dataclasses

import pytest

from train.core.data import base_id, write_jsonl
from train.core.modes import QWEN3_THINK
from train.dual_system.config import DualSystemConfig
from train.dual_system.data import (
    auto_pool,
    fast_buckets,
    fast_pool,
    in_buckets,
    phase1_dataset,
    phase2_dataset,
    phase2_prompts,
    split_holdout,
    split_prompts,
    with_phase2_labels,
    without_prompts,
)
from train.dual_system.fusion import prompts_of_fusion
from train.dual_system.rl import rl_dataset


def _fusion_rows():
    rows = []
    for i, (label, diff, fr, sr) in enumerate([("fast", 1, 1.0, 1.0), ("slow", 3, 0.0, 1.0), ("slow", 3, 0.25, 0.5)]):
        fast_t, slow_t = "<think>\n\n</think>\n\n1", "<think>\nstep\n</think>\n\n1"
        for tag, resp in (
            ("no_think", fast_t),
            ("think", slow_t),
            ("none", slow_t),
            ("auto_think", fast_t if label == "fast" else slow_t),
        ):
            rows.append(
                {
                    "id": f"{i}-{tag}",
                    "prompt": f"q{i} /{tag}",
                    "response": resp,
                    "fusion_tag": tag,
                    "label": label,
                    "difficulty": diff,
                    "fast_rate": fr,
                    "slow_rate": sr,
                    "task": "math",
                    "answer": "1",
                }
            )
    return rows


def test_phase_datasets_follow_the_config():
    rows = _fusion_rows()
    args = DualSystemConfig(phase2_auto_share=0.5, phase2_mix_floor=0.2)
    p1 = phase1_dataset(rows, args, size=30, seed=0, think=QWEN3_THINK)
    assert len(p1) == 30
    assert not any("/auto_think" in ex["messages"][0]["content"] for ex in p1)
    p2, weights = phase2_dataset(rows, args, size=40, seed=0, think=QWEN3_THINK)
    # Bucket 1: all right in its labelled mode -> 0.2; bucket 3: mean slow rate 0.75 -> 0.2 + 0.25.
    assert weights == pytest.approx({"1": 0.2 / 0.65, "3": 0.45 / 0.65})
    auto = [ex for ex in p2 if "/auto_think" in ex["messages"][0]["content"]]
    assert len(p2) == 40 and len(auto) == 20
    assert sum("q0" in ex["messages"][0]["content"] for ex in auto) == round(20 * 0.2 / 0.65)


def test_slow_replay_share(tmp_path):
    replay = write_jsonl(tmp_path / "replay.jsonl", [
        {"prompt": f"r{i}", "task": "math", "answer": "1", "response": "<think>\nx\n</think>\n\n1"} for i in range(5)
    ])  # fmt: skip
    args = DualSystemConfig(replay_files=[str(replay)], phase1_slow_replay=0.25)
    p1 = phase1_dataset(_fusion_rows(), args, size=40, seed=0, think=QWEN3_THINK)
    assert sum(ex["messages"][0]["content"].startswith("r") for ex in p1) == 10


def test_prompts_of_fusion_recover_one_record_per_prompt():
    recs = prompts_of_fusion(_fusion_rows())
    assert [r["id"] for r in recs] == ["0", "1", "2"]
    assert recs[0]["prompt"] == "q0" and len(recs[0]["pool"]) == 2 and "fusion_tag" not in recs[0]


def test_rl_dataset_balances_labels():
    ds = rl_dataset(_fusion_rows())
    assert sorted(ds["label"]) == ["fast", "slow"]
    assert all(p[-1]["content"].endswith("/auto_think") for p in ds["prompt"])


def test_config_refuses_bad_shares():
    with pytest.raises(ValueError, match="phase2_auto_share"):
        DualSystemConfig(phase2_auto_share=1.5)


def test_holdout_split_keeps_whole_prompts_and_is_stable():
    rows = _fusion_rows()
    kept, held = split_holdout(rows, 0.5)
    assert len(kept) + len(held) == len(rows)
    assert {base_id(r) for r in kept}.isdisjoint({base_id(r) for r in held})
    assert all(len([r for r in part if base_id(r) == b]) == 4 for part in (kept, held)
               for b in {base_id(r) for r in part})  # fmt: skip
    assert split_holdout(rows, 0.5) == (kept, held)
    assert split_holdout(rows, 0.0) == (rows, [])


def test_seen_buckets_are_never_held_out_but_are_labelled_again():
    rows = _fusion_rows()  # prompt 0: difficulty 1; prompts 1 and 2: difficulty 3
    kept, held = split_holdout(rows, 1.0, seen=["1"])
    assert {base_id(r) for r in kept} == {"0"} and {base_id(r) for r in held} == {"1", "2"}
    assert in_buckets(kept, ["1"]) == kept and in_buckets(kept, []) == []
    # Numbers from YAML or the command line name the same bucket.
    assert DualSystemConfig(phase2_seen_buckets=[1, 2.0, "c0"]).phase2_seen_buckets == ["1", "2", "c0"]
    # Phase 2 keeps the phase-1 explicit rows only of the prompts that were not labelled again.
    fresh = [{**r, "label": "slow"} for r in rows if base_id(r) == "0"]
    p2 = with_phase2_labels(fresh, kept + rows[4:8], held)
    assert p2[: len(fresh)] == fresh
    assert {base_id(r) for r in p2[len(fresh) :]} == {"1"}
    assert all(r["fusion_tag"] != "auto_think" for r in p2[len(fresh) :])


# ------------------------------------------------------------------------------------------------- fast pool


def _fast_file(tmp_path, held_prompt=True):
    rows = [{"id": f"f{i}", "prompt": f"f{i}", "task": "math", "answer": "1", "response": "<think>\n\n</think>\n\n1"}
            for i in range(6)]  # fmt: skip
    if held_prompt:
        rows.append({"id": "1", "prompt": "q1", "task": "math", "answer": "1", "response": "<think>\n\n</think>\n\n1"})
    rows.append(
        {"id": "s", "prompt": "s /think", "task": "math", "answer": "1", "response": "<think>\nx\n</think>\n\n1"}
    )
    return write_jsonl(tmp_path / "fast.jsonl", rows)


def test_fast_pool_keeps_fast_replies_tags_them_and_drops_held_prompts(tmp_path):
    args = DualSystemConfig(fast_files=[str(_fast_file(tmp_path))], phase1_fast_share=0.5)
    pool = fast_pool(args, QWEN3_THINK)
    assert len(pool) == 7 and all(r["prompt"].endswith("/no_think") for r in pool)  # the slow reply is dropped
    held = [r for r in _fusion_rows() if base_id(r) == "1"]
    assert [r["id"] for r in fast_pool(args, QWEN3_THINK, held)] == [f"f{i}" for i in range(6)]
    # A held prompt is recognised in any mode, by id or by its untagged text.
    assert without_prompts([{"id": "x", "prompt": "q1 /no_think"}], [{"id": "1", "prompt": "q1"}]) == []


def test_phase1_fast_and_replay_shares_leave_out_held_prompts(tmp_path):
    replay = write_jsonl(tmp_path / "replay.jsonl", [
        {"id": "1", "prompt": "q1", "task": "math", "answer": "1", "response": "<think>\nx\n</think>\n\n1"},
        {"id": "r", "prompt": "r0", "task": "math", "answer": "1", "response": "<think>\nx\n</think>\n\n1"},
    ])  # fmt: skip
    args = DualSystemConfig(
        fast_files=[str(_fast_file(tmp_path))], phase1_fast_share=0.5, replay_files=[str(replay)],
        phase1_slow_replay=0.25,
    )  # fmt: skip
    rows, held = _fusion_rows()[:4], _fusion_rows()[4:8]  # prompt 1 is held out
    p1 = phase1_dataset(rows, args, size=40, seed=0, think=QWEN3_THINK, held=held)
    prompts = [ex["messages"][0]["content"] for ex in p1]
    assert sum(p.startswith("f") and p.endswith("/no_think") for p in prompts) == 20
    assert sum(p == "r0" for p in prompts) == 10
    assert sum(p.startswith("q0") for p in prompts) == 10
    assert not any(p.startswith("q1") for p in prompts)


def test_phase2_fast_share(tmp_path):
    args = DualSystemConfig(
        fast_files=[str(_fast_file(tmp_path, held_prompt=False))], phase2_auto_share=0.5, phase2_fast_share=0.25
    )
    p2, _ = phase2_dataset(_fusion_rows(), args, size=40, seed=0, think=QWEN3_THINK)
    prompts = [ex["messages"][0]["content"] for ex in p2]
    assert sum(p.endswith("/auto_think") for p in prompts) == 20
    assert sum(p.startswith("f") and p.endswith("/no_think") for p in prompts) == 10
    assert sum(p.startswith("q") and not p.endswith("/auto_think") for p in prompts) == 10
    # Without fast_files the share falls back to explicit-tag rows.
    p2, _ = phase2_dataset(_fusion_rows(), DualSystemConfig(phase2_fast_share=0.25), 40, 0, think=QWEN3_THINK)
    assert sum(ex["messages"][0]["content"].startswith("f") for ex in p2) == 0 and len(p2) == 40


def test_config_refuses_fast_shares_that_leave_no_room():
    with pytest.raises(ValueError, match="phase1_fast_share"):
        DualSystemConfig(phase1_fast_share=0.9, phase1_slow_replay=0.1)
    with pytest.raises(ValueError, match="phase2_fast_share"):
        DualSystemConfig(phase2_auto_share=0.8, phase2_fast_share=0.3)
    args = DualSystemConfig(phase1_fast_share=0.6, phase1_slow_replay=0.1, phase2_fast_share=0.25)
    assert (args.phase1_fast_share, args.phase2_fast_share) == (0.6, 0.25)


def test_phase2_files_are_labelling_prompts_kept_out_of_phase1(tmp_path):
    path = write_jsonl(tmp_path / "p2.jsonl", [
        {"id": "0", "prompt": "q0 /think", "task": "math", "answer": "1"},
        {"id": "n", "prompt": "new", "task": "math", "answer": "2"},
    ])  # fmt: skip
    args = DualSystemConfig(phase2_files=[str(path)])
    extra = phase2_prompts(args)
    assert [(r["id"], r["prompt"]) for r in extra] == [("0", "q0"), ("n", "new")]
    kept = without_prompts(_fusion_rows(), extra)
    assert len(kept) == 8 and not any(base_id(r) == "0" for r in kept)
    # No relabelling (or no phase 2): nothing to label them with, so they are not held out either.
    assert phase2_prompts(DualSystemConfig(phase2_files=[str(path)], phase2_steps=0)) == []
    no_relabel = DualSystemConfig(phase2_files=[str(path)], relabel_before_phase2=False)
    assert phase2_prompts(no_relabel) == []


def test_phase2_auto_pool_asks_fast_bucket_pool_rows_as_auto(tmp_path):
    pool = [{"id": f"e{i}", "prompt": f"e{i} /no_think", "task": "math", "answer": "1", "difficulty": 1,
             "response": "<think>\n\n</think>\n\n1"} for i in range(4)]  # fmt: skip
    pool += [{"id": f"h{i}", "prompt": f"h{i} /no_think", "task": "math", "answer": "1", "difficulty": 3,
              "response": "<think>\n\n</think>\n\n1"} for i in range(4)]  # fmt: skip
    pool.append(
        {"id": "u", "prompt": "u /no_think", "task": "math", "answer": "1", "response": "<think>\n\n</think>\n\n1"}
    )
    args = DualSystemConfig(
        fast_files=[str(write_jsonl(tmp_path / "fast.jsonl", pool))], phase2_auto_share=0.25,
        phase2_fast_share=0.25, phase2_auto_pool_share=0.25,
    )  # fmt: skip
    # _fusion_rows: bucket 1 is all fast-labelled, bucket 3 all slow: only the level-1 pool rows join as /auto_think.
    auto = [r for r in _fusion_rows() if r["fusion_tag"] == "auto_think"]
    assert fast_buckets(auto, 0.5) == {"1"}
    assert fast_buckets(auto, 0.0) == {"1", "3"}
    pooled = auto_pool(args, auto, QWEN3_THINK)
    assert [r["prompt"] for r in pooled] == [f"e{i} /auto_think" for i in range(4)]  # no difficulty: "u" not used
    assert all(r["response"] == "<think>\n\n</think>\n\n1" for r in pooled)
    p2, _ = phase2_dataset(_fusion_rows(), args, size=40, seed=0, think=QWEN3_THINK)
    prompts = [ex["messages"][0]["content"] for ex in p2]
    assert sum(p.startswith("e") and p.endswith("/auto_think") for p in prompts) == 10
    assert not any(p.startswith(("h", "u")) and p.endswith("/auto_think") for p in prompts)
    assert sum(p.startswith("q") and p.endswith("/auto_think") for p in prompts) == 10
    assert sum(p.endswith("/no_think") and not p.startswith("q") for p in prompts) == 10
    assert sum(p.startswith("q") and not p.endswith("/auto_think") for p in prompts) == 10
    # A threshold no bucket reaches: no pool row qualifies and the share falls back to explicit-tag rows.
    none = dataclasses.replace(args, phase2_auto_pool_min_fast=1.0)
    auto[0] = {**auto[0], "label": "slow"}
    assert fast_buckets(auto, 1.0) == set()
    p2, _ = phase2_dataset(
        [r for r in _fusion_rows() if r["fusion_tag"] != "auto_think"] + auto, none, 40, 0, think=QWEN3_THINK
    )
    prompts = [ex["messages"][0]["content"] for ex in p2]
    assert not any(p.startswith("e") and p.endswith("/auto_think") for p in prompts)
    assert sum(p.startswith("q") and not p.endswith("/auto_think") for p in prompts) == 20


def test_config_refuses_auto_pool_shares_that_leave_no_room():
    with pytest.raises(ValueError, match="phase2_auto_pool_share"):
        DualSystemConfig(phase2_auto_share=0.3, phase2_fast_share=0.4, phase2_auto_pool_share=0.4)
    with pytest.raises(ValueError, match="phase2_auto_pool_min_fast"):
        DualSystemConfig(phase2_auto_pool_min_fast=1.5)
    args = DualSystemConfig(phase2_auto_share=0.3, phase2_fast_share=0.4, phase2_auto_pool_share=0.3)
    assert args.phase2_auto_pool_share == 0.3


def test_split_prompts_holds_out_prompts_for_phase2_labels(tmp_path):
    rows = _fusion_rows()  # prompt 0: difficulty 1; prompts 1 and 2: difficulty 3
    new = {"id": "n", "prompt": "new", "task": "math", "answer": "2", "difficulty": 3}
    ids = lambda part: {base_id(r) for r in part}  # noqa: E731
    only_new = DualSystemConfig(
        phase2_holdout=1.0, phase2_seen_buckets=["1"], phase2_files=[str(write_jsonl(tmp_path / "n.jsonl", [new]))]
    )
    split = split_prompts(rows, only_new)
    # Prompts 1 and 2 are held out, the new one kept out of phase 1; the seen prompt 0 trains and is labelled again.
    assert ids(split.phase1) == {"0"} and ids(split.held) == {"1", "2", "n"}
    assert ids(split.to_label) == {"0", "1", "2"} and [r["id"] for r in split.extra] == ["n"]
    again = {"id": "0", "prompt": "q0", "task": "math", "answer": "1", "difficulty": 1}
    both = dataclasses.replace(only_new, phase2_files=[str(write_jsonl(tmp_path / "p2.jsonl", [again, new]))])
    split = split_prompts(rows, both)
    # Prompt 0 is a phase2_files prompt too: it is labelled once, with them, and still trains in phase 1.
    assert ids(split.phase1) == {"0"} and ids(split.held) == {"1", "2", "n"}
    assert ids(split.to_label) == {"1", "2"} and ids(split.extra) == {"0", "n"} and split.labelled == split.to_label
    # No holdout: the phase-1 rows are labelled again; no relabelling: nothing is kept out.
    split = split_prompts(rows, DualSystemConfig())
    assert (split.phase1, split.held, split.to_label, split.extra) == (rows, [], [], []) and split.labelled == rows
    split = split_prompts(rows, dataclasses.replace(both, relabel_before_phase2=False))
    assert (split.phase1, split.held, split.to_label, split.extra) == (rows, [], [], [])
