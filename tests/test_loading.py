"""Every loader honours the loading options: what reaches ``from_pretrained`` from each entry point.

``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained`` are wrapped to record their keyword
arguments (and then load the tiny model, with the options a CPU without bitsandbytes can honour), so each test
asserts what a real 7B run would ask of transformers: trust_remote_code, a 4-bit BitsAndBytesConfig, the attention
implementation, the dtype and the device map.
"""

from __future__ import annotations

import importlib.machinery
import sys
import types

import pytest
import torch
from conftest import load_script
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
from trl import ModelConfig

from rewards.judge import JudgeConfig, TransformersBackend
from train.core import loading
from train.core.configs import SFTConfig
from train.core.data import write_jsonl
from train.core.loading import LoadOptions, load_model_and_tokenizer, sampling_device
from train.distill.teacher import TeacherConfig, make_backend
from train.sampling import SamplerConfig, make_sampler
from train.sft import load_for_training
from train.world.arithmetic import make_problems

_HONOURED_ON_CPU = ("dtype", "local_files_only", "revision")


@pytest.fixture
def calls(monkeypatch):
    """``{"model": [kwargs, ...], "tokenizer": [kwargs, ...]}`` of every from_pretrained call."""
    seen = {"model": [], "tokenizer": []}
    model_load, tok_load = AutoModelForCausalLM.from_pretrained, AutoTokenizer.from_pretrained

    def model(path, **kwargs):
        seen["model"].append(kwargs)
        return model_load(path, **{k: v for k, v in kwargs.items() if k in _HONOURED_ON_CPU})

    def tokenizer(path, **kwargs):
        seen["tokenizer"].append(kwargs)
        return tok_load(path, **{k: v for k, v in kwargs.items() if k != "trust_remote_code"})

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", model)
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", tokenizer)
    return seen


@pytest.fixture
def bitsandbytes(monkeypatch):
    """A stand-in bitsandbytes module, so the 4-bit request passes the installed check on this CPU machine."""
    module = types.ModuleType("bitsandbytes")
    module.__spec__ = importlib.machinery.ModuleSpec("bitsandbytes", None)
    monkeypatch.setitem(sys.modules, "bitsandbytes", module)


def test_load_for_training_sends_qlora_remote_code_attention_and_dtype(tiny_model_dir, tmp_path, calls, bitsandbytes,
                                                                       monkeypatch):  # fmt: skip
    prepared = []
    monkeypatch.setattr(loading, "prepare_model_for_kbit_training", lambda m, **kw: prepared.append(kw) or m)
    model_args = ModelConfig(
        model_name_or_path=str(tiny_model_dir), dtype="bfloat16", attn_implementation="sdpa", load_in_4bit=True,
        use_peft=True, bnb_4bit_quant_type="nf4",
    )  # fmt: skip
    training_args = SFTConfig(output_dir=str(tmp_path), trust_remote_code=True, report_to=[])
    model, tokenizer = load_for_training(model_args, training_args=training_args)

    (kwargs,) = calls["model"]
    assert kwargs["trust_remote_code"] is True
    assert kwargs["attn_implementation"] == "sdpa"
    assert kwargs["dtype"] is torch.bfloat16
    q = kwargs["quantization_config"]
    assert isinstance(q, BitsAndBytesConfig) and q.load_in_4bit and not q.load_in_8bit
    assert q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_compute_dtype is torch.bfloat16
    assert kwargs["device_map"] == {"": "cpu"}  # this process's device (accelerate's), the whole model on it
    assert [t["trust_remote_code"] for t in calls["tokenizer"]] == [True]
    assert prepared == [{"use_gradient_checkpointing": False, "gradient_checkpointing_kwargs": None}]
    assert tokenizer.padding_side == "right"


def test_load_for_training_without_training_args_trusts_no_code_and_stays_float32(tiny_model_dir, calls):
    model, _ = load_for_training(ModelConfig(model_name_or_path=str(tiny_model_dir), dtype="auto"))
    (kwargs,) = calls["model"]
    assert kwargs["dtype"] is torch.float32  # trained weights stay float32; the trainer's bf16 is autocast
    assert not {"trust_remote_code", "quantization_config", "device_map", "attn_implementation"} & set(kwargs)
    assert "trust_remote_code" not in calls["tokenizer"][0]


def test_model_init_kwargs_reach_from_pretrained_and_win(tiny_model_dir, tmp_path, calls):
    init = {"attn_implementation": "eager", "low_cpu_mem_usage": True, "torch_dtype": "bfloat16"}
    training_args = SFTConfig(output_dir=str(tmp_path), report_to=[], model_init_kwargs=init)
    model_args = ModelConfig(model_name_or_path=str(tiny_model_dir), attn_implementation="sdpa")
    load_for_training(model_args, training_args=training_args)
    (kwargs,) = calls["model"]
    assert kwargs["attn_implementation"] == "eager" and kwargs["low_cpu_mem_usage"] is True
    assert kwargs["dtype"] is torch.bfloat16 and "torch_dtype" not in kwargs


def test_4bit_without_bitsandbytes_is_a_clear_error_not_plain_lora(tiny_model_dir, calls, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # not importable, whatever is installed
    model_args = ModelConfig(model_name_or_path=str(tiny_model_dir), load_in_4bit=True, use_peft=True)
    with pytest.raises(ImportError, match=r"load_in_4bit: .*bitsandbytes.*pip install"):
        load_for_training(model_args)
    assert calls["model"] == []  # nothing was loaded unquantized


def test_quantized_base_trains_through_lora_only(tiny_model_dir, calls, bitsandbytes):
    model_args = ModelConfig(model_name_or_path=str(tiny_model_dir), load_in_8bit=True, use_peft=False)
    with pytest.raises(ValueError, match="use_peft"):
        load_for_training(model_args)
    assert calls["model"] == []


def test_generation_loads_on_accelerates_device_in_its_precision(tiny_model_dir, calls):
    device = sampling_device("auto")
    from accelerate import PartialState

    assert device == PartialState().device
    model, tokenizer = load_model_and_tokenizer(
        tiny_model_dir, options=LoadOptions(trust_remote_code=True, attn_implementation="sdpa"), device="auto"
    )
    (kwargs,) = calls["model"]
    assert kwargs["dtype"] is loading.model_dtype(device.type)  # fp32 on this CPU, bf16 on a GPU or NPU
    assert kwargs["trust_remote_code"] is True and kwargs["attn_implementation"] == "sdpa"
    assert next(model.parameters()).device.type == device.type
    assert tokenizer.padding_side == "left"


def test_sampler_teacher_and_judge_load_with_their_options(tiny_model_dir, calls):
    make_sampler(SamplerConfig(model=str(tiny_model_dir), dtype="bfloat16", device="cpu", trust_remote_code=True))
    teacher = TeacherConfig(backend="transformers", model=str(tiny_model_dir), dtype="bfloat16", device="cpu",
                            trust_remote_code=True)  # fmt: skip
    backend = make_backend(teacher)
    judge = TransformersBackend(JudgeConfig(backend="transformers", model=str(tiny_model_dir), dtype="bfloat16",
                                            device="cpu", trust_remote_code=True))  # fmt: skip
    judge._load()
    assert [k["dtype"] for k in calls["model"]] == [torch.bfloat16] * 3
    assert [k["trust_remote_code"] for k in calls["model"]] == [True] * 3
    assert all(t.get("trust_remote_code") for t in calls["tokenizer"])
    assert next(backend.sampler.model.parameters()).dtype is torch.bfloat16
    assert next(judge.model.parameters()).dtype is torch.bfloat16


def test_sampler_auto_dtype_is_the_devices_precision(tiny_model_dir, calls):
    sampler = make_sampler(SamplerConfig(model=str(tiny_model_dir)))  # dtype auto, device: accelerate's
    device = sampling_device(None)
    assert calls["model"][0]["dtype"] is loading.model_dtype(device.type)
    assert "trust_remote_code" not in calls["model"][0]
    assert next(sampler.model.parameters()).device.type == device.type


def test_scripts_take_the_shared_sampler_flags(tiny_model_dir, tmp_path, calls):
    """select_data complexity: --dtype/--device/--trust-remote-code reach the loader (SamplerConfig's flags); the
    candidates come from a data set (--dataset-name, a local file read through `datasets`)."""
    write_jsonl(tmp_path / "in.jsonl", make_problems(3, levels=(1,), seed=0))
    main = load_script("scripts/select_data.py").main
    stats = main(["complexity", "--model", str(tiny_model_dir), "--dataset-name", str(tmp_path / "in.jsonl"),
                  "--out", str(tmp_path / "sel"), "--num-samples", "1", "--max-new-tokens", "2", "--dtype", "bfloat16",
                  "--device", "cpu", "--trust-remote-code", "--weighting", "uniform"])  # fmt: skip
    (kwargs,) = calls["model"]
    assert kwargs["dtype"] is torch.bfloat16 and kwargs["trust_remote_code"] is True
    assert stats["candidates"] == 3


@pytest.mark.parametrize(("recipe", "config", "data_loader"), [
    ("sft", "sft.yaml", "load_sft_data"), ("grpo", "grpo_arithmetic.yaml", "load_grpo_data"),
])  # fmt: skip
def test_recipes_pass_remote_code_and_attention_to_the_loader(recipe, config, data_loader, tiny_model_dir, tmp_path,
                                                              calls, monkeypatch):  # fmt: skip
    """A recipe's `--trust_remote_code` (a training-config key in trl 1.16) and `--attn_implementation` reach the
    training model's from_pretrained; the run stops at the data, which comes next (only the loading is under test)."""
    module = load_script(f"recipes/{recipe}.py")

    def stop(*args, **kwargs):
        raise RuntimeError("model loaded")

    monkeypatch.setattr(module, data_loader, stop)
    argv = [
        "--config", f"recipes/configs/tiny/{config}", "--model_name_or_path", str(tiny_model_dir),
        "--output_dir", str(tmp_path / "out"), "--trust_remote_code", "true", "--attn_implementation", "sdpa",
    ]  # fmt: skip
    with pytest.raises(RuntimeError, match="model loaded"):
        module.main(argv)
    (kwargs,) = calls["model"]
    assert kwargs["trust_remote_code"] is True and kwargs["attn_implementation"] == "sdpa"
    assert [t["trust_remote_code"] for t in calls["tokenizer"]] == [True]
