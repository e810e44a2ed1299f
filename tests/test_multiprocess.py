"""The tiny pipeline under two-process CPU data parallelism (``accelerate launch`` with recipes/accelerate/
cpu_ddp.yaml, ``ACCELERATE_USE_CPU=true``, gloo, ``ddp_timeout`` 60 s): distillation with its evaluation and pass
rates, GRPO, the dual system with its phase-2 relabelling, and a merge, each stage starting from the one before.

Every sampling phase inside them runs on both processes (each its share of the prompts, gathered in order;
train/sampling/sharded.py), so no rank waits at a barrier while another samples. Where the result does not depend on
the number of processes it is compared with one process's: the greedy evaluations (the starting model's and
iteration 0's) and the greedy fusion labels equal those computed here in a single process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import load_script
from safetensors.torch import load_file

from rewards.verify import Verifier, rejection_sample
from train.core.cli import parse_args
from train.core.data import load_records, read_records, validate_record, write_jsonl
from train.core.loading import load_tokenizer
from train.core.modes import QWEN3_THINK, ThinkFormat
from train.distill import stage
from train.distill.loop import iteration_dir
from train.distill.teacher import ArithmeticBackend
from train.dual_system.fusion import build_fusion, merge_prompts
from train.sampling.sharded import checkpoint_sampler
from train.world.arithmetic import make_problems

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "recipes" / "configs" / "tiny"
COMMON = ["--ddp_timeout", "60", "--report_to", "none", "--disable_tqdm", "true", "--dataloader_num_workers", "0"]

pytestmark = pytest.mark.slow


def launch(script: str, *args: str, processes: int = 2, config: str = "cpu_ddp.yaml") -> str:
    """``ACCELERATE_USE_CPU=true accelerate launch --config_file recipes/accelerate/<config> <script> <args>``."""
    accelerate = ROOT / "recipes" / "accelerate" / config
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accelerate), "--num_processes",
           str(processes), "--num_cpu_threads_per_process", "1", str(ROOT / script), *args]  # fmt: skip
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, f"{script}:\n{proc.stderr[-6000:]}"
    return proc.stderr


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A verified distillation pool, held-out problems, and the GRPO / dual-system prompts (1-2 digit sums)."""
    out = tmp_path_factory.mktemp("mp-data")
    test = [validate_record(p) for p in make_problems(13, levels=(1, 2), seed=1)]  # odd: the shards differ in size
    train = [validate_record(p) for p in make_problems(96, levels=(1, 2), seed=0, exclude={r["id"] for r in test})]
    samples = ArithmeticBackend(verbosity=0.5, error_rate=0.2, seed=0, think=QWEN3_THINK).generate(train, k=2)
    rows = [{**r, "samples": [s.as_sample() for s in ss]} for r, ss in zip(train, samples)]
    kept, _ = rejection_sample(rows, Verifier(think=QWEN3_THINK), progress=False)
    write_jsonl(out / "pool.jsonl", kept)
    write_jsonl(out / "test.jsonl", test)
    write_jsonl(out / "prompts.jsonl", kept[:48])  # GRPO drops the responses; the dual system's teacher pool
    return out


def weights(folder: Path) -> dict:
    return load_file(str(folder / "model.safetensors"))


def test_tiny_pipeline_under_two_cpu_processes(tiny_model_dir, data, tmp_path):
    out = tmp_path
    # 1. Distillation: pass rates and evaluations sharded over the two processes.
    distill = out / "distill"
    log = launch("recipes/distill.py", "--config", str(CONFIGS / "distill.yaml"), "--model_name_or_path",
           str(tiny_model_dir), "--train_file", str(data / "pool.jsonl"), "--eval_file", str(data / "test.jsonl"),
           "--output_dir", str(distill), "--iterations", "1", "--candidates_per_iteration", "24",
           "--target_size", "16", "--max_new_tokens", "24", "--eval_max_samples", "13", "--track_first_iteration",
           "5", "--max_steps", "2",
           "--per_device_train_batch_size", "4", "--generation_batch_size", "4", *COMMON)  # fmt: skip
    assert "2 process(es), device cpu" in log  # one data-parallel world, not two processes each alone
    final = Path(json.loads((distill / "final.json").read_text())["model"])
    it0 = iteration_dir(distill, 0)
    assert final == it0 / "model" and len(read_records(it0 / "complexity.jsonl", validate=False)) == 24
    assert len(read_records(it0 / "selected.jsonl", validate=False)) == 16
    # The gathered greedy evaluations equal one process's.
    cfg, *_ = parse_args(load_script("recipes/distill.py").ARG_CLASSES, [
        "--config", str(CONFIGS / "distill.yaml"), "--eval_file", str(data / "test.jsonl"),
        "--max_new_tokens", "24", "--eval_max_samples", "13", "--generation_batch_size", "4"])  # fmt: skip
    held_out = stage.eval_records(cfg)
    initial = json.loads((distill / "initial_metrics.json").read_text())
    assert initial == stage.evaluate_checkpoint(tiny_model_dir, {"held_out": held_out}, cfg, QWEN3_THINK)
    assert initial["held_out"]["n"] == 13
    metrics = json.loads((it0 / "metrics.json").read_text())
    first = read_records(it0 / "selected.jsonl")[:5]
    alone = stage.evaluate_checkpoint(final, {"held_out": held_out, "first_iteration_data": first}, cfg, QWEN3_THINK)
    assert {k: metrics[k] for k in alone} == alone

    # 2. GRPO from the distilled model (trl's generation is already per process).
    grpo = out / "grpo"
    launch("recipes/grpo.py", "--config", str(CONFIGS / "grpo_arithmetic.yaml"), "--model_name_or_path", str(final),
           "--train_files", str(data / "prompts.jsonl"), "--output_dir", str(grpo), "--max_steps", "2",
           "--per_device_train_batch_size", "4", "--num_generations", "4", "--max_completion_length", "24",
           "--save_strategy", "no", "--logging_steps", "1", *COMMON)  # fmt: skip
    assert (grpo / "model.safetensors").exists()

    # 3. Dual system from the GRPO model: fusion labels and the phase-2 relabelling sharded over both processes.
    dual = out / "dual"
    dual_argv = ["--config", str(CONFIGS / "dual_system.yaml"), "--model_name_or_path", str(grpo),
                 "--train_files", str(data / "prompts.jsonl"), "--output_dir", str(dual), "--max_prompts", "11",
                 "--num_samples", "1", "--max_new_tokens", "24", "--batch_size", "4", "--chunk_size", "6",
                 "--phase1_steps", "2", "--phase2_steps", "2", "--per_device_train_batch_size", "4",
                 "--warmup_steps", "0", "--save_strategy", "no", "--log_level", "info", *COMMON]  # fmt: skip
    assert "2 process(es), device cpu" in launch("recipes/dual_system.py", *dual_argv)
    for phase in ("phase1", "phase2"):
        assert json.loads((dual / phase / "phase_done.json").read_text())["steps"] == 2
    labels = read_records(dual / "fusion" / "labels.jsonl", validate=False)
    relabelled = read_records(dual / "fusion_phase2" / "labels.jsonl", validate=False)
    assert len(labels) == 11 and 0 < len(relabelled) <= 11  # phase 2 labels the prompts phase 1 did not hold out
    final_dual = weights(dual)
    assert all((final_dual[k] == v).all() for k, v in weights(dual / "phase2").items())  # the last phase, copied
    # The greedy fusion labels (rates, targets, mean reply lengths) equal one process's.
    args, training_args, _ = parse_args(load_script("recipes/dual_system.py").ARG_CLASSES, dual_argv)
    records = merge_prompts(load_records(data / "prompts.jsonl").to_list())[:11]
    sampler = checkpoint_sampler(
        args.sampler_for(grpo, batch_size=4), ThinkFormat.from_tokenizer(load_tokenizer(grpo))
    )
    build_fusion(
        None, sampler.tokenizer, records, args, out / "fusion-alone", sampler=sampler, seed=training_args.seed
    )
    alone_labels = read_records(out / "fusion-alone" / "labels.jsonl", validate=False)
    assert sorted(labels, key=lambda r: r["id"]) == sorted(alone_labels, key=lambda r: r["id"])

    # 4. Merge (the main process merges; the other has nothing to do).
    spec = {"merge_method": "linear", "dtype": "float32", "parameters": {"normalize": True},
            "models": [{"model": str(final), "parameters": {"weight": 0.5}},
                       {"model": str(dual), "parameters": {"weight": 0.5}}]}  # fmt: skip
    (out / "merge.yaml").write_text(yaml.safe_dump(spec))
    launch("recipes/merge.py", "--config", str(out / "merge.yaml"), "--out", str(out / "merged"), "--show_progress",
           "false")  # fmt: skip
    merged, a = weights(out / "merged"), weights(final)
    name = "model.layers.0.mlp.up_proj.weight"
    assert (merged[name] - (0.5 * a[name] + 0.5 * final_dual[name])).abs().max() < 1e-6
