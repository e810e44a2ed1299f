"""Stage 1b smoke: trl's GRPOTrainer trains a nano model with the MARS router on a mixed math/code/general set."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from conftest import load_script
from test_judge import ChatServer, reply

from train.core.data import read_records, write_jsonl
from train.rl.data import to_grpo_example
from train.rl.mars import merge_mars_override, validate_config

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "recipes/configs/tiny/grpo.yaml"


def load_recipe():
    return load_script("recipes/grpo.py")


def graded(body: dict, attempt: int):
    """A judge whose grade depends on what it is shown, so general prompts get reward variance."""
    digest = hashlib.sha256(json.dumps(body["messages"]).encode()).digest()
    return 200, reply(f"Score: {digest[0] % 11}/10"), 0


@pytest.fixture
def mixed_data(tmp_path) -> Path:
    records = []
    for task in ("math", "code", "general"):
        records += read_records(ROOT / f"recipes/data/{task}.jsonl")[:2]
    return write_jsonl(tmp_path / "rl.jsonl", records)


def argv(model_dir: Path, data: Path, out: Path, mars: dict, *extra: str) -> list[str]:
    return [
        "--config", str(TINY_CONFIG),
        "--model_name_or_path", str(model_dir),
        "--train_files", str(data),
        "--output_dir", str(out),
        "--per_device_train_batch_size", "6",
        "--num_generations", "2",
        "--max_completion_length", "16",
        "--save_strategy", "no",
        "--mars", json.dumps(mars),
        *extra,
    ]  # fmt: skip


def mars_config(server: ChatServer) -> dict:
    return {
        "tasks": {
            "math": [{"name": "accuracy", "rewards": ["math", "judge_equivalence"]}],
            "code": [{"name": "accuracy", "rewards": ["code"]}],
            "general": [{"name": "accuracy", "rewards": ["short_answer", "judge_rubric"]}],
        },
        "shared": [
            {"name": "format", "rewards": ["format"], "weight": 0.2},
            {"name": "repetition", "rewards": ["repetition"], "weight": 0.2},
            {"name": "length", "rewards": ["overlong"], "weight": 0.2},
        ],
        "judge": {
            "backend": "http",
            "base_url": server.base_url,
            "model": "judge",
            "timeout": 5.0,
            "max_retries": 0,
            "cache_dir": None,
        },
        "warmup": 0,
    }


def test_grpo_trains_with_the_mars_router_and_logs_per_task_metrics(tiny_model_dir, mixed_data, tmp_path):
    from train.core.loading import load_model

    grpo = load_recipe()
    before = {k: v.clone() for k, v in load_model(tiny_model_dir).state_dict().items()}
    with ChatServer(graded) as server:
        out, trainer = grpo.main(
            argv(tiny_model_dir, mixed_data, tmp_path / "out", mars_config(server), "--max_steps", "3")
        )
    logged = {key for entry in trainer.state.log_history for key in entry}
    for task in ("math", "code", "general"):
        assert {
            f"mars/{task}/reward",
            f"mars/{task}/fraction",
            f"mars/{task}/accuracy",
            f"mars/{task}/format",
        } <= logged
    assert "mars/general/accuracy/fallback" in logged  # the judge graded general answers
    assert "rewards/mars/mean" in logged and "reward" in logged
    assert len(server.requests) > 0
    general = [e["mars/general/accuracy"] for e in trainer.state.log_history if "mars/general/accuracy" in e]
    assert all(0.0 <= v <= 1.0 for v in general)

    after = trainer.model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k].detach().cpu())]
    assert changed, "no trainable parameter changed"
    assert (out / "model.safetensors").exists() and (out / "mars_state.json").exists()
    state = json.loads((out / "mars_state.json").read_text())
    assert state["stats"]["math|accuracy"][0] > 0  # normalisation statistics saved with the model


def test_grpo_separate_reward_functions_get_weights_and_logs(tiny_model_dir, mixed_data, tmp_path):
    grpo = load_recipe()
    with ChatServer(graded) as server:
        mars = mars_config(server)
        args = argv(tiny_model_dir, mixed_data, tmp_path / "out", mars, "--max_steps", "1")
        _, trainer = grpo.main(args + ["--reward_layout", "separate"])
    assert trainer.args.reward_weights == [1.0, 1.0, 1.0, 0.2, 0.2, 0.2]
    logged = {key for entry in trainer.state.log_history for key in entry}
    for name in ("math/accuracy", "code/accuracy", "general/accuracy", "shared/format", "shared/length"):
        assert f"rewards/mars/{name}/mean" in logged


def test_grpo_refuses_data_with_unrouted_tasks(tiny_model_dir, tmp_path):
    grpo = load_recipe()
    data = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "Write a haiku.", "task": "poetry", "answer": "-"}])
    with pytest.raises(ValueError, match=r"poetry.*configured tasks"):
        grpo.main(argv(tiny_model_dir, data, tmp_path / "out", {"shared": []}, "--max_steps", "1"))


def test_prompts_get_the_mode_tag_unless_they_have_one():
    tagged = to_grpo_example({"prompt": "2+2? /no_think", "task": "math", "answer": "4"}, "slow", None)
    plain = to_grpo_example({"prompt": "2+2?", "task": "math", "answer": "4"}, "fast", "Be brief.")
    assert tagged["prompt"] == [{"role": "user", "content": "2+2? /no_think"}]
    assert plain["prompt"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2? /no_think"},
    ]
    assert set(plain) == {"prompt", "task", "answer", "tests", "id"}


def test_validate_config_checks_the_mars_mapping(tmp_path):
    config = validate_config(TINY_CONFIG)
    assert config.reward_params["overlong"] == {"max_length": 32, "cache": 8}  # follows max_completion_length
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY_CONFIG.read_text().replace("rewards: [math, judge_equivalence]", "rewards: [maths]"))
    with pytest.raises(ValueError, match=r"math/accuracy names unknown reward\(s\) \['maths'\]"):
        validate_config(bad)


def test_mars_json_on_the_command_line_updates_the_file_mapping():
    merged = merge_mars_override('{"judge": {"backend": "http"}, "warmup": 4}', ["--config", str(TINY_CONFIG)])
    assert merged["judge"]["backend"] == "http" and merged["judge"]["max_new_tokens"] == 8  # the rest is kept
    assert merged["warmup"] == 4 and "math" in merged["tasks"]
