"""A stage's wall time counts every attempt: a killed attempt's time (to its last heartbeat) is found by the next."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from train.pipeline.attempts import ATTEMPT_FILE, interrupted_attempts, timed_attempt
from train.pipeline.config import load_pipeline
from train.pipeline.manifests import STAGE_MANIFEST
from train.pipeline.plan import build_plan, run_step
from train.pipeline.report import write_report

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "configs" / "tiny" / "pipeline.yaml"

KILLED_ATTEMPT = """
import sys, time
from pathlib import Path
from train.pipeline.attempts import timed_attempt
with timed_attempt(Path(sys.argv[1]), every=0.05):
    print("running", flush=True)
    time.sleep(60)
"""


def test_a_killed_attempt_is_counted_by_the_next(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", KILLED_ATTEMPT, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "running\n"
    time.sleep(0.6)
    os.kill(proc.pid, signal.SIGKILL)  # nothing runs on the way out
    proc.wait()
    (killed,) = interrupted_attempts(tmp_path)
    assert 0.4 <= killed <= 5.0
    with pytest.raises(RuntimeError, match="recipe failed"), timed_attempt(tmp_path) as earlier:
        assert earlier == [killed]
        raise RuntimeError("recipe failed")
    assert interrupted_attempts(tmp_path)[0] == killed and len(interrupted_attempts(tmp_path)) == 2
    with timed_attempt(tmp_path) as earlier:
        assert len(earlier) == 2
    assert not (tmp_path / ATTEMPT_FILE).exists()  # a clean exit: the manifest holds the times from now on
    assert interrupted_attempts(tmp_path) == []


def test_a_broken_ledger_is_an_error_naming_the_file(tmp_path):
    (tmp_path / ATTEMPT_FILE).write_text('{"earlier": [1.0]}')
    with pytest.raises(ValueError, match=rf"{ATTEMPT_FILE}: not an attempt ledger"):
        interrupted_attempts(tmp_path)


def test_the_finished_stage_records_and_reports_every_attempt(tmp_path, tiny_model_dir):
    cfg = load_pipeline(TINY, run_dir=str(tmp_path))
    shutil.copytree(tiny_model_dir, tmp_path / "world" / "model")  # the stage's inputs
    (tmp_path / "world" / "data").mkdir()
    (tmp_path / "world" / "data" / "warmup.jsonl").write_text("")
    step = build_plan(cfg, tmp_path, ROOT / "recipes")[0]
    (step.output_dir / ATTEMPT_FILE).parent.mkdir(parents=True)
    (step.output_dir / ATTEMPT_FILE).write_text(json.dumps({"earlier": [30.0], "current": 12.5}))
    # a "recipe" that saves the model the stage is expected to leave
    step.command = [sys.executable, "-c", f"import shutil; shutil.copytree({str(tiny_model_dir)!r}, "
                    f"{str(step.output_dir)!r}, dirs_exist_ok=True)"]  # fmt: skip
    done = run_step(step, tmp_path)
    assert done["attempts"][:2] == [30.0, 12.5] and len(done["attempts"]) == 3
    assert done["seconds"] == pytest.approx(sum(done["attempts"]), abs=0.05)
    assert json.loads((step.output_dir / STAGE_MANIFEST).read_text())["attempts"] == done["attempts"]
    assert not (step.output_dir / ATTEMPT_FILE).exists()
    report = write_report(cfg, [step], {}, tmp_path, "", None).read_text()
    row = next(line for line in report.splitlines() if line.startswith(f"| {step.stage.title} "))
    assert f"(3 attempts: 30 + 12 + {done['attempts'][2]:.0f} s)" in row
    assert "(the last attempt)" in row
