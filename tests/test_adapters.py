"""verl and OpenRLHF adapters: the MARS router behind each engine's reward-function convention, called the way
verl 0.9.1 and OpenRLHF 0.11.2 call it."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import sys
import types
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from rewards import adapters
from rewards.adapters import openrlhf, verl
from rewards.length import count_tokens
from train.core.loading import load_tokenizer
from train.core.modes import PANGU_THINK

ROOT = Path(__file__).resolve().parents[1]
SLOW = "<think>\nadd them\n</think>\n\n"
CODE = SLOW + "```python\nprint(int(input()) * 2)\n```"
CALL = SLOW + "```python\ndef double(x, y=0):\n    return 2 * x + y\n```"
LEET = SLOW + "```python\nclass Solution:\n    def pair(self, a):\n        return (a, a)\n```"

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
KEYS = {"score", "acc", "applicable", "accuracy", "format"}


@pytest.fixture
def mars_config(tmp_path, monkeypatch):
    path = tmp_path / "mars.yaml"
    path.write_text(MARS_YAML)
    monkeypatch.setenv(adapters.CONFIG_ENV, str(path))
    adapters.reset()
    yield path
    adapters.reset()


def score(*args, **kwargs):
    return verl.compute_score(*args, **kwargs)["score"]


def test_verl_compute_score_routes_by_data_source_and_extra_info(mars_config):
    assert score("openai/gsm8k", SLOW + "\\boxed{4}", "4") == 1.5
    assert score("openai/gsm8k", SLOW + "\\boxed{5}", "4") == 0.5
    assert score("openai/gsm8k", "<think>never closed", "4") == 0.0  # no answer, malformed
    tests = json.dumps([{"input": "3\n", "output": "6\n"}, {"input": "5\n", "output": "10\n"}])
    assert score("codecontests", CODE, tests) == 1.5  # tests in ground_truth for code sources
    assert score("my_source", CODE, None, {"task": "code", "tests": tests}) == 1.5
    row = verl.compute_score("openai/gsm8k", SLOW + "\\boxed{4}", "4")
    assert row == {"score": 1.5, "acc": 1.0, "applicable": 1.0, "accuracy": 1.0, "format": 1.0}
    assert verl.compute_score("openai/gsm8k", SLOW + "\\boxed{4}", "4", return_dict=False) == 1.5


def test_verl_call_conventions_keywords_numpy_and_extra_keys(mars_config):
    """verl 0.9.1 experimental/reward_loop/reward_manager/naive.py:58-84 calls with keywords only, a data source
    read from a numpy object array, the row's extra_info plus num_turns/rollout_reward_scores (naive.py:49-52),
    and reward_router_address/reward_model_tokenizer when a reward model is served (naive.py:58-65)."""
    extra = {"index": np.int64(3), "split": np.str_("train"), "num_turns": None, "rollout_reward_scores": {}}
    row = verl.compute_score(
        data_source=np.str_("openai/gsm8k"),
        solution_str=SLOW + "\\boxed{4}",
        ground_truth=np.str_("4"),
        extra_info=extra,
        reward_router_address="127.0.0.1:1",
        reward_model_tokenizer=None,
    )
    assert row == {"score": 1.5, "acc": 1.0, "applicable": 1.0, "accuracy": 1.0, "format": 1.0}
    # extra_info as pandas hands it back from Parquet: numpy arrays inside
    cases = np.array([{"input": "3\n", "output": "6\n"}], dtype=object)
    row = verl.compute_score(
        data_source=np.str_("x"),
        solution_str=CODE,
        ground_truth=None,
        extra_info={"task": np.str_("code"), "tests": cases},
    )
    assert row["acc"] == 1.0 and row["score"] == 1.5
    assert set(verl.compute_score(np.str_("other"), "no think", "1")) == KEYS  # the same keys on every sample


def test_verl_prime_style_code_tests(mars_config):
    stdin = json.dumps({"inputs": ["3\n", "5\n"], "outputs": ["6\n", "10\n"]})
    assert verl.compute_score("codecontests", CODE, stdin)["acc"] == 1.0
    half = json.dumps({"inputs": ["3\n", "5\n"], "outputs": ["6\n", "11\n"]})
    assert verl.compute_score("codecontests", CODE, half)["acc"] == 0.5
    lines = {"inputs": [["3"], ["5"]], "outputs": [["6"], ["10"]]}  # APPS/TACO lists of lines, already parsed
    assert verl.compute_score("apps", CODE, lines)["acc"] == 1.0
    # call-based: PRIME/LiveCodeBench keep one JSON argument per line, APPS a list of arguments
    prime = json.dumps({"fn_name": "double", "inputs": ["3\n1", "5\n0"], "outputs": ["7", "10"]})
    assert verl.compute_score("primeintellect", CALL, prime)["acc"] == 1.0
    apps = json.dumps({"fn_name": "double", "inputs": [[3], [5, 1]], "outputs": [[6], [12]]})
    assert verl.compute_score("apps", CALL, apps)["acc"] == 0.5  # 2*5+1 = 11, not 12
    leet = json.dumps({"fn_name": "pair", "inputs": ["2"], "outputs": ["[2, 2]"]})  # a tuple compares as a list
    assert verl.compute_score("leetcode", LEET, leet)["acc"] == 1.0
    with pytest.raises(ValueError, match="one length"):
        adapters.code_tests({"inputs": ["1"], "outputs": []})
    assert adapters.code_tests("[]") == "[]"  # fastslow's own format passes through


def test_acc_is_correctness_when_the_total_is_normalised(tmp_path):
    path = tmp_path / "norm.yaml"
    path.write_text(MARS_YAML.replace("normalize: false", "normalize: true\nwarmup: 2"))
    adapters.reset()
    rows = [verl.compute_score("math", SLOW + f"\\boxed{{{a}}}", "4", config=str(path)) for a in (4, 5, 4, 5, 4)]
    assert [r["acc"] for r in rows] == [1.0, 0.0, 1.0, 0.0, 1.0]
    assert rows[-1]["score"] != 1.5 and rows[-1]["accuracy"] != 1.0  # standardised after warmup; acc is not
    adapters.reset()


LENGTH_YAML = MARS_YAML.replace(
    "shared: [{name: format, rewards: [format], weight: 0.5}]",
    "shared: [{name: length, rewards: [overlong], weight: 1.0}]\n"
    "reward_params: {overlong: {max_length: 20, cache: 10}}",
)


def test_length_counts_tokens_with_the_tokenizer_named_in_reward_kwargs(tmp_path, tiny_model_dir, caplog):
    path = tmp_path / "len.yaml"
    path.write_text(LENGTH_YAML)
    reply = SLOW + "\\boxed{4}"
    adapters.reset()
    with caplog.at_level("WARNING", logger="rewards.adapters"):
        off = verl.compute_score("math", reply, "4", config=str(path))
    assert "count tokens" in caplog.text and "OFF" in caplog.text
    assert off["length"] == 0.0 and off["score"] == 1.0  # the length source adds nothing
    adapters.reset()
    row = verl.compute_score("math", reply, "4", config=str(path), tokenizer=str(tiny_model_dir))
    n = count_tokens(load_tokenizer(tiny_model_dir), reply)
    assert n > 10 and row["length"] == pytest.approx(-1.0 if n > 20 else (10 - n) / 10)
    assert row["score"] == pytest.approx(1.0 + row["length"]) and row["acc"] == 1.0
    adapters.reset()


def test_concurrent_calls_from_threads_equal_sequential_ones(tmp_path):
    """verl's reward loop runs every sample's compute_score in its event loop's default thread pool
    (naive.py:75-84; reward_loop.py:138-143 gathers one task per sample); OpenRLHF 0.11.2 runs each
    query's reward_func in asyncio.to_thread (openrlhf/utils/agent.py:308-325)."""
    path = tmp_path / "norm.yaml"
    path.write_text(MARS_YAML.replace("normalize: false", "normalize: true\nwarmup: 1000000"))
    calls = [("math", SLOW + f"\\boxed{{{i % 7}}}", str(i % 3)) for i in range(64)]
    adapters.reset()
    sequential = [verl.compute_score(*c, config=str(path)) for c in calls]
    adapters.reset()
    with ThreadPoolExecutor(16) as pool:
        threaded = list(pool.map(lambda c: verl.compute_score(*c, config=str(path)), calls))
    assert threaded == sequential
    stats = adapters.get_router(str(path)).stats[("math", "accuracy")]
    assert stats.count == 64  # no update lost between threads
    adapters.reset()


def test_verl_reward_kwargs_are_merged_as_verl_does(mars_config):
    """verl/trainer/ppo/reward.py:32-38 and 70-86: the function is loaded by file path and wrapped as
    partial(_call_with_kwargs, raw_fn, reward_kwargs), reward_kwargs overriding call-time keywords."""
    spec = importlib.util.spec_from_file_location("custom_module", ROOT / "rewards/adapters/verl.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def _call_with_kwargs(raw_fn, extra_kwargs, *args, **kwargs):  # verl 0.9.1, trainer/ppo/reward.py:32-38
        merged_kwargs = {**kwargs, **extra_kwargs}
        return raw_fn(*args, **merged_kwargs)

    fn = partial(_call_with_kwargs, module.compute_score, {"config": str(mars_config)})
    out = fn(data_source="openai/gsm8k", solution_str=SLOW + "\\boxed{4}", ground_truth="4", extra_info={})
    assert out["score"] == 1.5 and out["acc"] == 1.0
    scores = module.compute_score_batch(
        ["math", "math", "general"],
        [SLOW + "\\boxed{4}", SLOW + "\\boxed{5}", SLOW + "\\boxed{12}"],
        ["4", "4", "12"],
        [None, None, None],
        config=str(mars_config),
    )
    assert [s["score"] for s in scores] == [1.5, 0.5, 1.5] and [s["acc"] for s in scores] == [1.0, 0.0, 1.0]
    assert adapters.get_router(str(mars_config)).last_metrics["mars/math/fraction"] == pytest.approx(2 / 3)


def test_openrlhf_reward_func_returns_tensors_in_the_dict_convention(mars_config, monkeypatch):
    prompts = ["<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"] * 3
    responses = [SLOW + "\\boxed{4}", SLOW + "\\boxed{5}", CODE]
    labels = [
        "4",
        json.dumps({"task": "math", "answer": "4"}),
        json.dumps({"task": "code", "tests": {"inputs": ["2\n"], "outputs": ["4\n"]}}),  # PRIME-style tests too
    ]
    out = openrlhf.reward_func([p + r for p, r in zip(prompts, responses)], prompts, labels)
    assert set(out) == {"rewards", "scores", "extra_logs"}
    assert out["rewards"].dtype == torch.float32
    assert out["rewards"].tolist() == [1.5, 0.5, 1.5]
    assert out["scores"].tolist() == [1.0, 0.0, 1.0]  # correctness, for dynamic filtering's 0..1 range
    assert out["extra_logs"]["mars/accuracy"].tolist() == [1.0, 0.0, 1.0]
    assert out["extra_logs"]["mars/acc"].tolist() == [1.0, 0.0, 1.0]
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
    assert openrlhf.response_of("P Paris<|im_end|>\n<|endoftext|>", "P ") == "Paris"  # OpenRLHF keeps specials
    assert openrlhf.response_of("P x[EOS]", "P ", ("[EOS]",)) == "x"


def test_task_of_data_source():
    from rewards.router import MARSRouter

    r = MARSRouter({"tasks": {"math": [{"name": "a", "rewards": ["math"]}], "general": []}, "shared": []})
    assert adapters.task_of("DigitalLearningGmbH/MATH-lighteval", r) == "math"
    assert adapters.task_of(np.str_("livecodebench"), r) == "general"  # no code task configured
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
        assert score("openai/gsm8k", pangu, "4", config=str(path)) == 1.5
        # Qwen3's tags are not this model's: no think block, so the format source gives 0 (accuracy still 1)
        assert score("openai/gsm8k", SLOW + "\\boxed{4}", "4", config=str(path)) == 1.0
    finally:
        adapters.reset()


# ------------------------------------------------------------------------- verl 0.9.1's own reward code


def _load(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class Cfg(dict):
    """What verl's code reads of an OmegaConf DictConfig: keys as attributes, and .get."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for key, value in self.items():
            if isinstance(value, dict):
                self[key] = Cfg(value)

    def __getattr__(self, key):
        return self[key]


class Item:
    """A one-sample DataProto as the reward managers index it (data[-1:], data[0], .batch, .non_tensor_batch)."""

    def __init__(self, prompt_len, reply, data_source, ground_truth, extra_info, pad=3):
        ids = [ord(c) for c in reply]
        self.batch = {
            "prompts": torch.ones(1, prompt_len, dtype=torch.long),
            "responses": torch.tensor(ids + [0] * pad),
            "attention_mask": torch.tensor([1] * (prompt_len + len(ids)) + [0] * pad),
        }
        self.non_tensor_batch = {
            "data_source": data_source,
            "reward_model": {"ground_truth": ground_truth, "style": "rule"},
            "extra_info": extra_info,
        }

    def __getitem__(self, index):
        return self


class CharTokenizer:
    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(int(i)) for i in ids)


@pytest.fixture
def verl_src(monkeypatch):
    """verl 0.9.1's reward-manager and loader files, run for real with its heavy imports (ray, tensordict,
    omegaconf) stubbed. Needs FASTSLOW_VERL_SRC: a folder holding an unpacked verl 0.9.1 wheel's ``verl/``
    (``pip download verl==0.9.1 --no-deps`` and unzip); skipped without it."""
    root = os.environ.get("FASTSLOW_VERL_SRC")
    if not root or not (Path(root) / "verl/trainer/ppo/reward.py").exists():
        pytest.skip("FASTSLOW_VERL_SRC does not point at an unpacked verl 0.9.1")
    src = Path(root) / "verl"
    default = lambda **kw: "verl default scorer"  # noqa: E731
    stubs = {
        "verl": dict(DataProto=object, __path__=[]),
        "verl.utils": dict(__path__=[]),
        "verl.utils.ray_utils": {},
        "verl.utils.reward_score": dict(default_compute_score=default, get_default_compute_score=lambda n: default),
        "verl.experimental": dict(__path__=[]),
        "verl.experimental.reward_loop": dict(__path__=[]),
        "verl.experimental.reward_loop.reward_manager": dict(__path__=[]),
        "verl.trainer": dict(__path__=[]),
        "verl.trainer.ppo": dict(__path__=[]),
        "omegaconf": dict(DictConfig=dict),
    }
    for name, attrs in stubs.items():
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, module)
    ray_utils = sys.modules["verl.utils.ray_utils"]
    exec(  # verl 0.9.1 verl/utils/ray_utils.py:87-94, whose module imports ray
        "import asyncio\ndef get_event_loop():\n    try:\n        loop = asyncio.get_event_loop()\n"
        "    except RuntimeError:\n        loop = asyncio.new_event_loop()\n        asyncio.set_event_loop(loop)\n"
        "    return loop\n",
        ray_utils.__dict__,
    )
    _load("verl.utils.import_utils", src / "utils/import_utils.py")
    package = sys.modules["verl.experimental.reward_loop.reward_manager"]
    _load("verl.experimental.reward_loop.reward_manager.base", src / "experimental/reward_loop/reward_manager/base.py")
    registry = _load(
        "verl.experimental.reward_loop.reward_manager.registry",
        src / "experimental/reward_loop/reward_manager/registry.py",
    )
    package.register, package.get_reward_manager_cls = registry.register, registry.get_reward_manager_cls
    for name in ("naive", "dapo"):
        _load(
            f"verl.experimental.reward_loop.reward_manager.{name}",
            src / f"experimental/reward_loop/reward_manager/{name}.py",
        )
    reward = _load("verl.trainer.ppo.reward", src / "trainer/ppo/reward.py")
    monkeypatch.delitem(sys.modules, "omegaconf")  # read at import only; libraries that probe for it must not see it
    yield reward
    for name in [n for n in sys.modules if n.startswith("verl.") and n not in stubs]:
        del sys.modules[name]


def _config(manager, custom, legacy=None, reward_kwargs=None):
    reward = {"custom_reward_function": custom, "reward_manager": {"source": "register", "name": manager}}
    if reward_kwargs is not None:
        reward["reward_kwargs"] = reward_kwargs
    return Cfg(reward=reward, custom_reward_function=legacy or {"path": None, "name": None})


def test_verl_091_reward_managers_score_through_the_adapter(verl_src, mars_config):
    path = str(ROOT / "rewards/adapters/verl.py")
    custom = {"path": path, "name": "compute_score", "reward_kwargs": {"config": str(mars_config)}}
    # The documented legacy slot is not read by main_ppo's loader: verl's default scorer stays in charge.
    legacy = verl_src.load_reward_manager(_config("naive", {"path": None, "name": "compute_score"}, custom), None)
    assert legacy.compute_score() == "verl default scorer"

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        items = [
            Item(5, SLOW + f"\\boxed{{{i % 3}}}", np.str_("openai/gsm8k"), "1", {"index": i, "split": "train"})
            for i in range(24)
        ]
        items.append(Item(5, CODE, np.str_("primeintellect"), json.dumps({"inputs": ["4"], "outputs": ["8"]}), {}))
        for manager in ("naive", "dapo"):
            kwargs = {"overlong_buffer_cfg": {"enable": False}} if manager == "dapo" else None
            rm = verl_src.load_reward_manager(_config(manager, custom, reward_kwargs=kwargs), CharTokenizer())
            out = loop.run_until_complete(asyncio.gather(*(rm.run_single(item) for item in items)))
            assert [o["reward_score"] for o in out] == [1.5 if i % 3 == 1 else 0.5 for i in range(24)] + [1.5]
            assert [o["reward_extra_info"]["acc"] for o in out] == [float(i % 3 == 1) for i in range(24)] + [1.0]
            assert all(set(o["reward_extra_info"]) == KEYS for o in out)
    finally:
        loop.close()
        asyncio.set_event_loop(None)
