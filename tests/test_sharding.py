"""Sampling phases inside multi-process runs (train/sampling/sharded.py): prompts split across ranks and gathered
back in order, models loaded outside a live ZeRO-3/FSDP context, and no ``from_pretrained`` on a main-process-only
code path of a recipe while ZeRO-3 is enabled. The two-process runs themselves: tests/test_multiprocess.py."""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import os
import re
import threading
import types
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from accelerate import PartialState
from conftest import load_script
from safetensors.torch import load_file
from transformers import PreTrainedModel, Trainer
from transformers.integrations import deepspeed as hf_deepspeed

from train.core.checks import exact_match
from train.core.data import read_records
from train.core.loading import load_model_and_tokenizer
from train.core.modes import QWEN3_THINK
from train.distill import stage
from train.distill.config import DistillConfig
from train.sampling.base import SamplerConfig, SamplingParams
from train.sampling.pass_rate import pass_rates
from train.sampling.reply import Reply
from train.sampling.sharded import (
    NOT_MIXED,
    SamplerArguments,
    ShardedSampler,
    is_sharded_training,
    outside_sharding,
    run_sharded,
)
from train.sampling.transformers import TransformersSampler
from train.world.arithmetic import make_problems

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------- simulated ranks


class World:
    """``size`` simulated ranks in threads: each gets a fake accelerate state (accelerate's own
    ``split_between_processes`` bound to it) and a ``gather`` that all-gathers like ``gather_object``."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.slots: list[list] = [[] for _ in range(size)]
        self.barrier = threading.Barrier(size, timeout=60)

    def state(self, rank: int) -> types.SimpleNamespace:
        fake = types.SimpleNamespace(num_processes=self.size, process_index=rank, is_main_process=rank == 0)
        fake.split_between_processes = types.MethodType(PartialState.split_between_processes, fake)
        return fake

    def gather(self, rank: int, local: list) -> list:
        self.slots[rank] = list(local)
        self.barrier.wait()
        out = [x for slot in self.slots for x in slot]
        self.barrier.wait()  # nobody overwrites a slot before every rank has read them all
        return out

    def run(self, job: Callable[[types.SimpleNamespace, Callable], object]) -> list:
        """``job(state, gather)`` on every rank at once; the ranks' results, by rank."""
        results: list = [None] * self.size
        errors: list = []

        def one(rank: int) -> None:
            try:
                results[rank] = job(self.state(rank), functools.partial(self.gather, rank))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
                errors.append(exc)
                self.barrier.abort()

        threads = [threading.Thread(target=one, args=(r,)) for r in range(self.size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return results


@pytest.mark.parametrize("n", [0, 1, 5, 8])
def test_run_sharded_splits_contiguously_and_gathers_in_order(n):
    items = [f"p{i}" for i in range(n)]
    seen: dict[int, list] = {}

    def job(state, gather):
        def work(mine):
            seen[state.process_index] = list(mine)
            return [x.upper() for x in mine]

        return run_sharded(items, work, state, gather)

    results = World(2).run(job)
    assert results == [[x.upper() for x in items]] * 2  # every rank ends with all results, in the items' order
    half = (n + 1) // 2
    assert seen.get(0, []) == items[:half] and seen.get(1, []) == items[half:]  # rank 0 takes the extra one
    one = types.SimpleNamespace(num_processes=1, process_index=0)
    assert run_sharded(items, lambda mine: [x.upper() for x in mine], one, gather=None) == [x.upper() for x in items]


class EchoSampler:
    """Replies that name their prompt and the call's seed, and the prompts each call got."""

    think = QWEN3_THINK

    def __init__(self) -> None:
        self.calls: list[tuple[list, int | None]] = []

    def sample(self, prompts, params, mode=None):
        self.calls.append((list(prompts), params.seed))
        return [[Reply(f"{p}#{k}", 1) for k in range(params.n)] for p in prompts]


def test_sharded_sampler_gathers_replies_in_prompt_order_with_a_seed_per_rank():
    prompts = [f"q{i}" for i in range(7)]
    params = SamplingParams(n=2, temperature=1.0, seed=11)
    inner = {0: EchoSampler(), 1: EchoSampler()}

    def job(state, gather):
        return ShardedSampler(inner[state.process_index], state, gather).sample(prompts, params)

    for replies in World(2).run(job):
        assert [[r.text for r in row] for row in replies] == [[f"{p}#0", f"{p}#1"] for p in prompts]
    (shard0, seed0), (shard1, seed1) = inner[0].calls[0], inner[1].calls[0]
    assert shard0 == prompts[:4] and shard1 == prompts[4:]
    assert seed0 != seed1 and 11 not in (seed0, seed1)  # ranks do not repeat each other's draws
    alone = EchoSampler()
    ShardedSampler(alone, types.SimpleNamespace(num_processes=1, process_index=0)).sample(prompts, params)
    assert alone.calls == [(prompts, 11)]  # one process: the call is the unsharded one


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model_and_tokenizer(tiny_model_dir)


def test_sharded_evaluation_and_pass_rates_equal_the_single_process_ones(tiny, tiny_model_dir):
    """Greedy evaluation and k=1 pass rates of 2 simulated ranks, each with its own copy of the model, equal one
    process's; sampled pass rates come back one per prompt, in order."""
    model, tok = tiny
    records = make_problems(9, levels=(1, 2), seed=3)
    cfg = DistillConfig(max_new_tokens=10, generation_batch_size=4)
    alone = stage.evaluate(model, tok, records, cfg, QWEN3_THINK)
    # Each simulated rank loads its own model and tokenizer, as each process does: a tokenizer's padding state is
    # set per call and is not thread-safe: two rank threads sharing one raced once in CI (a ragged batch).
    copies = [load_model_and_tokenizer(tiny_model_dir) for _ in range(2)]

    def evaluation(state, gather):
        sampler = ShardedSampler(TransformersSampler(*copies[state.process_index], 4), state, gather)
        return stage.evaluate(None, None, records, cfg, QWEN3_THINK, sampler)

    assert World(2).run(evaluation) == [alone, alone]
    assert alone["n"] == 9

    single = pass_rates(TransformersSampler(model, tok, 4), records, k=1, check=exact_match, max_new_tokens=10)

    def rates(state, gather, k=1):
        sampler = ShardedSampler(TransformersSampler(*copies[state.process_index], 4), state, gather)
        return pass_rates(sampler, records, k=k, check=exact_match, max_new_tokens=10, seed=0)

    for got in World(2).run(rates):
        assert [p.replies for p in got] == [p.replies for p in single]
    sampled = World(2).run(functools.partial(rates, k=3))
    assert sampled[0] == sampled[1] and [len(p.replies) for p in sampled[0]] == [3] * 9


# ------------------------------------------------------------------------------------------ loading context


class FakeZero3:
    config: dict = {"zero_optimization": {"stage": 3}}

    def is_zero3(self) -> bool:
        return True


@pytest.fixture
def zero3(monkeypatch):
    """ZeRO-3 reported as enabled (transformers' global switch), as TrainingArguments with a zero3 config leave it.

    Not inside ``Trainer.train``: trl's training step would then gather parameters with deepspeed, which is not
    installed here; what is tested is where the recipes load and sample, not ZeRO-3 training itself.
    """
    live = FakeZero3()
    monkeypatch.setattr(hf_deepspeed, "_hf_deepspeed_config_weak_ref", lambda: live)
    assert hf_deepspeed.is_deepspeed_zero3_enabled()
    train = Trainer.train

    def train_without_deepspeed(self, *args, **kwargs):
        with outside_sharding():
            return train(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train", train_without_deepspeed)
    return live


def test_outside_sharding_turns_zero3_and_fsdp_loading_off_and_restores_them(zero3, monkeypatch):
    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "true")
    assert is_sharded_training()
    with outside_sharding():
        assert not hf_deepspeed.is_deepspeed_zero3_enabled()
        assert os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "false"
    assert hf_deepspeed.is_deepspeed_zero3_enabled() and os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "true"
    with pytest.raises(RuntimeError), outside_sharding():
        raise RuntimeError("restored on errors too")
    assert hf_deepspeed.is_deepspeed_zero3_enabled()


def test_sampler_arguments_mirror_the_sampler_config():
    mixed = {f.name: f for f in dataclasses.fields(SamplerArguments)}
    own = [f for f in dataclasses.fields(SamplerConfig) if f.name not in NOT_MIXED]
    assert list(mixed) == [f"sampler_{f.name}" for f in own]
    assert all(mixed[f"sampler_{f.name}"].default == f.default and mixed[f"sampler_{f.name}"].metadata["help"]
               for f in own)  # fmt: skip
    args = DistillConfig(sampler_backend="endpoint", sampler_base_url="http://127.0.0.1:9/v1")
    assert args.sampler_for("ckpt").model == "ckpt"  # the endpoint serves the checkpoint under its path
    named = DistillConfig(sampler_backend="endpoint", sampler_model="served")
    assert named.sampler_for("ckpt").model == "served"
    assert DistillConfig().sampler_for("ckpt", batch_size=3).batch_size == 3
    assert stage.phase_sampler_config(DistillConfig(generation_batch_size=5), "m").batch_size == 5
    cfg = DistillConfig(complexity_backend="endpoint", complexity_gpu_memory_utilization=0.3)
    assert stage.phase_sampler_config(cfg, "m", pass_rates=True).backend == "endpoint"
    assert stage.phase_sampler_config(cfg, "m", pass_rates=True).gpu_memory_utilization == 0.3
    assert stage.phase_sampler_config(cfg, "m").backend == "transformers"  # evaluation: sampler_backend


# --------------------------------------------------------------------- no from_pretrained on the main process only

MAIN_ONLY = re.compile(r"is_main_process|is_local_main_process|is_world_process_zero|main_process_first|on_main")


@functools.cache
def _tree(path: str) -> ast.Module:
    return ast.parse(Path(path).read_text(encoding="utf-8"))


def _within(nodes: list[ast.stmt], line: int) -> bool:
    return bool(nodes) and nodes[0].lineno <= line <= nodes[-1].end_lineno


def main_only_sites(root: Path = ROOT) -> list[str]:
    """The project lines on the current call stack that sit in a main-process-only block: the body of
    ``if <...is_main_process...>:`` (the ``else`` of ``if not ...``), or a ``with <...main_process_first...>:``."""
    sites = []
    for info in inspect.stack()[1:]:
        if info.filename.startswith("<"):
            continue  # frozen or generated code
        path = Path(info.filename).resolve()
        if root not in path.parents or {".venv", "tests"} & set(path.relative_to(root).parts):
            continue
        for node in ast.walk(_tree(str(path))):
            if isinstance(node, ast.If) and MAIN_ONLY.search(ast.unparse(node.test)):
                negated = isinstance(node.test, ast.UnaryOp) and isinstance(node.test.op, ast.Not)
                if _within(node.orelse if negated else node.body, info.lineno):
                    sites.append(f"{path.relative_to(root)}:{info.lineno}")
            elif isinstance(node, ast.With) and any(MAIN_ONLY.search(ast.unparse(i)) for i in node.items):
                if _within(node.body, info.lineno):
                    sites.append(f"{path.relative_to(root)}:{info.lineno}")
    return sites


@pytest.fixture
def loads(monkeypatch):
    """Every ``from_pretrained`` with whether ZeRO-3 was enabled and the main-process-only lines it ran under; the
    model is then really loaded (without ZeRO-3, which needs deepspeed)."""
    calls: list[dict] = []
    real = PreTrainedModel.from_pretrained.__func__

    def recording(cls, *args, **kwargs):
        calls.append({"path": str(args[0] if args else kwargs.get("pretrained_model_name_or_path")),
                      "zero3": hf_deepspeed.is_deepspeed_zero3_enabled(), "main_only": main_only_sites()})  # fmt: skip
        with outside_sharding():
            return real(cls, *args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(recording))
    return calls


def test_the_detector_sees_a_main_only_block(tmp_path, loads, tiny_model_dir):
    """Control: a from_pretrained inside ``if state.is_main_process:`` is reported, one outside is not."""
    code = tmp_path / "site.py"
    code.write_text(
        "def load(state, path, loader):\n    if state.is_main_process:\n        loader(path)\n    loader(path)\n"
    )
    namespace: dict = {}
    exec(compile(code.read_text(), str(code), "exec"), namespace)
    calls = []
    namespace["load"](PartialState(), "x", lambda p: calls.append(main_only_sites(tmp_path)))
    assert calls == [["site.py:3"], []]


def test_no_from_pretrained_in_a_main_only_block_under_zero3(
    zero3, loads, tiny_model_dir, arithmetic_data_dir, tmp_path
):
    """The distillation (pass rates, evaluation, merge) and the dual-system recipe (fusion labels, phase-2
    relabelling, final save) with ZeRO-3 reported as enabled: every model load runs on all processes' paths (the
    training loads under ZeRO-3, the sampling ones outside it), none inside a main-process-only block."""
    data = arithmetic_data_dir
    load_script("recipes/distill.py").main([
        "--config", str(ROOT / "recipes/configs/tiny/distill.yaml"), "--model_name_or_path", str(tiny_model_dir),
        "--train_file", str(data / "train.jsonl"), "--eval_file", str(data / "test.jsonl"),
        "--output_dir", str(tmp_path / "distill"), "--iterations", "1", "--candidates_per_iteration", "8",
        "--target_size", "4", "--max_new_tokens", "6", "--eval_max_samples", "4", "--track_first_iteration", "2",
        "--max_steps", "1", "--per_device_train_batch_size", "4",
    ])  # fmt: skip
    assert (tmp_path / "distill" / "initial_metrics.json").exists()
    distill_loads = list(loads)
    load_script("recipes/dual_system.py").main([
        "--model_name_or_path", str(tiny_model_dir), "--train_files", str(data / "train.jsonl"),
        "--output_dir", str(tmp_path / "dual"), "--max_prompts", "6", "--num_samples", "1", "--max_new_tokens", "6",
        "--check", "exact", "--phase1_steps", "1", "--phase2_steps", "1", "--per_device_train_batch_size", "4",
        "--max_length", "96", "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true",
    ])  # fmt: skip
    assert (tmp_path / "dual" / "fusion_phase2" / "fusion.jsonl").exists()
    assert read_records(tmp_path / "dual" / "fusion" / "fusion.jsonl", validate=False)
    # Under "ZeRO-3" the dual system labels from the saved folders (the in-memory model would be sharded).
    assert any(c["path"] == str(tmp_path / "dual" / "phase1") and not c["zero3"] for c in loads)
    assert torch.equal(*(read_weights(p) for p in (tmp_path / "dual", tmp_path / "dual" / "phase2")))
    assert len(distill_loads) >= 4 and any(c["zero3"] for c in loads)  # the training loads saw ZeRO-3 enabled
    assert [c for c in loads if c["main_only"]] == []


def read_weights(folder: Path) -> torch.Tensor:
    return torch.cat([t.flatten() for _, t in sorted(load_file(str(folder / "model.safetensors")).items())])


def test_a_lora_phase_is_labelled_from_its_merged_folder_under_zero3(zero3, loads, tiny_model_dir, arithmetic_data_dir,
                                                                     tmp_path):  # fmt: skip
    """Under ZeRO-3 a LoRA run's phase-1 adapter is merged into its base (streamed, no from_pretrained) and that
    folder labels the phase-2 prompts, loaded outside ZeRO-3; the final adapter is merged from disk too."""
    out = tmp_path / "dual"
    load_script("recipes/dual_system.py").main([
        "--model_name_or_path", str(tiny_model_dir), "--train_files", str(arithmetic_data_dir / "train.jsonl"),
        "--output_dir", str(out), "--max_prompts", "6", "--num_samples", "1", "--max_new_tokens", "6",
        "--check", "exact", "--phase1_steps", "1", "--phase2_steps", "1", "--per_device_train_batch_size", "4",
        "--max_length", "96", "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true",
        "--use_peft", "true", "--lora_target_modules", "all-linear",
    ])  # fmt: skip
    labeller = out / "fusion_phase2" / "labelling_model"
    assert [(c["path"], c["zero3"]) for c in loads][-1] == (str(labeller), False)
    assert (out / "adapter_config.json").exists() and (out / "merged" / "model.safetensors").exists()
    assert [c for c in loads if c["main_only"]] == []
