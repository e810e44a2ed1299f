"""pyproject's extras: every config value that needs a package is covered by one (fast), and each extra resolves
next to the pins with a real `pip install --dry-run` against the package index (slow: minutes each, network)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from train.core.memory import EXTRAS, NEEDS_NO_EXTRA, VALUE_EXTRAS, config_extras

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
OPTIONAL = PYPROJECT["project"]["optional-dependencies"]
CONFIGS = sorted((ROOT / "recipes" / "configs").rglob("*.yaml"))


def pins() -> dict[str, str]:
    return dict(re.match(r"([A-Za-z0-9_.-]+)==(\S+)", d).groups() for d in PYPROJECT["project"]["dependencies"]
                if "==" in d)  # fmt: skip


def test_every_extra_the_code_knows_is_declared_and_bounded():
    assert set(EXTRAS) == set(OPTIONAL) - {"dev"}
    for extra in EXTRAS:  # the runtime extras (dev holds the tools)
        # a bare name floats to whatever release appears next: the cause of issue #13's first item
        for req in OPTIONAL[extra]:
            assert re.search(r"[=<>]", req), f"extra {extra!r}: {req!r} has no version bound"
    assert {VALUE_EXTRAS[v] for v in VALUE_EXTRAS} <= set(OPTIONAL)


@pytest.mark.parametrize("config", CONFIGS, ids=[str(p.relative_to(ROOT)) for p in CONFIGS])
def test_report_to_and_attn_implementation_values_are_covered_by_an_extra(config):
    cfg = yaml.safe_load(config.read_text()) or {}
    report = cfg.get("report_to")
    values = [cfg.get("attn_implementation"), *(report if isinstance(report, list) else [report])]
    for value in [v for v in values if v is not None]:
        assert value in NEEDS_NO_EXTRA or value in VALUE_EXTRAS, (
            f"{config.name}: {value!r} needs a package no extra installs (add it to pyproject's extras and "
            "train/core/memory.py VALUE_EXTRAS)"
        )
    for extra in config_extras(cfg):
        assert extra in OPTIONAL


def test_the_7b_configs_name_their_extras():
    """What scripts/preflight.py tells a user to install for each 7B stage."""
    scale = ROOT / "recipes" / "configs" / "embedded-7b"
    needs = {p.stem: set(config_extras(yaml.safe_load(p.read_text()))) for p in scale.glob("*.yaml")}
    assert needs["sft"] == {"tensorboard"}
    assert needs["grpo"] == {"flash-attn", "vllm"}
    assert needs["distill"] >= {"flash-attn", "vllm"} and needs["merge"] == set()


# ------------------------------------------------------------------------------------- resolution (slow)

GPU = ["-c", str(ROOT / "constraints" / "gpu-cu130.txt")]
CPU = ["-c", str(ROOT / "constraints" / "cpu.txt")]
# extras -> (extra pip arguments, {distribution: expected version}); torch is checked separately.
CASES = {
    "tensorboard": ([], {"tensorboard": None}),
    "bitsandbytes": ([], {"bitsandbytes": None}),
    "deepspeed": ([], {"deepspeed": None}),
    "npu": ([], {"torch-npu": "2.13.0"}),
    "vllm": ([], {"vllm": "0.30.0"}),
    "flash-attn": (["--no-build-isolation"], {"flash-attn": "2.8.3.post2"}),
    "vllm,deepspeed,tensorboard,bitsandbytes": (GPU, {"vllm": "0.30.0", "deepspeed": "0.19.8"}),
    "dev": (CPU, {}),
}


def dry_run(project: Path, extras: str, args: list[str], report: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "FLASH_ATTENTION_SKIP_CUDA_BUILD": "TRUE"}  # flash-attn's metadata without nvcc
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--report",
           str(report), *args, f"{project}[{extras}]"]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1500, env=env)


@pytest.mark.slow
@pytest.mark.parametrize("extras", sorted(CASES))
def test_extra_resolves_next_to_the_pins(extras, tmp_path):
    project = tmp_path / "fastslow"
    project.mkdir()
    shutil.copy(ROOT / "pyproject.toml", project)  # metadata only: resolved without building the sources
    args, expected = CASES[extras]
    done = dry_run(project, extras, args, tmp_path / "report.json")
    assert done.returncode == 0, done.stderr[-3000:]
    got = {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"]
           for i in json.loads((tmp_path / "report.json").read_text())["install"]}  # fmt: skip
    for name, version in pins().items():  # the pins hold
        assert got[name.lower()].split("+")[0] == version, name
    for name, version in expected.items():
        assert name in got and (version is None or got[name] == version), (name, got.get(name))
    if args is GPU:  # PyPI's CUDA 13.0 build, never a local CPU one
        assert got["torch"] == "2.13.0" and "cuda-toolkit" in got
    if args is CPU:
        assert got["torch"] == "2.13.0+cpu" and not any(n.startswith(("nvidia-", "cuda-")) for n in got)
