"""Nothing corrupt trains silently, and every input error names what is wrong (issue #15, part 2).

Corrupt checkpoints (NaN/inf weights), training that diverges to NaN, oversized or non-UTF-8 records, config values
of the wrong type, missing model paths, duplicate ids and a think delimiter that is not one token: each is an error
naming the file, row, key, tensor or path, raised before any output is written.
"""

from __future__ import annotations

import json
import math
import shutil
import struct
import time
from pathlib import Path

import pytest
import torch
from conftest import load_script
from safetensors.torch import load_file

from train.core.cli import ConfigError, check_config_file, parse_args
from train.core.data import DataError, read_records, validate_record, write_jsonl
from train.core.guards import NonFiniteError
from train.core.loading import load_model, load_tokenizer
from train.core.modes import PANGU_THINK, QWEN3_THINK, chat_template, record_think_format
from train.world.tiny import build_tokenizer

ROOT = Path(__file__).resolve().parents[1]
SFT_CONFIG = ROOT / "recipes" / "configs" / "tiny" / "sft.yaml"
GRPO_CONFIG = ROOT / "recipes" / "configs" / "tiny" / "grpo.yaml"
POISONED = "model.layers.0.mlp.up_proj.weight"


# ------------------------------------------------------------------------------------------ corrupt weights


def poison_checkpoint(src: Path, dst: Path, tensor: str = POISONED) -> Path:
    """A copy of the saved model ``src`` whose ``tensor`` has one value byte-flipped to NaN in model.safetensors."""
    shutil.copytree(src, dst)
    path = dst / "model.safetensors"
    raw = bytearray(path.read_bytes())
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    assert header[tensor]["dtype"] == "F32"
    start = 8 + header_len + header[tensor]["data_offsets"][0]
    raw[start : start + 4] = struct.pack("<f", math.nan)  # what a flipped exponent byte does to a float
    path.write_bytes(bytes(raw))
    return dst


@pytest.fixture(scope="module")
def nan_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    return poison_checkpoint(tiny_model_dir, tmp_path_factory.mktemp("nan") / "model")


def test_load_model_refuses_nonfinite_weights_naming_file_and_tensor(nan_model_dir):
    with pytest.raises(NonFiniteError) as err:
        load_model(nan_model_dir)
    assert POISONED in str(err.value)
    assert str(nan_model_dir / "model.safetensors") in str(err.value)
    assert "allow_nonfinite_weights" in str(err.value)  # the message says how to load it anyway
    model = load_model(nan_model_dir, allow_nonfinite_weights=True)
    assert torch.isnan(model.get_parameter(POISONED)).sum().item() == 1


def _sft_args(model_dir: Path, data_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--config", str(SFT_CONFIG), "--model_name_or_path", str(model_dir),
        "--train_files", str(data_dir / "train.jsonl"), "--output_dir", str(out), "--max_steps", "4",
        "--per_device_train_batch_size", "4", "--warmup_steps", "0", "--logging_steps", "1", "--max_length", "96",
        *extra,
    ]  # fmt: skip


def test_sft_recipe_refuses_a_nan_checkpoint(nan_model_dir, arithmetic_data_dir, tmp_path):
    main = load_script("recipes/sft.py").main
    out = tmp_path / "sft"
    with pytest.raises(NonFiniteError, match=POISONED.replace(".", r"\.")):
        main(_sft_args(nan_model_dir, arithmetic_data_dir, out))
    assert not (out / "model.safetensors").exists()


def test_grpo_loading_refuses_a_nan_checkpoint(nan_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "rl.jsonl", [{"prompt": "Compute 1+2.", "task": "math", "answer": "3"}])
    main = load_script("recipes/grpo.py").main
    out = tmp_path / "grpo"
    with pytest.raises(NonFiniteError, match=POISONED.replace(".", r"\.")):
        main(["--config", str(GRPO_CONFIG), "--model_name_or_path", str(nan_model_dir), "--train_files", str(data),
              "--output_dir", str(out), "--max_steps", "1"])  # fmt: skip
    assert not (out / "model.safetensors").exists()


def test_sft_that_diverges_to_nan_stops_and_saves_nothing(tiny_model_dir, arithmetic_data_dir, tmp_path):
    main = load_script("recipes/sft.py").main
    out = tmp_path / "sft"
    with pytest.raises(NonFiniteError, match=r"step \d+.*not finite"):
        main(_sft_args(tiny_model_dir, arithmetic_data_dir, out, "--learning_rate", "1e30", "--max_grad_norm", "0"))
    assert not (out / "model.safetensors").exists()
    for f in out.glob("**/*.safetensors"):  # no checkpoint with NaN weights either
        assert all(torch.isfinite(t).all() for t in load_file(str(f)).values()), f


# ---------------------------------------------------------------------------------------------- records


def test_oversized_record_is_an_error_naming_file_and_row(tmp_path):
    path = tmp_path / "big.jsonl"
    rows = [{"prompt": "ok", "task": "math"}, {"prompt": "x" * 3_000_000, "task": "math"}]
    write_jsonl(path, rows)
    began = time.perf_counter()
    with pytest.raises(DataError, match=rf"{path}, row 2: .*3000\d+ bytes.*max_record_bytes"):
        read_records(path)
    assert time.perf_counter() - began < 5
    assert len(read_records(path, max_record_bytes=None)) == 2  # the limit is configurable (None: no limit)
    assert len(read_records(path, max_record_bytes=4_000_000)) == 2
    csv = tmp_path / "big.csv"
    csv.write_text("prompt,task\nok,math\n" + "y" * 2_000_000 + ",math\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"{csv}, row 3: "):
        read_records(csv)


def test_data_arguments_carry_the_record_limit(tmp_path, arithmetic_data_dir):
    from train.sft import SFTScriptArguments, load_sft_data

    path = write_jsonl(tmp_path / "big.jsonl", [{"prompt": "p" * 2000, "task": "math", "response": "r"}])
    with pytest.raises(DataError, match=r"row 1: .*max_record_bytes"):
        load_sft_data(SFTScriptArguments(train_files=[str(path)], max_record_bytes=1000))
    assert SFTScriptArguments().max_record_bytes == 1 << 20  # the documented default, 1 MiB


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv"])
def test_non_utf8_file_names_file_row_and_byte(tmp_path, suffix):
    path = tmp_path / f"latin1{suffix}"
    if suffix == ".jsonl":
        text, row = '{"prompt": "ok", "task": "math"}\n{"prompt": "caf\u00e9", "task": "math"}\n', 2
    elif suffix == ".json":
        text, row = '[{"prompt": "ok", "task": "math"},\n {"prompt": "caf\u00e9", "task": "math"}]\n', 2
    else:
        text, row = "prompt,task\nok,math\ncaf\u00e9,math\n", 3
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(DataError, match=rf"{path}, (row|line) {row}.*byte \d+.*not valid UTF-8"):
        read_records(path)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"id": "a", "prompt": "p", "task": "math"}, {"id": "a", "prompt": "p", "task": "math"}],
         r"row 2, key 'id': duplicate id 'a' \(also row 1\)"),
        ([{"id": "a", "prompt": "p", "task": "math"}, {"id": "a", "prompt": "q", "task": "math"}],
         r"row 2, key 'id': id 'a' is also row 1's, a different prompt"),
    ],
    ids=["duplicate", "collision"],
)  # fmt: skip
def test_duplicate_and_colliding_ids_name_both_rows(tmp_path, rows, message):
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError, match=rf"{path}, {message}"):
        read_records(path)


def test_one_problem_in_two_modes_may_share_its_id(tmp_path):
    """The arithmetic world's SFT data: one id, the same problem asked with /think and /no_think."""
    rows = [
        {"id": "a", "prompt": "Compute 1+2. /think", "task": "math", "response": "slow"},
        {"id": "a", "prompt": "Compute 1+2. /no_think", "task": "math", "response": "fast"},
    ]
    assert len(read_records(write_jsonl(tmp_path / "d.jsonl", rows))) == 2


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "p", "task": "math", "answer": {"value": 3}}, r"key 'answer': expected a string or a number"),
        ({"prompt": "p", "task": "math", "answer": [3]}, r"key 'answer': expected a string or a number"),
        ({"prompt": "p", "task": "math", "difficulty": float("nan")}, r"key 'difficulty': expected a finite number"),
        ({"prompt": "p", "task": "math", "difficulty": "inf"}, r"key 'difficulty': expected a finite number"),
    ],
    ids=["dict-answer", "list-answer", "nan-difficulty", "inf-difficulty"],
)
def test_values_of_the_wrong_kind_are_rejected(row, message):
    with pytest.raises(DataError, match=rf"f\.jsonl, row 4, {message}"):
        validate_record(row, "f.jsonl", 4)


# ----------------------------------------------------------------------------------------- config values


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("max_steps: 2.5", r"key 'max_steps': expected an integer, got 2\.5"),
        ("train_files: data/train.jsonl", r"key 'train_files': expected a list.*got a str"),
        ("learning_rate: fast", r"key 'learning_rate': expected a number, got 'fast'"),
        ("assistant_only_loss: maybe", r"key 'assistant_only_loss': expected true or false, got 'maybe'"),
        ("train_weights: [1, heavy]", r"key 'train_weights': item 1: expected a number, got 'heavy'"),
        ("max_train_samples: [3]", r"key 'max_train_samples': expected an integer or null, got \[3\]"),
    ],
)
def test_config_values_of_the_wrong_type_name_the_key(tmp_path, line, message):
    sft = load_script("recipes/sft.py")
    config = tmp_path / "c.yaml"
    config.write_text(SFT_CONFIG.read_text(encoding="utf-8") + f"\n{line}\n", encoding="utf-8")
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=rf"{config}: {message}"):
        sft.main(["--config", str(config), "--output_dir", str(out)])
    assert not out.exists()  # refused before anything was created


def test_config_values_of_the_right_type_pass(tmp_path):
    sft = load_script("recipes/sft.py")
    config = tmp_path / "c.yaml"
    config.write_text("max_steps: 3\nlearning_rate: 1e-3\ntrain_weights: [1, 2.5]\nbf16: null\n", encoding="utf-8")
    assert check_config_file(config, sft.ARG_CLASSES)["learning_rate"] == "1e-3"  # argparse converts the text
    script_args, training_args, _ = parse_args(sft.ARG_CLASSES, ["--config", str(config), "--output_dir", "x"])
    assert training_args.max_steps == 3 and training_args.learning_rate == 1e-3
    assert script_args.train_weights == [1, 2.5]


# ----------------------------------------------------------------------------------------- model sources


@pytest.mark.parametrize("name", ["./no/such/model", "../missing-model", "/definitely/not/here", "~/no-such-model",
                                  "outputs/a/b", "outputs/typo"])  # fmt: skip
def test_a_missing_model_path_is_an_error_naming_it(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").mkdir()  # outputs/typo: its folder exists, so it is a path, not a hub id
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # with the hub reachable, it is still never asked
    began = time.perf_counter()
    for load in (load_tokenizer, load_model):
        with pytest.raises(FileNotFoundError, match=rf"{name}: no such model folder"):
            load(name)
    assert time.perf_counter() - began < 2


def test_an_uncached_hub_id_offline_says_so(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match=r"fastslow-no-such-org/no-such-model: .*HF_HUB_OFFLINE"):
        load_tokenizer("fastslow-no-such-org/no-such-model")


# -------------------------------------------------------------------------------------------- think tokens


def test_think_delimiters_are_single_tokens_whatever_the_saved_template_says(tmp_path):
    tok = build_tokenizer(think=PANGU_THINK)  # a vocabulary without <think>/</think>
    assert len(tok.encode("<think>", add_special_tokens=False)) == 7
    tok.chat_template = chat_template(QWEN3_THINK)  # a template that already mentions <think>, kept as it is
    record_think_format(tok, QWEN3_THINK)
    tok.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert loaded.chat_template == chat_template(QWEN3_THINK)
    for delimiter in ("<think>", "</think>"):
        ids = loaded.encode(delimiter, add_special_tokens=False)
        assert len(ids) == 1 and loaded.convert_ids_to_tokens(ids) == [delimiter]
    assert loaded.decode(loaded.encode("<think>\nx\n</think>", add_special_tokens=False)) == "<think>\nx\n</think>"


# ------------------------------------------------------------------------------------------- distillation


def test_an_empty_distillation_pool_fails_up_front(tiny_model_dir, arithmetic_data_dir, tmp_path):
    main = load_script("recipes/distill.py").main
    pool = tmp_path / "pool.jsonl"
    pool.write_text("\n", encoding="utf-8")
    out = tmp_path / "distill"
    with pytest.raises(DataError, match=rf"{pool}: the pool has no records"):
        main(["--config", str(ROOT / "recipes/configs/tiny/distill.yaml"), "--model_name_or_path", str(tiny_model_dir),
              "--train_file", str(pool), "--eval_file", str(arithmetic_data_dir / "test.jsonl"),
              "--output_dir", str(out)])  # fmt: skip
    assert not (out / "initial_metrics.json").exists()


# ------------------------------------------------------------------------------------------- the guard


def test_guard_stops_before_an_optimizer_step_with_a_nan_gradient():
    from types import SimpleNamespace

    from train.core.guards import FiniteTrainingGuard, check_finite_model

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    model(torch.ones(1, 2)).sum().backward()
    state, control = SimpleNamespace(global_step=6), SimpleNamespace(should_save=False)
    guard = FiniteTrainingGuard()
    guard.on_pre_optimizer_step(None, state, control, model=model)  # finite: nothing happens
    model[1].weight.grad[0, 1] = math.inf
    with pytest.raises(NonFiniteError, match=r"step 7: the gradient of '1\.weight' has 1 NaN/inf"):
        guard.on_pre_optimizer_step(None, state, control, model=model)
    with pytest.raises(NonFiniteError, match=r"step 6: \{'loss': nan\}"):
        guard.on_log(None, state, control, logs={"loss": math.nan, "learning_rate": 1e-3})
    with torch.no_grad():
        model[0].bias[1] = math.nan
    guard.on_step_end(None, state, control, model=model)  # no checkpoint this step: weights not read
    control.should_save = True
    with pytest.raises(NonFiniteError, match=r"step 6: checkpoint: parameter '0\.bias'"):
        guard.on_step_end(None, state, control, model=model)
    with pytest.raises(NonFiniteError, match=r"out/x: parameter '0\.bias' has 1 NaN/inf value\(s\); refusing to save"):
        check_finite_model(model, "out/x")


def test_grpo_trainer_gets_the_guard(tiny_model_dir, tmp_path, monkeypatch):
    grpo = load_script("recipes/grpo.py")
    seen = []

    class Recorder(grpo.FastslowGRPOTrainer):
        def train(self, *args, **kwargs):
            seen.extend(type(c).__name__ for c in self.callback_handler.callbacks)
            raise KeyboardInterrupt  # stop before training

    monkeypatch.setattr(grpo, "FastslowGRPOTrainer", Recorder)
    rows = [{"prompt": f"Compute {i}+2.", "task": "math", "answer": str(i + 2)} for i in range(4)]
    data = write_jsonl(tmp_path / "rl.jsonl", rows)
    with pytest.raises(KeyboardInterrupt):
        grpo.main(["--config", str(GRPO_CONFIG), "--model_name_or_path", str(tiny_model_dir), "--train_files",
                   str(data), "--output_dir", str(tmp_path / "grpo"), "--max_steps", "1"])  # fmt: skip
    assert "FiniteTrainingGuard" in seen
