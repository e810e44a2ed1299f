"""The main job, `make demo`, end to end in its --quick form: every stage's recipe runs through `accelerate launch`
and hands its model to the next, the per-stage evaluation is written, and a rerun resumes instead of retraining.
With openPangu's think delimiters the same run scores the same."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["base (warm-up SFT)", "1a distillation", "1b GRPO + MARS", "2 dual system"]


def run_demo(out: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "scripts/demo.py", "--out", str(out), "--quick", *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    run_demo(out)
    return out


@pytest.fixture(scope="module")
def pangu_demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo-pangu")
    run_demo(out, "--think-format", "pangu")
    return out


def metrics(table: str) -> list[str]:
    """The summary table without its wall-time column (seconds differ between any two runs)."""
    return [line.rsplit("|", 2)[0] for line in table.splitlines()]


def test_every_stage_hands_a_model_to_the_next(demo: Path):
    final = json.loads((demo / "distill" / "final.json").read_text())
    assert Path(final["model"]).parent.name == "iteration_0"  # --quick: one iteration
    for folder in ("base", Path(final["model"]), "grpo", "dual_system"):
        assert (demo / folder / "model.safetensors").is_file(), folder
        assert (demo / folder / "tokenizer_config.json").is_file(), folder
    pool = [json.loads(x) for x in (demo / "pool" / "pool.jsonl").read_text().splitlines()]
    assert pool and all(r["response"] for r in pool)  # the verified shortest-correct teacher replies
    grpo_rows = [json.loads(x) for x in (demo / "grpo" / "prompts.jsonl").read_text().splitlines()]
    assert {r["answer"] for r in grpo_rows} and all(r["task"] == "math" for r in grpo_rows)


def test_summary_has_every_stage_and_mode(demo: Path):
    summary = json.loads((demo / "summary.json").read_text())
    assert list(summary["stages"]) == STAGES
    for results in summary["stages"].values():
        assert set(results["modes"]) == {"fast", "slow", "auto"}
        assert results["modes"]["slow"]["prompts"] == 30  # the --quick held-out set
    assert all(summary["seconds"][s] > 0 for s in STAGES)
    table = (demo / "summary.md").read_text()
    assert all(f"| {s} |" in table for s in STAGES)
    assert (demo / "eval" / "stage3.png").stat().st_size > 0


def test_rerun_resumes_without_training(demo: Path):
    before = {p: p.stat().st_mtime_ns for p in demo.rglob("model.safetensors")}
    proc = run_demo(demo, timeout=300)
    assert "skip (done)" in proc.stderr
    assert {p: p.stat().st_mtime_ns for p in demo.rglob("model.safetensors")} == before
    assert "| 2 dual system |" in proc.stdout


def test_pangu_delimiters_score_the_same(demo: Path, pangu_demo: Path):
    """The arithmetic world in openPangu's [unused16]/[unused17] format is the Qwen3-format world with the two think
    tokens renamed (same vocabulary size, same ids): every stage's held-out figures equal, and so does every stage's
    model, bit for bit (the quick run's table is all zeros after 4 warm-up steps, so the weights are the comparison
    that would catch a stage still writing or reading <think>). The data and replies carry the pangu tags only."""
    assert json.loads((pangu_demo / "summary.json").read_text())["think_format"] == "pangu"
    assert metrics((pangu_demo / "summary.md").read_text()) == metrics((demo / "summary.md").read_text())
    final = Path(json.loads((demo / "distill" / "final.json").read_text())["model"]).relative_to(demo.resolve())
    for folder in ("model", "base", final, "grpo", "dual_system"):
        config = json.loads((pangu_demo / folder / "tokenizer_config.json").read_text())
        assert (config["think_start"], config["think_end"]) == ("[unused16]", "[unused17]"), folder
        weights = [
            hashlib.sha256((d / folder / "model.safetensors").read_bytes()).hexdigest() for d in (demo, pangu_demo)
        ]
        assert weights[0] == weights[1], f"{folder}: the pangu run trained another model"
    pool = (pangu_demo / "pool" / "pool.jsonl").read_text()
    assert "[unused16]" in pool and "<think>" not in pool


def test_a_run_keeps_its_think_format(demo: Path):
    proc = subprocess.run(
        [sys.executable, "scripts/demo.py", "--out", str(demo), "--quick", "--think-format", "pangu"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0 and "was built with --think-format qwen3" in proc.stderr
