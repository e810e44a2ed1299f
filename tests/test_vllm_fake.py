"""The vLLM backend against a fake ``vllm`` module: the engine gets the configured arguments, and memory a training
model held is given back before the engine starts (vLLM sizes its KV cache from the free memory it sees)."""

from __future__ import annotations

import gc
import json
import sys
import types
import weakref
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import memory as accelerate_memory
from conftest import load_script

from train.core.modes import QWEN3_THINK
from train.sampling import SamplerConfig, SamplingParams, make_sampler
from train.sampling import vllm as vllm_backend


class FakeEngine:
    """``vllm.LLM``: records its arguments and what had happened before it started; replies ``<think>x</think>N``."""

    instances: list[FakeEngine] = []
    events: list[str] = []

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.events_before = list(FakeEngine.events)
        FakeEngine.events.append("engine")
        FakeEngine.instances.append(self)
        self.calls = []

    def get_tokenizer(self):
        raise AssertionError("the sampler renders prompts with the run's tokenizer")

    def generate(self, prompts, params, use_tqdm=False):
        self.calls.append((list(prompts), params))
        out = SimpleNamespace(text="<think>x</think>7", token_ids=[1, 2, 3], logprobs=None, finish_reason="stop")
        return [SimpleNamespace(outputs=[out] * params.n) for _ in prompts]


class FakeParams:
    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


@pytest.fixture
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.LLM, module.SamplingParams = FakeEngine, FakeParams
    monkeypatch.setitem(sys.modules, "vllm", module)
    FakeEngine.instances.clear()
    FakeEngine.events.clear()
    # An accelerator whose cache emptying is recorded (this machine has none).
    monkeypatch.setattr(accelerate_memory, "is_cuda_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: FakeEngine.events.append("empty_cache"))
    return FakeEngine


class _Tokenizer:
    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True, **kwargs):
        return json.dumps([messages, kwargs])


def test_engine_gets_every_configured_argument(fake_vllm):
    config = SamplerConfig(
        backend="vllm", model="/models/student", dtype="bfloat16", gpu_memory_utilization=0.37,
        tensor_parallel_size=2, max_model_len=4096, trust_remote_code=True,
    )  # fmt: skip
    sampler = make_sampler(config, QWEN3_THINK, tokenizer=_Tokenizer())
    (engine,) = fake_vllm.instances
    assert engine.kwargs == {
        "model": "/models/student", "dtype": "bfloat16", "gpu_memory_utilization": 0.37, "tensor_parallel_size": 2,
        "max_model_len": 4096, "trust_remote_code": True,
    }  # fmt: skip
    replies = sampler.sample(["Compute 3+4."], SamplingParams(n=3, temperature=0.7, max_new_tokens=9, seed=5))
    prompts, params = engine.calls[0]
    assert (params.n, params.temperature, params.max_tokens, params.seed) == (3, 0.7, 9, 5)
    assert [r.text for r in replies[0]] == ["<think>x</think>7"] * 3
    sampler.chat_template_kwargs = {"enable_thinking": False}  # fusion's prefilled fast prompts reach the template
    sampler.sample(["Compute 3+4."], SamplingParams())
    assert json.loads(engine.calls[1][0][0])[1] == {"enable_thinking": False}


def test_one_engine_per_process_under_a_multi_process_launch(fake_vllm, monkeypatch):
    monkeypatch.setattr(vllm_backend, "PartialState", lambda: SimpleNamespace(num_processes=8))
    make_sampler(SamplerConfig(backend="vllm", model="m"), QWEN3_THINK, tokenizer=_Tokenizer())
    assert fake_vllm.instances[0].kwargs["distributed_executor_backend"] == "external_launcher"


class _TrainingModel:
    """A stand-in for a trained model that only the garbage collector frees (a reference cycle, as a model and its
    trainer's callbacks form)."""

    def __init__(self):
        self.me = self


def test_the_training_models_memory_is_released_before_the_engine_starts(fake_vllm):
    model = _TrainingModel()
    weakref.finalize(model, FakeEngine.events.append, "training model freed")
    gc.disable()  # only the sampler's own collection may free it
    try:
        del model  # the caller drops its reference, as a recipe does after training
        make_sampler(SamplerConfig(backend="vllm", model="m"), QWEN3_THINK, tokenizer=_Tokenizer())
    finally:
        gc.enable()
    (engine,) = fake_vllm.instances
    assert engine.events_before == ["training model freed", "empty_cache"]


def test_closing_the_engine_gives_the_memory_back(fake_vllm):
    sampler = make_sampler(SamplerConfig(backend="vllm", model="m"), QWEN3_THINK, tokenizer=_Tokenizer())
    engine = weakref.ref(fake_vllm.instances.pop())
    FakeEngine.events.clear()
    sampler.close()
    assert engine() is None and FakeEngine.events == ["empty_cache"]


def test_an_engine_that_would_not_fit_is_refused_naming_the_holder(fake_vllm, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda: (20 * 2**30, 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda: 55 * 2**30)
    with pytest.raises(RuntimeError, match=r"gpu_memory_utilization=0.6 .* 55.0 GiB .* drop the training model"):
        make_sampler(SamplerConfig(backend="vllm", model="m", gpu_memory_utilization=0.6), QWEN3_THINK,
                     tokenizer=_Tokenizer())  # fmt: skip
    assert fake_vllm.instances == []


def test_select_data_complexity_gives_the_engine_its_memory_share(fake_vllm, tiny_model_dir, tmp_path):
    """The script's --gpu-memory-utilization reaches the engine (it used to be dropped for the 0.9 default)."""
    from train.core.data import write_jsonl
    from train.world.arithmetic import make_problems

    write_jsonl(tmp_path / "in.jsonl", make_problems(4, levels=(1,), seed=0))
    main = load_script("scripts/select_data.py").main
    stats = main(["complexity", "--model", str(tiny_model_dir), "--input", str(tmp_path / "in.jsonl"), "--out",
                  str(tmp_path / "sel"), "--backend", "vllm", "--gpu-memory-utilization", "0.6", "--num-samples", "2",
                  "--weighting", "uniform"])  # fmt: skip
    (engine,) = fake_vllm.instances
    assert engine.kwargs["gpu_memory_utilization"] == 0.6 and engine.kwargs["model"] == str(tiny_model_dir)
    assert engine.calls[0][1].n == 2 and stats["candidates"] == 4
    assert engine.events_before[-1] == "empty_cache"


def test_the_pipelines_evaluation_samples_each_stage_on_its_own_engine_and_gives_it_back(
    fake_vllm, tiny_model_dir, tmp_path
):
    """A 7B run's evaluation (``evaluation.sampler_args: {backend: vllm, ...}``): the engine gets the stage's model,
    the sampler keys and the pipeline's trust_remote_code; greedy, then k samples at T=1 on the hard problems; and
    the engine is closed before the next stage's model would load."""
    from train.pipeline.config import EvalConfig
    from train.pipeline.evaluate import evaluate_stage

    test = tmp_path / "test.jsonl"
    rows = [{"prompt": "Compute 3+4.", "task": "math", "answer": "7", "difficulty": 3},
            {"prompt": "Compute 1+1.", "task": "math", "answer": "2", "difficulty": 1}]  # fmt: skip
    test.write_text("".join(json.dumps(r) + "\n" for r in rows))
    sampler = {"backend": "vllm", "tensor_parallel_size": 2, "max_model_len": 512, "dtype": "bfloat16"}
    cfg = EvalConfig(max_new_tokens=16, batch_size=8, sampled_k=2, check="benchmark", sampler_args=sampler)
    results = evaluate_stage("grpo", str(tiny_model_dir), ["slow"], str(test), cfg, tmp_path / "eval", 3, True)
    (engine,) = fake_vllm.instances
    assert {k: engine.kwargs[k] for k in ("model", "tensor_parallel_size", "max_model_len", "dtype")} == {
        "model": str(tiny_model_dir), "tensor_parallel_size": 2, "max_model_len": 512, "dtype": "bfloat16",
    }  # fmt: skip
    assert engine.kwargs["trust_remote_code"] is True
    (greedy, sampled) = [params for _, params in engine.calls]
    assert (greedy.n, greedy.temperature, greedy.max_tokens) == (1, 0.0, 16)
    assert (sampled.n, sampled.temperature, sampled.seed, len(engine.calls[1][0])) == (2, 1.0, 3, 1)  # hard only
    assert results["modes"]["slow"]["avg@1"] == 0.5 and results["sampled_hard"]["avg"] == 1.0  # every reply says 7
    assert fake_vllm.events[-1] == "empty_cache"  # closed: its memory given back
