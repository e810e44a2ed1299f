"""Shared fixtures: tiny models and data built offline, once per test session."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def load_script(relative_path: str):
    """A recipe or script loaded from its file (they are programs, not importable modules of the package)."""
    path = ROOT / relative_path
    name = "_script_" + relative_path.replace("/", "_").removesuffix(".py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def send_json(handler, payload, status: int = 200) -> None:
    """Reply from a test server's ``BaseHTTPRequestHandler``: ``payload`` as JSON (bytes are sent as they are)."""
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


@pytest.fixture(scope="session")
def script():
    """``script("recipes/distill.py")``: the module of a recipe or script file, for its ``main``."""
    return load_script


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved nano Qwen3-style model with a character tokenizer and the fastslow template."""
    from train.core.modes import QWEN3_THINK
    from train.world.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("tiny-model"), size="nano", seed=0, think=QWEN3_THINK)


@pytest.fixture(scope="session")
def arithmetic_data_dir(tmp_path_factory) -> Path:
    """train.jsonl (slow and fast responses) and test.jsonl for 1-2 digit sums."""
    from train.core.data import write_jsonl
    from train.core.modes import QWEN3_THINK
    from train.world.arithmetic import make_dataset

    out = tmp_path_factory.mktemp("arith-data")
    train, test = make_dataset(64, 16, [1, 2], ["slow", "fast"], think=QWEN3_THINK)
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "test.jsonl", test)
    return out
