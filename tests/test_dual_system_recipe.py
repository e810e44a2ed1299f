"""The dual-system recipe end to end: it builds fusion data, trains both phases (LoRA too), saves, resumes; the
mode-choice reward of its RL phase. Its stages' data: tests/test_dual_system_data.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import load_script
from safetensors.torch import load_file

from rewards.mode_choice import ModeChoiceReward
from train.core.checks import exact_match
from train.core.data import base_id, write_jsonl
from train.core.modes import QWEN3_THINK
from train.dual_system.data import in_buckets, split_holdout

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
    kept, held = split_holdout(fusion, 0.5, ["1"])
    ids = lambda rows: {base_id(r) for r in rows}  # noqa: E731
    # Level 1 is never kept out of phase 1; the held-out level-2 prompts and the new prompt are.
    assert ids(held_in_phase1) == ids(held) | {"new"} and not ids(in_buckets(held_in_phase1, ["1"]))
    # Phase 2 labels the held-out prompts, every level-1 prompt and the phase-2 file, each once.
    labels = [json.loads(x) for x in (out / "fusion_phase2" / "labels.jsonl").read_text().splitlines()]
    seen = ids(in_buckets(kept, ["1"]))
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

    def fake_rl(model, tok, rows, args, training_args):
        seen["rows"] = rows
        shutil.copytree(out / "phase2", out / "rl")  # where the RL phase saves; the final model is copied from it
        return model

    monkeypatch.setattr(dual_system, "run_rl", fake_rl)
    # Phases 1 and 2 are done: only the RL phase runs, on the phase-1 model's labels (not the start model's).
    dual_system.main(_args(tiny_model_dir, arithmetic_data_dir / "train.jsonl", out, "--max_prompts", "8",
                           "--rl_steps", "1"))  # fmt: skip
    assert seen["rows"] == relabelled


# ---------------------------------------------------------------------------------------------- mode_choice


FAST_OK, FAST_BAD = "<think>\n\n</think>\n\n7", "<think>\n\n</think>\n\n8"
SLOW_OK, SLOW_BAD = "<think>\nwork\n</think>\n\n7", "<think>\nwork\n</think>\n\n9"


def _reward(completions, prompt, ref):
    r = ModeChoiceReward(delta=0.3, check=exact_match, think=QWEN3_THINK)
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


def test_a_rerun_under_another_config_is_refused(tiny_model_dir, arithmetic_data_dir, tmp_path):
    """Phases resume only under the configuration that produced them; the RL keys (never resumed) may change."""
    from train.core.fingerprint import ResumeConfigError

    out = tmp_path / "run"
    args = _args(tiny_model_dir, arithmetic_data_dir / "train.jsonl", out, "--max_prompts", "8", "--phase2_steps", "0")
    dual_system.main(args)
    with pytest.raises(ResumeConfigError, match=r"training.learning_rate: 0.01 -> 0.5"):
        dual_system.main([*args, "--learning_rate", "0.5"])
    with pytest.raises(ResumeConfigError, match=r"dual_system.phase1_slow_replay"):
        dual_system.main([*args, "--phase1_slow_replay", "0.1"])
    dual_system.main([*args, "--logging_steps", "7", "--rl_delta", "0.2"])  # no result changes: resumes
