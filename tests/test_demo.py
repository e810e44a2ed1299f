"""`make demo` is recipes/pipeline.py on the tiny config. Slow: with openPangu's think delimiters the quick run trains
the same models and scores the same; a run killed with SIGKILL in the middle of a stage resumes to the same
summary. (The default suite's quick end-to-end run is in tests/test_pipeline.py.)"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = "recipes/configs/tiny/pipeline.yaml"
STAGES = ["base", "distill", "grpo", "dual_system"]


def quick_cmd(out: Path, *args: str) -> list[str]:
    return [sys.executable, "recipes/pipeline.py", "--config", TINY, "--quick", "--run_dir", str(out), *args]


def run_quick(out: Path, *args: str, timeout: int = 1500) -> subprocess.CompletedProcess:
    proc = subprocess.run(quick_cmd(out, *args), cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def model_of(run: Path, stage: str) -> Path:
    return Path(json.loads((run / stage / "pipeline_stage.json").read_text())["model"])


def weights(folder: Path) -> str:
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


def test_make_demo_runs_the_tiny_pipeline():
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    assert "recipes/pipeline.py --config recipes/configs/tiny/pipeline.yaml" in recipe
    assert not (ROOT / "scripts" / "demo.py").exists()  # one way to chain the stages


@pytest.fixture(scope="module")
def qwen3_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("quick-qwen3")
    run_quick(out)
    return out


@pytest.mark.slow
def test_pangu_delimiters_train_the_same_models(qwen3_run, tmp_path):
    """The arithmetic world in openPangu's [unused16]/[unused17] format is the Qwen3-format world with the two think
    tokens renamed (same vocabulary size, same ids): every stage's model is the same bit for bit, so is the summary
    table, and the data carry the pangu tags only."""
    pangu = tmp_path / "pangu"
    run_quick(pangu, "--think_format", "pangu")
    assert (pangu / "summary.md").read_text() == (qwen3_run / "summary.md").read_text()
    for stage in STAGES:
        folder = model_of(pangu, stage)
        config = json.loads((folder / "tokenizer_config.json").read_text())
        assert (config["think_start"], config["think_end"]) == ("[unused16]", "[unused17]"), stage
        twin = qwen3_run / folder.relative_to(pangu)
        assert weights(folder) == weights(twin), f"{stage}: the pangu run trained another model"
    pool = (pangu / "world" / "data" / "pool.jsonl").read_text()
    assert "[unused16]" in pool and "<think>" not in pool


def labelled(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


@pytest.mark.slow
def test_sigkill_in_the_middle_of_a_stage_resumes_to_the_same_summary(qwen3_run, tmp_path):
    """SIGKILL the whole pipeline (it and its stage processes) once the dual-system stage has written fusion labels,
    rerun the same command: the finished stages are skipped, the killed one resumes from its labels (it says how
    many it kept, and labels only the rest), and the summary and every model equal the uninterrupted run's."""
    out = tmp_path / "killed"
    labels = out / "dual_system" / "fusion" / "labels.jsonl"
    proc = subprocess.Popen(quick_cmd(out), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    try:
        end = time.monotonic() + 1500
        while labelled(labels) == 0:  # the file is created empty before the first label: wait for a label
            assert proc.poll() is None, "the pipeline ended before the kill point"
            assert time.monotonic() < end, f"{labels} got no label within 1500 s"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    kept, built = labelled(labels), (out / "dual_system" / "fusion" / "fusion.jsonl").exists()
    assert not (out / "dual_system" / "pipeline_stage.json").exists()
    resumed = run_quick(out)
    assert resumed.stderr.count("skip (done)") == 3  # base, distill, grpo
    if not built:  # killed while labelling or before the fusion file: the rerun kept the labels it found
        assert f"resuming: {kept} of 24 prompts already labelled" in resumed.stderr, resumed.stderr[-3000:]
    assert labelled(labels) == 24  # every prompt labelled once, none twice
    assert (out / "summary.md").read_text() == (qwen3_run / "summary.md").read_text()
    for stage in STAGES:
        assert weights(model_of(out, stage)) == weights(model_of(qwen3_run, stage)), stage
