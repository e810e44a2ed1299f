"""verl and OpenRLHF adapters: the MARS router behind each engine's reward-function convention."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from rewards import adapters
from rewards.adapters import openrlhf, verl
from train.core.modes import PANGU_THINK

ROOT = Path(__file__).resolve().parents[1]
SLOW = "<think>\nadd them\n</think>\n\n"
CODE = SLOW + "```python\nprint(int(input()) * 2)\n```"

MARS_YAML = """
tasks:
  math: [{name: accuracy, rewards: [math], weight: 1.0}]
  code: [{name: accuracy, rewards: [code], weight: 1.0}]
  general: [{name: accuracy, rewards: [math], weight: 1.0}]
shared: [{name: format, rewards: [format], weight: 0.5}]
normalize: false
think_start: "<think>"
think_end: "</think>"
"""


@pytest.fixture
def mars_config(tmp_path, monkeypatch):
    path = tmp_path / "mars.yaml"
    path.write_text(MARS_YAML)
    monkeypatch.setenv(adapters.CONFIG_ENV, str(path))
    adapters.reset()
    yield path
    adapters.reset()


def test_verl_compute_score_routes_by_data_source_and_extra_info(mars_config):
    assert verl.compute_score("openai/gsm8k", SLOW + "\\boxed{4}", "4") == 1.5
    assert verl.compute_score("openai/gsm8k", SLOW + "\\boxed{5}", "4") == 0.5
    assert verl.compute_score("openai/gsm8k", "<think>never closed", "4") == 0.0  # no answer, malformed
    tests = json.dumps([{"input": "3\n", "output": "6\n"}, {"input": "5\n", "output": "10\n"}])
    assert verl.compute_score("codecontests", CODE, tests) == 1.5  # tests in ground_truth for code sources
    assert verl.compute_score("my_source", CODE, None, {"task": "code", "tests": tests}) == 1.5
    row = verl.compute_score("openai/gsm8k", SLOW + "\\boxed{4}", "4", return_dict=True)
    assert row == {"score": 1.5, "applicable": 1.0, "accuracy": 1.0, "format": 1.0}


def test_verl_batch_and_loading_by_file_path_like_verl_does(mars_config):
    spec = importlib.util.spec_from_file_location("custom_module", ROOT / "rewards/adapters/verl.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    scores = module.compute_score_batch(
        ["math", "math", "general"],
        [SLOW + "\\boxed{4}", SLOW + "\\boxed{5}", SLOW + "\\boxed{12}"],
        ["4", "4", "12"],
        [None, None, None],
        config=str(mars_config),
    )
    assert scores == [1.5, 0.5, 1.5]
    assert adapters.get_router(str(mars_config)).last_metrics["mars/math/fraction"] == pytest.approx(2 / 3)


def test_openrlhf_reward_func_returns_tensors_in_the_dict_convention(mars_config, monkeypatch):
    prompts = ["<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"] * 3
    responses = [SLOW + "\\boxed{4}", SLOW + "\\boxed{5}", CODE]
    labels = [
        "4",
        json.dumps({"task": "math", "answer": "4"}),
        json.dumps({"task": "code", "tests": [{"input": "2\n", "output": "4\n"}]}),
    ]
    out = openrlhf.reward_func([p + r for p, r in zip(prompts, responses)], prompts, labels)
    assert set(out) == {"rewards", "scores", "extra_logs"}
    assert out["rewards"].dtype == torch.float32
    assert out["rewards"].tolist() == [1.5, 0.5, 1.5]
    assert out["extra_logs"]["mars/accuracy"].tolist() == [1.0, 0.0, 1.0]
    assert all(t.shape == (3,) for t in out["extra_logs"].values())

    monkeypatch.setenv(openrlhf.RETURN_ENV, "tensor")
    legacy = openrlhf.reward_func([prompts[0] + responses[0]], prompts[:1], ["4"])
    assert isinstance(legacy, torch.Tensor) and legacy.tolist() == [1.5]


def test_openrlhf_labels_and_prompt_stripping():
    assert openrlhf.parse_label("42", "math") == {"task": "math", "answer": "42", "tests": None}
    assert openrlhf.parse_label('{"task": "code", "tests": []}', "math")["task"] == "code"
    assert openrlhf.parse_label("{x | x > 0}", "math")["answer"] == "{x | x > 0}"  # a set, not JSON
    assert openrlhf.response_of("PROMPT answer", "PROMPT ") == "answer"
    assert openrlhf.response_of("<s>PROMPT answer", "PROMPT ") == "answer"
    assert openrlhf.response_of("whole", "unrelated") == "whole"


def test_task_of_data_source():
    from rewards.router import MARSRouter

    r = MARSRouter({"tasks": {"math": [{"name": "a", "rewards": ["math"]}], "general": []}, "shared": []})
    assert adapters.task_of("DigitalLearningGmbH/MATH-lighteval", r) == "math"
    assert adapters.task_of("livecodebench", r) == "general"  # no code task configured
    assert adapters.task_of("math", r) == "math"


def test_adapter_routers_never_use_collectives(mars_config):
    assert adapters.get_router().config.sync_stats is False
    assert adapters.get_router() is adapters.get_router(str(mars_config))  # one router per config file


def test_the_think_format_comes_from_the_config_else_the_tokenizer_else_construction_fails(tmp_path, monkeypatch):
    class Tokenizer:  # what load_tokenizer records on a real one
        init_kwargs = {"think_start": "[unused16]", "think_end": "[unused17]"}

    path = tmp_path / "mars.yaml"
    path.write_text(MARS_YAML.replace('think_start: "<think>"\nthink_end: "</think>"\n', ""))
    monkeypatch.delenv(adapters.TOKENIZER_ENV, raising=False)
    adapters.reset()
    try:
        with pytest.raises(ValueError, match="sets no think format and no tokenizer.*think_start/think_end"):
            adapters.get_router(str(path))
        router = adapters.get_router(str(path), tokenizer=Tokenizer())
        assert router.think == PANGU_THINK and router.rewards["math"].think == PANGU_THINK
        pangu = "[unused16]add[unused17]\\boxed{4}"
        assert verl.compute_score("openai/gsm8k", pangu, "4", config=str(path)) == 1.5
        # Qwen3's tags are not this model's: no think block, so the format source gives 0 (accuracy still 1)
        assert verl.compute_score("openai/gsm8k", SLOW + "\\boxed{4}", "4", config=str(path)) == 1.0
    finally:
        adapters.reset()
