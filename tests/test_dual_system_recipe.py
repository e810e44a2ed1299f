"""The dual-system recipe builds fusion data, trains both phases, saves, resumes; the mode-choice reward."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from conftest import load_script
from safetensors.torch import load_file

from rewards.mode_choice import ModeChoiceReward
from train.core.checks import exact_match
from train.core.data import write_jsonl

ROOT = Path(__file__).resolve().parents[1]
dual_system = load_script("recipes/dual_system.py")


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def _args(model_dir, data, out, *extra):
    return [
        "--model_name_or_path", str(model_dir), "--train_files", str(data), "--output_dir", str(out),
        "--num_samples", "2", "--max_new_tokens", "12", "--batch_size", "16", "--check", "exact",
        "--phase1_steps", "2", "--phase2_steps", "2", "--per_device_train_batch_size", "4",
        "--learning_rate", "1e-2", "--max_length", "128", "--assistant_only_loss", "true",
        "--save_strategy", "no", "--report_to", "none", "--logging_steps", "1", "--disable_tqdm", "true",
        "--dataloader_num_workers", "0", *extra,
    ]  # fmt: skip


def test_recipe_builds_trains_and_resumes(tiny_model_dir, arithmetic_data_dir, tmp_path):
    out = tmp_path / "run"
    final = dual_system.main(_args(tiny_model_dir, arithmetic_data_dir / "train.jsonl", out, "--max_prompts", "8"))
    assert final == out
    fusion = out / "fusion"
    for name in ("labels.jsonl", "fusion.jsonl", "stats.json", "labels.png"):
        assert (fusion / name).exists(), name
    stats = json.loads((fusion / "stats.json").read_text())
    assert stats["prompts"] == 8 and stats["records"] == 4 * stats["usable"] > 0
    rows = [json.loads(x) for x in (fusion / "fusion.jsonl").read_text().splitlines()]
    assert {r["fusion_tag"] for r in rows} == {"no_think", "think", "none", "auto_think"}
    for phase in ("phase1", "phase2"):
        info = json.loads((out / phase / "phase_done.json").read_text())
        assert info["steps"] == 2 and len(info["losses"]) == 2 and all(x > 0 for x in info["losses"])
    assert "difficulty_mix" in json.loads((out / "phase2" / "phase_done.json").read_text())
    # Phase 2 was labelled again by the phase-1 model, on the same prompts.
    assert json.loads((out / "fusion_phase2" / "stats.json").read_text())["prompts"] == 8
    start, p1, end = _weights(tiny_model_dir), _weights(out / "phase1"), _weights(out)
    changed = lambda a, b: any(not torch.equal(a[k], b[k]) for k in a)  # noqa: E731
    assert changed(start, p1) and changed(p1, end)
    # A second run skips the saved phases (and the fusion build) and ends with the same weights.
    mtime = (fusion / "labels.jsonl").stat().st_mtime
    dual_system.main(_args(tiny_model_dir, arithmetic_data_dir / "train.jsonl", out, "--max_prompts", "8"))
    assert (fusion / "labels.jsonl").stat().st_mtime == mtime
    again = _weights(out)
    assert all(torch.equal(end[k], again[k]) for k in end)


def test_seen_bucket_prompts_train_in_phase1_and_are_labelled_again(
    tiny_model_dir, arithmetic_data_dir, tmp_path, monkeypatch
):
    train = [json.loads(x) for x in (arithmetic_data_dir / "train.jsonl").read_text().splitlines()][:16]
    level1 = next(r for r in train if r["difficulty"] == 1)
    new = {"id": "new", "prompt": "Compute 98+97.", "task": "math", "answer": "195", "difficulty": 2}
    extra = write_jsonl(
        tmp_path / "p2.jsonl", [{k: level1[k] for k in ("id", "prompt", "task", "answer", "difficulty")}, new]
    )
    held_in_phase1 = []
    real = dual_system.phase1_dataset
    monkeypatch.setattr(
        dual_system, "phase1_dataset", lambda *a, held=(), **k: held_in_phase1.extend(held) or real(*a, held=held, **k)
    )
    out = tmp_path / "run"
    keys = [
        "--max_prompts",
        "16",
        "--phase2_holdout",
        "0.5",
        "--phase2_seen_buckets",
        "1",
        "--phase2_files",
        str(extra),
    ]
    dual_system.main(_args(tiny_model_dir, arithmetic_data_dir / "train.jsonl", out, *keys))
    fusion = [json.loads(x) for x in (out / "fusion" / "fusion.jsonl").read_text().splitlines()]
    kept, held = dual_system.split_holdout(fusion, 0.5, ["1"])
    ids = lambda rows: {dual_system.base_id(r) for r in rows}  # noqa: E731
    # Level 1 is never kept out of phase 1; the held-out level-2 prompts and the new prompt are.
    assert ids(held_in_phase1) == ids(held) | {"new"} and not ids(dual_system.in_buckets(held_in_phase1, ["1"]))
    # Phase 2 labels the held-out prompts, every level-1 prompt and the phase-2 file, each once.
    labels = [json.loads(x) for x in (out / "fusion_phase2" / "labels.jsonl").read_text().splitlines()]
    seen = ids(dual_system.in_buckets(kept, ["1"]))
    assert len(seen) > 1 and ids(held)
    expected = ids(held) | seen | {level1["id"], "new"}
    assert sorted(r["id"] for r in labels) == sorted(expected)


def test_rerun_after_phase2_gives_rl_the_phase2_labels(tiny_model_dir, arithmetic_data_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    dual_system.main(_args(tiny_model_dir, arithmetic_data_dir / "train.jsonl", out, "--max_prompts", "8"))
    labelled = out / "fusion_phase2" / "fusion.jsonl"
    relabelled = [{**json.loads(x), "marker": "phase2"} for x in labelled.read_text().splitlines()]
    write_jsonl(labelled, relabelled)  # tells the phase-2 labels from the start model's
    seen = {}
    monkeypatch.setattr(dual_system, "run_rl", lambda model, tok, rows, *a: seen.setdefault("rows", rows) and model)
    # Phases 1 and 2 are done: only the RL phase runs, on the phase-1 model's labels (not the start model's).
    dual_system.main(_args(tiny_model_dir, arithmetic_data_dir / "train.jsonl", out, "--max_prompts", "8",
                           "--rl_steps", "1"))  # fmt: skip
    assert seen["rows"] == relabelled


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
    args = dual_system.DualSystemConfig(phase2_auto_share=0.5, phase2_mix_floor=0.2)
    p1 = dual_system.phase1_dataset(rows, args, size=30, seed=0)
    assert len(p1) == 30
    assert not any("/auto_think" in ex["messages"][0]["content"] for ex in p1)
    p2, weights = dual_system.phase2_dataset(rows, args, size=40, seed=0)
    # Bucket 1: all right in its labelled mode -> 0.2; bucket 3: mean slow rate 0.75 -> 0.2 + 0.25.
    assert weights == pytest.approx({"1": 0.2 / 0.65, "3": 0.45 / 0.65})
    auto = [ex for ex in p2 if "/auto_think" in ex["messages"][0]["content"]]
    assert len(p2) == 40 and len(auto) == 20
    assert sum("q0" in ex["messages"][0]["content"] for ex in auto) == round(20 * 0.2 / 0.65)


def test_slow_replay_share(tmp_path):
    replay = write_jsonl(tmp_path / "replay.jsonl", [
        {"prompt": f"r{i}", "task": "math", "answer": "1", "response": "<think>\nx\n</think>\n\n1"} for i in range(5)
    ])  # fmt: skip
    args = dual_system.DualSystemConfig(replay_files=[str(replay)], phase1_slow_replay=0.25)
    p1 = dual_system.phase1_dataset(_fusion_rows(), args, size=40, seed=0)
    assert sum(ex["messages"][0]["content"].startswith("r") for ex in p1) == 10


def test_prompts_of_fusion_recover_one_record_per_prompt():
    from train.dual_system.fusion import prompts_of_fusion

    recs = prompts_of_fusion(_fusion_rows())
    assert [r["id"] for r in recs] == ["0", "1", "2"]
    assert recs[0]["prompt"] == "q0" and len(recs[0]["pool"]) == 2 and "fusion_tag" not in recs[0]


def test_rl_dataset_balances_labels():
    ds = dual_system.rl_dataset(_fusion_rows())
    assert sorted(ds["label"]) == ["fast", "slow"]
    assert all(p[-1]["content"].endswith("/auto_think") for p in ds["prompt"])


def test_config_refuses_bad_shares():
    with pytest.raises(ValueError, match="phase2_auto_share"):
        dual_system.DualSystemConfig(phase2_auto_share=1.5)


# ---------------------------------------------------------------------------------------------- mode_choice


FAST_OK, FAST_BAD = "<think>\n\n</think>\n\n7", "<think>\n\n</think>\n\n8"
SLOW_OK, SLOW_BAD = "<think>\nwork\n</think>\n\n7", "<think>\nwork\n</think>\n\n9"


def _reward(completions, prompt, ref):
    r = ModeChoiceReward(delta=0.3, check=exact_match)
    n = len(completions)
    return r(completions, prompts=[prompt] * n, answer=["7"] * n, slow_rate=[ref] * n)


def test_mode_choice_rewards_correct_fast_replies_within_the_reference():
    out = _reward([FAST_OK, SLOW_OK, FAST_BAD, SLOW_BAD], "Compute 3+4. /auto_think", 0.5)
    # Fast accuracy in this group 0.5 >= reference 0.5: the bonus applies to the correct fast reply.
    assert out == pytest.approx([1 - 0.5 + 0.3, 0.5, -0.5, -0.5])


def test_mode_choice_withholds_the_bonus_below_the_reference():
    out = _reward([FAST_OK, FAST_BAD, FAST_BAD, SLOW_OK], "Compute 3+4. /auto_think", 1.0)
    assert out == pytest.approx([0.0, -1.0, -1.0, 0.0])  # fast accuracy 1/3 < 1.0: no bonus
    assert max(out[:3]) <= out[3]


def test_mode_choice_explicit_tags_want_correct_and_obedient_replies():
    assert _reward([FAST_OK, SLOW_OK], "Compute 3+4. /no_think", 0.0) == [1.0, 0.0]
    assert _reward([FAST_OK, SLOW_OK], "Compute 3+4.", 0.0) == [0.0, 1.0]  # no tag: slow


def test_mode_choice_registered_and_validated():
    from rewards.registry import registered

    assert registered()["mode_choice"] is ModeChoiceReward
    with pytest.raises(ValueError, match="delta"):
        ModeChoiceReward(delta=1.0)


@pytest.mark.slow
def test_rl_phase_trains_the_mode_choice(tiny_model_dir, arithmetic_data_dir, tmp_path, monkeypatch):
    import rewards.mode_choice

    # A random nano model is never right; a checker that accepts some replies gives the groups reward variance.
    monkeypatch.setattr(rewards.mode_choice, "_default_check", lambda answer, row: len(answer or "") % 2 == 0)
    out = tmp_path / "rl"
    extra = ["--max_prompts", "8", "--phase1_steps", "1", "--phase2_steps", "1", "--rl_steps", "2",
             "--rl_num_generations", "2", "--rl_batch_size", "4", "--rl_max_completion_length", "8"]  # fmt: skip
    dual_system.main(_args(tiny_model_dir, arithmetic_data_dir / "train.jsonl", out, *extra))
    info = json.loads((out / "rl" / "phase_done.json").read_text())
    assert info["steps"] == 2
    assert any("rewards/mode_choice/mean" in h for h in info["log"])
    p2, end = _weights(out / "phase2"), _weights(out)
    assert any(not torch.equal(p2[k], end[k]) for k in p2)


def test_lora_run_trains_one_adapter_through_both_phases(tiny_model_dir, arithmetic_data_dir, tmp_path):
    out = tmp_path / "lora"
    extra = ["--max_prompts", "4", "--use_peft", "true", "--lora_r", "4", "--lora_alpha", "8",
             "--lora_target_modules", "q_proj", "v_proj"]  # fmt: skip
    final = dual_system.main(_args(tiny_model_dir, arithmetic_data_dir / "train.jsonl", out, *extra))
    assert final == out / "merged"
    assert (out / "phase1" / "adapter_model.safetensors").exists()
    a1, a2 = (
        load_file(str(out / "phase1" / "adapter_model.safetensors")),
        load_file(str(out / "adapter_model.safetensors")),
    )
    assert a1.keys() == a2.keys() and any(not torch.equal(a1[k], a2[k]) for k in a1)
    start, merged = _weights(tiny_model_dir), _weights(out / "merged")
    assert any(not torch.equal(start[k], merged[k]) for k in start if k in merged)


def test_holdout_split_keeps_whole_prompts_and_is_stable():
    rows = _fusion_rows()
    kept, held = dual_system.split_holdout(rows, 0.5)
    assert len(kept) + len(held) == len(rows)
    assert {dual_system.base_id(r) for r in kept}.isdisjoint({dual_system.base_id(r) for r in held})
    assert all(len([r for r in part if dual_system.base_id(r) == b]) == 4 for part in (kept, held)
               for b in {dual_system.base_id(r) for r in part})  # fmt: skip
    assert dual_system.split_holdout(rows, 0.5) == (kept, held)
    assert dual_system.split_holdout(rows, 0.0) == (rows, [])


def test_seen_buckets_are_never_held_out_but_are_labelled_again():
    rows = _fusion_rows()  # prompt 0: difficulty 1; prompts 1 and 2: difficulty 3
    kept, held = dual_system.split_holdout(rows, 1.0, seen=["1"])
    assert {dual_system.base_id(r) for r in kept} == {"0"} and {dual_system.base_id(r) for r in held} == {"1", "2"}
    assert dual_system.in_buckets(kept, ["1"]) == kept and dual_system.in_buckets(kept, []) == []
    # Numbers from YAML or the command line name the same bucket.
    assert dual_system.DualSystemConfig(phase2_seen_buckets=[1, 2.0, "c0"]).phase2_seen_buckets == ["1", "2", "c0"]
    # Phase 2 keeps the phase-1 explicit rows only of the prompts that were not labelled again.
    fresh = [{**r, "label": "slow"} for r in rows if dual_system.base_id(r) == "0"]
    p2 = dual_system.with_phase2_labels(fresh, kept + rows[4:8], held)
    assert p2[: len(fresh)] == fresh
    assert {dual_system.base_id(r) for r in p2[len(fresh) :]} == {"1"}
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
    args = dual_system.DualSystemConfig(fast_files=[str(_fast_file(tmp_path))], phase1_fast_share=0.5)
    pool = dual_system.fast_pool(args)
    assert len(pool) == 7 and all(r["prompt"].endswith("/no_think") for r in pool)  # the slow reply is dropped
    held = [r for r in _fusion_rows() if dual_system.base_id(r) == "1"]
    assert [r["id"] for r in dual_system.fast_pool(args, held)] == [f"f{i}" for i in range(6)]
    # A held prompt is recognised in any mode, by id or by its untagged text.
    assert dual_system.without_prompts([{"id": "x", "prompt": "q1 /no_think"}], [{"id": "1", "prompt": "q1"}]) == []


def test_phase1_fast_and_replay_shares_leave_out_held_prompts(tmp_path):
    replay = write_jsonl(tmp_path / "replay.jsonl", [
        {"id": "1", "prompt": "q1", "task": "math", "answer": "1", "response": "<think>\nx\n</think>\n\n1"},
        {"id": "r", "prompt": "r0", "task": "math", "answer": "1", "response": "<think>\nx\n</think>\n\n1"},
    ])  # fmt: skip
    args = dual_system.DualSystemConfig(
        fast_files=[str(_fast_file(tmp_path))], phase1_fast_share=0.5, replay_files=[str(replay)],
        phase1_slow_replay=0.25,
    )  # fmt: skip
    rows, held = _fusion_rows()[:4], _fusion_rows()[4:8]  # prompt 1 is held out
    p1 = dual_system.phase1_dataset(rows, args, size=40, seed=0, held=held)
    prompts = [ex["messages"][0]["content"] for ex in p1]
    assert sum(p.startswith("f") and p.endswith("/no_think") for p in prompts) == 20
    assert sum(p == "r0" for p in prompts) == 10
    assert sum(p.startswith("q0") for p in prompts) == 10
    assert not any(p.startswith("q1") for p in prompts)


def test_phase2_fast_share(tmp_path):
    args = dual_system.DualSystemConfig(
        fast_files=[str(_fast_file(tmp_path, held_prompt=False))], phase2_auto_share=0.5, phase2_fast_share=0.25
    )
    p2, _ = dual_system.phase2_dataset(_fusion_rows(), args, size=40, seed=0)
    prompts = [ex["messages"][0]["content"] for ex in p2]
    assert sum(p.endswith("/auto_think") for p in prompts) == 20
    assert sum(p.startswith("f") and p.endswith("/no_think") for p in prompts) == 10
    assert sum(p.startswith("q") and not p.endswith("/auto_think") for p in prompts) == 10
    # Without fast_files the share falls back to explicit-tag rows.
    p2, _ = dual_system.phase2_dataset(_fusion_rows(), dual_system.DualSystemConfig(phase2_fast_share=0.25), 40, 0)
    assert sum(ex["messages"][0]["content"].startswith("f") for ex in p2) == 0 and len(p2) == 40


def test_config_refuses_fast_shares_that_leave_no_room():
    with pytest.raises(ValueError, match="phase1_fast_share"):
        dual_system.DualSystemConfig(phase1_fast_share=0.9, phase1_slow_replay=0.1)
    with pytest.raises(ValueError, match="phase2_fast_share"):
        dual_system.DualSystemConfig(phase2_auto_share=0.8, phase2_fast_share=0.3)
    args = dual_system.DualSystemConfig(phase1_fast_share=0.6, phase1_slow_replay=0.1, phase2_fast_share=0.25)
    assert (args.phase1_fast_share, args.phase2_fast_share) == (0.6, 0.25)


def test_phase2_files_are_labelling_prompts_kept_out_of_phase1(tmp_path):
    path = write_jsonl(tmp_path / "p2.jsonl", [
        {"id": "0", "prompt": "q0 /think", "task": "math", "answer": "1"},
        {"id": "n", "prompt": "new", "task": "math", "answer": "2"},
    ])  # fmt: skip
    args = dual_system.DualSystemConfig(phase2_files=[str(path)])
    extra = dual_system.phase2_prompts(args)
    assert [(r["id"], r["prompt"]) for r in extra] == [("0", "q0"), ("n", "new")]
    kept = dual_system.without_prompts(_fusion_rows(), extra)
    assert len(kept) == 8 and not any(dual_system.base_id(r) == "0" for r in kept)
    # No relabelling (or no phase 2): nothing to label them with, so they are not held out either.
    assert dual_system.phase2_prompts(dual_system.DualSystemConfig(phase2_files=[str(path)], phase2_steps=0)) == []
    no_relabel = dual_system.DualSystemConfig(phase2_files=[str(path)], relabel_before_phase2=False)
    assert dual_system.phase2_prompts(no_relabel) == []


def test_phase2_auto_pool_asks_fast_bucket_pool_rows_as_auto(tmp_path):
    pool = [{"id": f"e{i}", "prompt": f"e{i} /no_think", "task": "math", "answer": "1", "difficulty": 1,
             "response": "<think>\n\n</think>\n\n1"} for i in range(4)]  # fmt: skip
    pool += [{"id": f"h{i}", "prompt": f"h{i} /no_think", "task": "math", "answer": "1", "difficulty": 3,
              "response": "<think>\n\n</think>\n\n1"} for i in range(4)]  # fmt: skip
    pool.append(
        {"id": "u", "prompt": "u /no_think", "task": "math", "answer": "1", "response": "<think>\n\n</think>\n\n1"}
    )
    args = dual_system.DualSystemConfig(
        fast_files=[str(write_jsonl(tmp_path / "fast.jsonl", pool))], phase2_auto_share=0.25,
        phase2_fast_share=0.25, phase2_auto_pool_share=0.25,
    )  # fmt: skip
    # _fusion_rows: bucket 1 is all fast-labelled, bucket 3 all slow: only the level-1 pool rows join as /auto_think.
    auto = [r for r in _fusion_rows() if r["fusion_tag"] == "auto_think"]
    assert dual_system.fast_buckets(auto, 0.5) == {"1"}
    assert dual_system.fast_buckets(auto, 0.0) == {"1", "3"}
    pooled = dual_system.auto_pool(args, auto)
    assert [r["prompt"] for r in pooled] == [f"e{i} /auto_think" for i in range(4)]  # no difficulty: "u" not used
    assert all(r["response"] == "<think>\n\n</think>\n\n1" for r in pooled)
    p2, _ = dual_system.phase2_dataset(_fusion_rows(), args, size=40, seed=0)
    prompts = [ex["messages"][0]["content"] for ex in p2]
    assert sum(p.startswith("e") and p.endswith("/auto_think") for p in prompts) == 10
    assert not any(p.startswith(("h", "u")) and p.endswith("/auto_think") for p in prompts)
    assert sum(p.startswith("q") and p.endswith("/auto_think") for p in prompts) == 10
    assert sum(p.endswith("/no_think") and not p.startswith("q") for p in prompts) == 10
    assert sum(p.startswith("q") and not p.endswith("/auto_think") for p in prompts) == 10
    # A threshold no bucket reaches: no pool row qualifies and the share falls back to explicit-tag rows.
    none = dataclasses.replace(args, phase2_auto_pool_min_fast=1.0)
    auto[0] = {**auto[0], "label": "slow"}
    assert dual_system.fast_buckets(auto, 1.0) == set()
    p2, _ = dual_system.phase2_dataset(
        [r for r in _fusion_rows() if r["fusion_tag"] != "auto_think"] + auto, none, 40, 0
    )
    prompts = [ex["messages"][0]["content"] for ex in p2]
    assert not any(p.startswith("e") and p.endswith("/auto_think") for p in prompts)
    assert sum(p.startswith("q") and not p.endswith("/auto_think") for p in prompts) == 20


def test_config_refuses_auto_pool_shares_that_leave_no_room():
    with pytest.raises(ValueError, match="phase2_auto_pool_share"):
        dual_system.DualSystemConfig(phase2_auto_share=0.3, phase2_fast_share=0.4, phase2_auto_pool_share=0.4)
    with pytest.raises(ValueError, match="phase2_auto_pool_min_fast"):
        dual_system.DualSystemConfig(phase2_auto_pool_min_fast=1.5)
    args = dual_system.DualSystemConfig(phase2_auto_share=0.3, phase2_fast_share=0.4, phase2_auto_pool_share=0.3)
    assert args.phase2_auto_pool_share == 0.3
