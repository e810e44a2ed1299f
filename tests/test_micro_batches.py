"""Length-sorted micro-batches (``length_micro_batches``): the split, and the same update as the whole batch."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from trl import ModelConfig

from train.core.configs import SFTConfig
from train.core.data import read_records
from train.core.micro_batches import length_micro_batches, split_points, unsplittable
from train.sft import build_sft_trainer, load_for_training, sft_dataset

ROOT = Path(__file__).resolve().parents[1]


def brute_force(lengths: list[int], parts: int) -> int:
    """The fewest padded tokens over every split of the sorted lengths into exactly ``min(parts, n)`` groups."""
    n = len(lengths)
    costs = []
    for cuts in itertools.combinations(range(1, n), min(parts, n) - 1):
        bounds = [0, *cuts, n]
        costs.append(sum((b - a) * lengths[b - 1] for a, b in zip(bounds, bounds[1:])))
    return min(costs)


def test_split_points_pad_least():
    assert split_points([1, 1, 1, 10], 2) == [(0, 3), (3, 4)]  # 3 * 1 + 1 * 10, against 4 * 10 whole
    # Exactly that many groups even where fewer pad as little: every process must run the same number of forwards
    assert split_points([5, 5, 5], 3) == [(0, 1), (1, 2), (2, 3)]
    assert split_points([2, 3, 9], 1) == [(0, 3)]
    assert split_points([4], 8) == [(0, 1)]
    assert split_points([], 3) == []
    generator = torch.Generator().manual_seed(0)
    for _ in range(40):
        lengths = sorted(torch.randint(1, 60, (int(torch.randint(1, 9, (1,), generator=generator)),),
                                       generator=generator).tolist())  # fmt: skip
        for parts in (1, 2, 3, 4):
            groups = split_points(lengths, parts)
            assert len(groups) == min(parts, len(lengths)) and groups[0][0] == 0 and groups[-1][1] == len(lengths)
            assert all(a < b for a, b in groups) and all(b == c for (_, b), (c, _) in zip(groups, groups[1:]))
            assert sum((b - a) * lengths[b - 1] for a, b in groups) == brute_force(lengths, parts)


def test_split_points_refuses_unsorted_lengths():
    with pytest.raises(ValueError, match="sorted ascending"):
        split_points([3, 1], 2)


def batch_of(lengths: list[int], width: int | None = None) -> dict:
    width = width or max(lengths)
    mask = torch.tensor([[1] * n + [0] * (width - n) for n in lengths])
    ids = torch.arange(len(lengths) * width).reshape(len(lengths), width) * mask
    labels = torch.where(mask.bool(), ids, torch.full_like(ids, -100))
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "row_id": torch.arange(len(lengths)),
            "use_cache": False}  # fmt: skip


def test_micro_batches_hold_every_row_once_cut_to_their_longest_row():
    lengths = [30, 4, 5, 28, 3, 31]
    batch = batch_of(lengths)
    parts = length_micro_batches(batch, 2)
    assert len(parts) == 2
    rows = torch.cat([p["row_id"] for p in parts])
    assert sorted(rows.tolist()) == list(range(6))
    assert [p["input_ids"].shape for p in parts] == [(3, 5), (3, 31)]  # 15 + 93 padded tokens, not 6 * 31
    for part in parts:
        assert part["use_cache"] is False  # anything that is not per row is passed on
        for j, row in enumerate(part["row_id"].tolist()):
            n = lengths[row]
            assert torch.equal(part["input_ids"][j, :n], batch["input_ids"][row, :n])
            assert torch.equal(part["labels"][j, :n], batch["labels"][row, :n])
            assert part["attention_mask"][j].sum() == n


def test_unsplittable_batches_come_back_whole():
    left = batch_of([2, 4])
    left["attention_mask"] = left["attention_mask"].flip(-1)
    assert unsplittable(left) == "the batch is not right-padded"
    assert len(length_micro_batches(left, 4)) == 1
    packed = {"input_ids": torch.ones(1, 9, dtype=torch.long), "position_ids": torch.arange(9)[None]}
    assert "no 2-D attention_mask" in unsplittable(packed)
    assert length_micro_batches(packed, 4) == [packed]
    assert unsplittable(batch_of([3, 1, 2])) is None


def test_config_refuses_zero():
    with pytest.raises(ValueError, match="length_micro_batches: 0"):
        SFTConfig(output_dir="/tmp/unused", length_micro_batches=0, report_to="none")


def train(model_dir: Path, data_dir: Path, out: Path, micro: int) -> tuple[dict, list[dict], list[tuple]]:
    rows = read_records(data_dir / "train.jsonl")  # slow and fast replies: lengths 2-3x apart
    data = sft_dataset(rows)
    args = SFTConfig(output_dir=str(out), max_steps=4, per_device_train_batch_size=16, learning_rate=1e-2,
                     warmup_steps=0, logging_steps=1, max_length=128, report_to="none", save_strategy="no",
                     disable_tqdm=True, seed=0, assistant_only_loss=True, length_micro_batches=micro)  # fmt: skip
    model_args = ModelConfig(model_name_or_path=str(model_dir), dtype="float32")
    model, tokenizer = load_for_training(model_args, None, None, training_args=args)
    trainer = build_sft_trainer(model, tokenizer, args, model_args, data)
    shapes, compute_loss = [], trainer.compute_loss

    def spy(model, inputs, *args, **kwargs):
        shapes.append(tuple(inputs["input_ids"].shape))
        return compute_loss(model, inputs, *args, **kwargs)

    trainer.compute_loss = spy
    trainer.train()
    params = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    return params, [h for h in trainer.state.log_history if "loss" in h], shapes


def test_micro_batches_train_the_update_of_the_whole_batch(tiny_model_dir, arithmetic_data_dir, tmp_path):
    before = load_file(str(tiny_model_dir / "model.safetensors"))
    whole, whole_log, whole_shapes = train(tiny_model_dir, arithmetic_data_dir, tmp_path / "whole", 1)
    split, split_log, split_shapes = train(tiny_model_dir, arithmetic_data_dir, tmp_path / "split", 3)
    # really split: more forwards of fewer rows, and fewer padded tokens in all
    assert len(whole_shapes) == 4 and 4 < len(split_shapes) <= 12
    assert sum(r * c for r, c in split_shapes) < sum(r * c for r, c in whole_shapes)
    assert sum(r for r, _ in split_shapes) == sum(r for r, _ in whole_shapes)
    unchanged = [k for k, v in split.items() if k in before and torch.equal(v, before[k])]
    assert not unchanged, f"parameters that did not change: {unchanged}"
    for key in whole:
        torch.testing.assert_close(split[key], whole[key], rtol=1e-4, atol=1e-5, msg=key)
    for a, b in zip(whole_log, split_log, strict=True):
        for key in ("loss", "entropy", "mean_token_accuracy", "num_tokens"):
            assert b[key] == pytest.approx(a[key], rel=1e-4), (key, a, b)


@pytest.mark.slow
def test_two_processes_synchronise_once_and_train_the_same_update(tiny_model_dir, arithmetic_data_dir, tmp_path):
    """Under DDP only the last micro-batch synchronises; the accumulated gradients give the whole batch's update."""
    outs = {}
    for micro in (1, 3):
        out = outs[micro] = tmp_path / f"sft-{micro}"
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "recipes/accelerate/cpu_ddp.yaml"), str(ROOT / "recipes/sft.py"),
               "--config", str(ROOT / "recipes/configs/tiny/sft.yaml"), "--model_name_or_path", str(tiny_model_dir),
               "--train_files", str(arithmetic_data_dir / "train.jsonl"), "--output_dir", str(out), "--max_steps", "4",
               "--per_device_train_batch_size", "8", "--learning_rate", "1e-2", "--warmup_steps", "0",
               "--logging_steps", "1", "--max_length", "128", "--report_to", "none", "--save_strategy", "no",
               "--length_micro_batches", str(micro)]  # fmt: skip
        env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert ", 2 process(es)" in proc.stderr
    whole, split = (load_file(str(outs[m] / "model.safetensors")) for m in (1, 3))
    for key in whole:
        torch.testing.assert_close(split[key], whole[key], rtol=1e-4, atol=1e-5, msg=key)
    logs = [json.loads((outs[m] / "trainer_state.json").read_text())["log_history"] for m in (1, 3)]
    losses = [[h["loss"] for h in log if "loss" in h] for log in logs]
    assert losses[1] == pytest.approx(losses[0], rel=1e-4) and len(losses[0]) == 4
