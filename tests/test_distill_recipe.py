"""The distillation loop: merge step, resume bookkeeping, and a two-iteration tiny run through accelerate launch."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import load_script
from safetensors.torch import load_file

from rewards.verify import Verifier, rejection_sample
from train.core.data import read_records, validate_record, write_jsonl
from train.core.fingerprint import ResumeConfigError
from train.core.modes import QWEN3_THINK
from train.distill import stage
from train.distill.config import DistillConfig
from train.distill.loop import is_complete, iteration_dir, merge_models, resume_point, write_manifest
from train.distill.teacher import ArithmeticBackend
from train.world.arithmetic import make_problems

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pool_dir(tmp_path_factory) -> Path:
    """A verified pool (teacher with mistakes and padding, K=4, shortest correct kept) and a held-out set."""
    out = tmp_path_factory.mktemp("distill-data")
    test = [validate_record(p) for p in make_problems(16, levels=(1, 2), seed=1)]
    train = [validate_record(p) for p in make_problems(160, levels=(1, 2), seed=0, exclude={r["id"] for r in test})]
    samples = ArithmeticBackend(verbosity=0.5, error_rate=0.2, seed=0, think=QWEN3_THINK).generate(train, k=4)
    rows = [{**r, "samples": [s.as_sample() for s in ss]} for r, ss in zip(train, samples)]
    kept, report = rejection_sample(rows, Verifier(think=QWEN3_THINK), progress=False)
    assert report["math"]["kept"] == len(kept) > 140
    write_jsonl(out / "pool.jsonl", kept)
    write_jsonl(out / "test.jsonl", test)
    return out


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_merge_step_really_merges(tmp_path):
    from train.core.modes import QWEN3_THINK
    from train.world.tiny import make_tiny

    seeds = (("a", 0), ("b", 1), ("c", 2))
    a, b, c = (make_tiny(tmp_path / n, size="nano", seed=s, think=QWEN3_THINK) for n, s in seeds)
    wa, wb, wc = weights(a), weights(b), weights(c)
    ema = merge_models("ema", a, b, tmp_path / "ema", parameters={"beta": 0.75})
    name = "model.layers.0.mlp.up_proj.weight"
    assert torch.allclose(weights(ema)[name], 0.75 * wa[name] + 0.25 * wb[name], atol=1e-6)
    ta = merge_models("task_arithmetic", a, b, tmp_path / "ta", base=c, weights=[1.0, 1.0])
    assert torch.allclose(weights(ta)[name], wc[name] + (wa[name] - wc[name]) + (wb[name] - wc[name]), atol=1e-5)
    none = merge_models("none", a, b, tmp_path / "none")
    assert torch.equal(weights(none)[name], wb[name])
    assert (ema / "tokenizer.json").exists()
    with pytest.raises(ValueError, match="needs a base"):
        merge_models("ties", a, b, tmp_path / "ties")


def test_resume_point_needs_manifest_and_weights(tmp_path):
    assert resume_point(tmp_path, 3) == 0
    for t in (0, 1):
        (iteration_dir(tmp_path, t) / "model").mkdir(parents=True)
        (iteration_dir(tmp_path, t) / "model" / "model.safetensors").write_bytes(b"x")
        write_manifest(iteration_dir(tmp_path, t), iteration=t)
    assert resume_point(tmp_path, 3) == 2 and resume_point(tmp_path, 2) == 2
    (iteration_dir(tmp_path, 1) / "model" / "model.safetensors").unlink()  # the checkpoint is gone
    assert not is_complete(iteration_dir(tmp_path, 1)) and resume_point(tmp_path, 3) == 1


def test_unknown_config_key_is_named(tmp_path):
    main = load_script("recipes/distill.py").main

    from train.core.cli import ConfigError

    bad = tmp_path / "bad.yaml"
    bad.write_text("itterations: 2\n")
    with pytest.raises(ConfigError, match="'itterations'.*did you mean 'iterations'"):
        main(["--config", str(bad)])


def launch(model: Path, data: Path, out: Path) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "recipes/accelerate/cpu.yaml"),
        "--num_cpu_threads_per_process", "2",
        str(ROOT / "recipes/distill.py"), "--config", str(ROOT / "recipes/configs/tiny/distill.yaml"),
        "--model_name_or_path", str(model), "--train_file", str(data / "pool.jsonl"),
        "--eval_file", str(data / "test.jsonl"), "--output_dir", str(out),
        "--candidates_per_iteration", "48", "--max_new_tokens", "40", "--eval_max_samples", "16",
        "--track_first_iteration", "16", "--hard_min_difficulty", "2", "--max_steps", "4",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def test_two_iterations_in_process_then_resume(tiny_model_dir, pool_dir, tmp_path):
    """The fast variant (one process, no launcher, minimal sizes) of the accelerate test below."""
    main = load_script("recipes/distill.py").main

    out = tmp_path / "run"
    argv = [
        "--config", str(ROOT / "recipes/configs/tiny/distill.yaml"), "--model_name_or_path", str(tiny_model_dir),
        "--train_file", str(pool_dir / "pool.jsonl"), "--eval_file", str(pool_dir / "test.jsonl"),
        "--output_dir", str(out), "--candidates_per_iteration", "16", "--target_size", "16", "--max_new_tokens", "12",
        "--eval_max_samples", "4", "--track_first_iteration", "4", "--max_steps", "2", "--eval_initial", "false",
        "--merge_method", "linear", "--merge_weights", "0.25", "0.75",
    ]  # fmt: skip
    final = main(argv)
    assert final == iteration_dir(out, 1) / "model"
    assert json.loads((out / "final.json").read_text())["model"] == str(final)
    for t in (0, 1):
        assert is_complete(iteration_dir(out, t))
        assert (iteration_dir(out, t) / "complexity.png").exists()
    name = "model.layers.0.mlp.up_proj.weight"
    prev, student = weights(iteration_dir(out, 0) / "model")[name], weights(iteration_dir(out, 1) / "student")[name]
    assert torch.allclose(weights(final)[name], 0.25 * prev + 0.75 * student, atol=1e-6)
    first = (iteration_dir(out, 0) / "manifest.json").stat().st_mtime_ns
    shutil.rmtree(iteration_dir(out, 1) / "model")  # the last checkpoint is lost; the trained student is reused
    assert main(argv) == final and is_complete(iteration_dir(out, 1))
    assert (iteration_dir(out, 0) / "manifest.json").stat().st_mtime_ns == first
    assert torch.allclose(weights(final)[name], 0.25 * prev + 0.75 * student, atol=1e-6)
    # A rerun under another configuration is refused, naming the keys; logging and reporting keys do not count.
    recorded = json.loads((out / "run_config.json").read_text())["keys"]
    assert recorded["training.learning_rate"] == 3e-3 and "training.logging_steps" not in recorded
    for extra, key in ((["--learning_rate", "1e-2"], "training.learning_rate"),
                       (["--merge_method", "ema"], "distill.merge_method"),
                       (["--selection", "random"], "distill.selection")):  # fmt: skip
        with pytest.raises(ResumeConfigError, match=rf"{key}: .*delete .*run to start over"):
            main(argv + extra)
    assert main(argv + ["--logging_steps", "1", "--report_to", "none", "--disable_tqdm", "false"]) == final


@pytest.mark.slow
def test_two_iterations_through_accelerate_then_resume(tiny_model_dir, pool_dir, tmp_path):
    """Two iterations under `accelerate launch`, then a resumed rerun: ~50 s on 2 idle cores, ~2 min on busy ones."""
    out = tmp_path / "run"
    launch(tiny_model_dir, pool_dir, out)
    assert (out / "initial_metrics.json").exists()
    for t in (0, 1):
        it = iteration_dir(out, t)
        for name in ("complexity.jsonl", "selected.jsonl", "data_stats.json", "complexity.png", "metrics.json"):
            assert (it / name).exists(), f"{it.name}/{name} missing"
        assert is_complete(it)
        stats = json.loads((it / "data_stats.json").read_text())
        assert stats["candidates"] == 48 and stats["selected"] == len((it / "selected.jsonl").read_text().splitlines())
        metrics = json.loads((it / "metrics.json").read_text())
        assert metrics["held_out"]["n"] == 16 and "accuracy_hard" in metrics["held_out"]
        assert metrics["first_iteration_data"]["n"] == 16
    manifest = json.loads((iteration_dir(out, 1) / "manifest.json").read_text())
    assert manifest["merge_method"] == "ema" and manifest["started_from"] == str(iteration_dir(out, 0) / "model")
    ids0 = {json.loads(x)["id"] for x in (iteration_dir(out, 0) / "selected.jsonl").read_text().splitlines()}
    ids1 = {json.loads(x)["id"] for x in (iteration_dir(out, 1) / "selected.jsonl").read_text().splitlines()}
    assert not ids0 & ids1  # fresh candidates each iteration
    # The merged model is neither the previous model nor the student: it really merged (EMA, beta 0.5).
    name = "model.layers.0.mlp.up_proj.weight"
    prev, student = weights(iteration_dir(out, 0) / "model")[name], weights(iteration_dir(out, 1) / "student")[name]
    assert torch.allclose(weights(iteration_dir(out, 1) / "model")[name], 0.5 * prev + 0.5 * student, atol=1e-6)

    # Delete the last iteration's checkpoint: the rerun redoes iteration 1 only, from iteration 0's model.
    first_manifest = (iteration_dir(out, 0) / "manifest.json").stat().st_mtime_ns
    for name in ("model", "student"):
        shutil.rmtree(iteration_dir(out, 1) / name)
    (iteration_dir(out, 1) / "train_done.json").unlink()
    proc = launch(tiny_model_dir, pool_dir, out)
    assert "resuming after iteration 0" in proc.stderr
    assert (iteration_dir(out, 0) / "manifest.json").stat().st_mtime_ns == first_manifest
    assert is_complete(iteration_dir(out, 1))
    assert {json.loads(x)["id"] for x in (iteration_dir(out, 1) / "selected.jsonl").read_text().splitlines()} == ids1


def test_complexity_sampling_is_seeded(tiny_model_dir, pool_dir, tmp_path, monkeypatch):
    # A fresh process seeds torch at random; what the measurement samples must depend only on the run's seed. The
    # stand-in measurement draws from a generator seeded with the seed it is given, as the samplers do.
    def rand(model, tok, rows, seed, **kw):
        return torch.rand(len(rows), generator=torch.Generator().manual_seed(seed)).tolist()

    monkeypatch.setattr(stage, "measure_complexity", rand)
    pool = read_records(pool_dir / "pool.jsonl")
    cfg = DistillConfig(candidates_per_iteration=16, target_size=8)

    def complexities(run: str, seed: int, global_seed: int) -> list[float]:
        torch.manual_seed(global_seed)
        it_dir = tmp_path / run / "iteration_0"
        it_dir.mkdir(parents=True)
        stage.select_iteration(tiny_model_dir, pool, cfg, it_dir, 0, seed, QWEN3_THINK)
        return [r["complexity"] for r in read_records(it_dir / "complexity.jsonl", validate=False)]

    first = complexities("a", seed=0, global_seed=1)
    assert complexities("b", seed=0, global_seed=2) == first
    assert complexities("c", seed=1, global_seed=1) != first


def test_selection_seed_decides_the_draw(pool_dir, tmp_path):
    """`selection_seed` is the seed of iteration t's draw (selection_seed + t): equal seeds select the same set,
    different ones another, with the same candidates and complexities."""
    pool = read_records(pool_dir / "pool.jsonl")[:40]
    complexities = [0.5] * len(pool)  # every candidate equally likely: only the seed decides

    def selected(run: str, selection_seed: int, t: int = 0) -> list[str]:
        cfg = DistillConfig(target_size=8, selection_seed=selection_seed)
        stage.measure_and_select("unused", pool, cfg, tmp_path / run, QWEN3_THINK, seed=0, iteration=t,
                                 complexities=complexities)  # fmt: skip
        return [r["id"] for r in read_records(tmp_path / run / "selected.jsonl", validate=False)]

    first = selected("a", selection_seed=0)
    assert len(first) == 8
    assert selected("b", selection_seed=0) == first
    assert selected("c", selection_seed=1) != first
    assert selected("d", selection_seed=0, t=1) == selected("e", selection_seed=1, t=0)  # seed + iteration
    assert DistillConfig(selection_seed=5).selection_config(2).selection_seed == 7


def test_held_out_metrics_keys():
    records = [{"difficulty": 1}, {"difficulty": 3}, {"difficulty": 3}, {}]
    scores = [{"bucket": b, "correct": [ok], "tokens": [n]}
              for b, ok, n in (("1", True, 4), ("3", False, 8), ("3", True, 6), ("all", False, 2))]  # fmt: skip
    metrics = stage.held_out_metrics(records, scores, hard_min_difficulty=3)
    assert metrics == {"n": 4, "accuracy": 0.5, "mean_tokens": 5.0, "accuracy_hard": 0.5, "n_hard": 2,
                       "accuracy_by_difficulty": {"1": 1.0, "3": 0.5, "all": 0.0}}  # fmt: skip
    assert "accuracy_hard" not in stage.held_out_metrics(records, scores)


def _fault_run(model: Path, data: Path, out: Path, fault: str | None) -> subprocess.CompletedProcess:
    """Two CPU processes under `accelerate launch`; FASTSLOW_FAULT=<phase> makes a process exit 137 at that phase."""
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file",
        str(ROOT / "recipes/accelerate/cpu_ddp.yaml"), str(ROOT / "recipes/distill.py"),
        "--config", str(ROOT / "recipes/configs/tiny/distill.yaml"), "--model_name_or_path", str(model),
        "--train_file", str(data / "pool.jsonl"), "--eval_file", str(data / "test.jsonl"), "--output_dir", str(out),
        "--candidates_per_iteration", "16", "--target_size", "16", "--max_new_tokens", "12", "--eval_max_samples", "4",
        "--track_first_iteration", "4", "--max_steps", "2", "--per_device_train_batch_size", "4",
        "--eval_initial", "false",
    ]  # fmt: skip
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    env.pop("FASTSLOW_FAULT", None)
    if fault:
        env["FASTSLOW_FAULT"] = fault
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, cwd=ROOT)


def _results(out: Path) -> dict[str, str]:
    """What must not depend on a kill: each iteration's merged weights, selected set and metrics (sha256)."""
    found = {}
    for t in (0, 1):
        it = iteration_dir(out, t)
        for name in ("model/model.safetensors", "selected.jsonl", "metrics.json"):
            found[f"{it.name}/{name}"] = hashlib.sha256((it / name).read_bytes()).hexdigest()
    return found


def _strays(out: Path) -> list[str]:
    stray = re.compile(r"\.(partial|old)-\d+$|\.tmp(-\d+)?$")
    return [str(p.relative_to(out)) for p in out.rglob("*") if stray.search(p.name)]


@pytest.mark.slow
def test_a_kill_at_each_phase_resumes_to_the_same_model(tiny_model_dir, pool_dir, tmp_path):
    """Kill a two-process run at each phase (complexity written, selection written, after training, inside the
    iteration-1 merge's commit, metrics written); the rerun ends byte-identical to an uninterrupted run, no strays."""
    reference = _fault_run(tiny_model_dir, pool_dir, tmp_path / "reference", None)
    assert reference.returncode == 0, reference.stderr[-4000:]
    expected = _results(tmp_path / "reference")
    for fault in ("complexity", "selection", "training", "commit@2", "evaluation"):
        out = tmp_path / fault.replace("@", "-")
        killed = _fault_run(tiny_model_dir, pool_dir, out, fault)
        assert killed.returncode != 0, f"{fault}: the run was not killed"
        assert not (out / "final.json").exists()
        rerun = _fault_run(tiny_model_dir, pool_dir, out, None)
        assert rerun.returncode == 0, f"{fault}: {rerun.stderr[-4000:]}"
        assert _results(out) == expected, fault
        assert _strays(out) == [], fault
