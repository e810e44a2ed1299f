"""The SFT recipe end to end: real `accelerate launch` with two CPU processes, LoRA, and config/data errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import load_script
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "sft.py"
CONFIG = ROOT / "recipes" / "configs" / "tiny" / "sft.yaml"


def _overrides(model_dir: Path, data_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--config",
        str(CONFIG),
        "--model_name_or_path",
        str(model_dir),
        "--train_files",
        str(data_dir / "train.jsonl"),
        "--output_dir",
        str(out),
        "--max_steps",
        "4",
        "--per_device_train_batch_size",
        "4",
        "--learning_rate",
        "1e-2",
        "--warmup_steps",
        "0",
        "--logging_steps",
        "1",
        "--max_length",
        "96",
        *extra,
    ]


def _run(cmd: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_two_process_accelerate_launch_changes_every_parameter(tiny_model_dir, arithmetic_data_dir, tmp_path):
    out = tmp_path / "sft"
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(ROOT / "recipes/accelerate/cpu_ddp.yaml"),
        str(RECIPE),
        *_overrides(tiny_model_dir, arithmetic_data_dir, out, "--report_to", "none", "--save_strategy", "no"),
    ]
    res = _run(cmd)
    assert res.returncode == 0, res.stderr[-4000:]
    assert ", 2 process(es)" in res.stderr  # really two ranks, not two lone trainers
    before, after = _weights(tiny_model_dir), _weights(out)
    assert before.keys() == after.keys()
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert not unchanged, f"parameters that did not change: {unchanged}"
    assert (out / "tokenizer_config.json").exists()
    # No checkpoint, yet the log history the pipeline's report plots is saved (by rank 0 only).
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert len([h for h in history if "loss" in h]) == 4 and not list(out.glob("checkpoint-*"))


def test_lora_trains_adapter_and_saves_merged_model(tiny_model_dir, arithmetic_data_dir, tmp_path):
    main = load_script("recipes/sft.py").main

    out = tmp_path / "lora"
    merged = main(
        _overrides(
            tiny_model_dir,
            arithmetic_data_dir,
            out,
            "--use_peft",
            "true",
            "--lora_r",
            "4",
            "--lora_target_modules",
            "q_proj",
            "v_proj",
            "--report_to",
            "none",
        )
    )
    assert merged == out / "merged"
    adapter = load_file(str(out / "adapter_model.safetensors"))
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: non-zero means it trained
    before, after = _weights(tiny_model_dir), _weights(merged)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(("q_proj" in k or "v_proj" in k) for k in changed)


def test_unknown_config_key_is_named(tmp_path, tiny_model_dir):
    bad = tmp_path / "bad.yaml"
    bad.write_text(CONFIG.read_text() + "\nlearning_rat: 0.1\n")
    res = _run([sys.executable, str(RECIPE), "--config", str(bad), "--model_name_or_path", str(tiny_model_dir)])
    assert res.returncode != 0
    assert "unknown config key 'learning_rat'; did you mean 'learning_rate'?" in res.stderr


def test_bad_data_row_is_named(tmp_path, tiny_model_dir):
    data = tmp_path / "train.jsonl"
    data.write_text(
        json.dumps({"prompt": "1+1", "task": "math", "response": "2"})
        + "\n"
        + json.dumps({"prompt": "2+2", "task": "math"})
        + "\n"
    )
    main = load_script("recipes/sft.py").main

    from train.core.data import DataError

    with pytest.raises(DataError, match=r"train.jsonl, row 2, key 'response'"):
        main(
            [
                "--config",
                str(CONFIG),
                "--model_name_or_path",
                str(tiny_model_dir),
                "--train_files",
                str(data),
                "--output_dir",
                str(tmp_path / "o"),
            ]
        )
