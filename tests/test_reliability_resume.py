"""Honest resume and self-cleaning commits: torn multi-byte lines, changed configurations, resumed random generators,
kills inside a merge's commit window, non-finite tensors (see docs/reliability.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import train.dual_system.fusion as fusion
from train.core.data import validate_record
from train.core.fingerprint import (
    RUN_CONFIG,
    ResumeConfigError,
    check_run_config,
    config_fingerprint,
    fault_point,
)
from train.core.modes import QWEN3_THINK, Mode
from train.distill.teacher import ArithmeticBackend, generate_teacher
from train.dual_system.fusion import FusionBuildConfig
from train.sampling.reply import Reply
from train.sampling.transformers import TransformersSampler
from train.world.arithmetic import make_problems

ROOT = Path(__file__).resolve().parents[1]


# -------------------------------------------------------------------------------------------- the fingerprint


def test_fingerprint_ignores_patterns_and_names_differing_keys(tmp_path):
    a = config_fingerprint({"learning_rate": 1e-3, "logging_steps": 4, "seed": 0}, ignore=("logging_*",))
    b = config_fingerprint({"learning_rate": 1e-3, "logging_steps": 9, "seed": 0}, ignore=("logging_*",))
    assert a == b and set(a["keys"]) == {"learning_rate", "seed"} and len(a["hash"]) == 64
    record = tmp_path / "out" / RUN_CONFIG
    check_run_config(record, {"learning_rate": 1e-3, "seed": 0, "mode": (1, 2)})
    assert json.loads(record.read_text())["keys"] == {"learning_rate": 1e-3, "mode": [1, 2], "seed": 0}
    check_run_config(record, {"learning_rate": 1e-3, "seed": 0, "mode": [1, 2]})  # tuples record as lists
    with pytest.raises(ResumeConfigError, match=r"learning_rate: 0\.001 -> 0\.01.*delete .*out to start over"):
        check_run_config(record, {"learning_rate": 1e-2, "seed": 0, "mode": [1, 2]})
    assert not list(record.parent.glob("*.tmp*"))


def test_a_recipe_resumes_against_a_restarted_sampler_server(tmp_path):
    from dataclasses import dataclass, fields

    from train.core.fingerprint import SAMPLER_TRANSPORT, check_recipe_config
    from train.sampling.params import SamplerConfig

    assert set(SAMPLER_TRANSPORT) <= {f.name for f in fields(SamplerConfig)}  # the list names real keys

    @dataclass
    class Stage:
        sampler_model: str = "served"
        sampler_base_url: str = "http://127.0.0.1:8000/v1"
        sampler_timeout: float = 60.0
        sampler_batch_budget: float | None = None

    class Training:
        def __init__(self, **kw):
            self.kw = {"learning_rate": 1e-3, "logging_steps": 5, **kw}

        def to_dict(self):
            return self.kw

    @dataclass
    class Model:
        name: str = "m"

    check_recipe_config(tmp_path, "distill", Stage(), Training(), Model())
    moved = Stage(sampler_base_url="http://127.0.0.1:8011/v1", sampler_timeout=600.0)
    check_recipe_config(tmp_path, "distill", moved, Training(logging_steps=1), Model())  # transport, logging: resume
    with pytest.raises(ResumeConfigError, match="distill.sampler_model: 'served' -> 'other'"):
        check_recipe_config(tmp_path, "distill", Stage(sampler_model="other"), Training(), Model())
    with pytest.raises(ResumeConfigError, match="distill.sampler_batch_budget"):
        check_recipe_config(tmp_path, "distill", Stage(sampler_batch_budget=5.0), Training(), Model())
    # A record written before these keys were ignored still holds them: it resumes all the same.
    older = tmp_path / "older"
    keys = {"distill.sampler_model": "served", "distill.sampler_base_url": "http://old:1/v1",
            "distill.sampler_timeout": 1, "distill.sampler_batch_budget": None, "training.learning_rate": 1e-3,
            "model.name": "m"}  # fmt: skip
    older.mkdir()
    (older / RUN_CONFIG).write_text(json.dumps(config_fingerprint(keys)))
    check_recipe_config(older, "distill", Stage(), Training(), Model())


def test_fault_point_exits_137_at_the_nth_reach():
    code = "from train.core.fingerprint import fault_point as f\nfor i in range(3):\n print(i, flush=True)\n f('x')"
    env = {**os.environ, "FASTSLOW_FAULT": "x@2"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 137 and proc.stdout.split() == ["0", "1"]
    fault_point("x")  # unset here: nothing happens


# ------------------------------------------------------------------------------------------- fusion resume


RECORDS = [
    {"id": "e", "prompt": "Compute 1+1.", "task": "math", "answer": "2", "difficulty": 1},
    {"id": "h", "prompt": "Compute 123+456.", "task": "math", "answer": "579", "difficulty": 3},
]


def _fake_sampling(monkeypatch) -> list:
    calls = []

    def fake(sampler, recs, mode, config, tokenizer=None, seed=None):
        calls.append([r["id"] for r in recs])
        reply = "<think>\n\n</think>\n\n2" if mode == Mode.FAST else "<think>\ns\n</think>\n\n579"
        return [[Reply(reply, len(reply))] * config.num_samples for _ in recs]

    monkeypatch.setattr(fusion, "sample_replies", fake)
    return calls


def test_fusion_resume_survives_a_torn_multibyte_line(tmp_path, monkeypatch, tiny_model_dir):
    from train.core.loading import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    calls = _fake_sampling(monkeypatch)
    config = FusionBuildConfig(check="exact", chunk_size=1)
    sampler = TransformersSampler(None, tok)
    stats = fusion.build_fusion(None, tok, RECORDS, config, tmp_path, sampler=sampler, seed=3)
    labels = (tmp_path / "labels.jsonl").read_bytes()
    # A kill tore the last line inside "é" (two bytes in UTF-8): a text read fails with UnicodeDecodeError.
    (tmp_path / "labels.jsonl").write_bytes(labels + '{"id": "x", "note": "é'.encode()[:-1])
    calls.clear()
    again = fusion.build_fusion(None, tok, RECORDS, config, tmp_path, sampler=sampler, seed=3)
    assert again["labels"] == stats["labels"] and calls == []
    assert (tmp_path / "labels.jsonl").read_bytes() == labels  # the torn bytes are gone


def test_fusion_refuses_to_resume_under_another_config(tmp_path, monkeypatch, tiny_model_dir):
    from train.core.loading import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    _fake_sampling(monkeypatch)
    sampler = TransformersSampler(None, tok)
    fusion.build_fusion(None, tok, RECORDS, FusionBuildConfig(check="exact"), tmp_path, sampler=sampler, seed=3)
    recorded = json.loads((tmp_path / RUN_CONFIG).read_text())["keys"]
    assert recorded["num_samples"] == 4 and recorded["seed"] == 3 and recorded["think_start"] == "<think>"
    with pytest.raises(ResumeConfigError, match=r"num_samples: 4 -> 2; seed: 3 -> 4"):
        fusion.build_fusion(
            None, tok, RECORDS, FusionBuildConfig(check="exact", num_samples=2), tmp_path, sampler=sampler, seed=4
        )


# ------------------------------------------------------------------------------------------- teacher resume


class KilledAt:
    """Wraps a backend and raises on its ``n``-th call: a run killed after ``n - 1`` flushed chunks."""

    name = "arithmetic"

    def __init__(self, backend, n: int):
        self.backend, self.n, self.calls = backend, n, 0

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def generate(self, recs, k):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt
        return self.backend.generate(recs, k)


def _teacher_records(n: int) -> list[dict]:
    return [validate_record(p) for p in make_problems(n, levels=(1, 2, 3), seed=11)]


def _arith(**kw) -> ArithmeticBackend:
    return ArithmeticBackend(**{"verbosity": 0.5, "error_rate": 0.2, "seed": 0, **kw}, think=QWEN3_THINK)


def test_teacher_refuses_to_resume_under_another_config(tmp_path):
    recs, out = _teacher_records(20), tmp_path / "teacher.jsonl"
    with pytest.raises(KeyboardInterrupt):
        generate_teacher(recs, KilledAt(_arith(), 2), out, k=4, chunk_size=8, progress=False)
    before = out.read_bytes()
    with pytest.raises(ResumeConfigError, match=r"error_rate: 0\.2 -> 0\.9; k: 4 -> 1.*delete"):
        generate_teacher(recs, _arith(error_rate=0.9), out, k=1, chunk_size=8, progress=False)
    assert out.read_bytes() == before  # nothing was appended
    recorded = json.loads((tmp_path / "teacher.jsonl.run_config.json").read_text())["keys"]
    assert recorded["k"] == 4 and recorded["backend"] == "arithmetic" and "chunk_size" not in recorded


@pytest.mark.parametrize("kill", ["raise", "torn_after_fsync"])
def test_resumed_arithmetic_teacher_is_byte_identical(tmp_path, kill):
    recs = _teacher_records(600)
    whole = tmp_path / "whole.jsonl"
    generate_teacher(recs, _arith(), whole, k=4, chunk_size=64, progress=False)
    out = tmp_path / "killed.jsonl"
    with pytest.raises(KeyboardInterrupt):
        generate_teacher(recs, KilledAt(_arith(), 4), out, k=4, chunk_size=64, progress=False)
    assert len(out.read_bytes().splitlines()) == 3 * 64
    if kill == "torn_after_fsync":  # chunk 4 flushed and half of chunk 5 torn, but the state of chunk 4 not saved
        out.write_bytes(
            whole.read_bytes()[: len(b"".join(whole.read_bytes().splitlines(True)[: 4 * 64]))] + b'{"i\xc3'
        )
    generate_teacher(recs, _arith(), out, k=4, chunk_size=64, progress=False)
    assert out.read_bytes() == whole.read_bytes()
