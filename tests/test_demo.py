"""The main job, `make demo`, end to end in its --quick form: every stage's recipe runs through `accelerate launch`
and hands its model to the next, the per-stage evaluation is written, and a rerun resumes instead of retraining."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["base (warm-up SFT)", "1a distillation", "1b GRPO + MARS", "2 dual system"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    cmd = [sys.executable, "scripts/demo.py", "--out", str(out), "--quick"]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True, timeout=600)
    return out


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
    proc = subprocess.run(
        [sys.executable, "scripts/demo.py", "--out", str(demo), "--quick"],
        cwd=ROOT, check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert "skip (done)" in proc.stderr
    assert {p: p.stat().st_mtime_ns for p in demo.rglob("model.safetensors")} == before
    assert "| 2 dual system |" in proc.stdout
