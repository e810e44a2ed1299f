"""Shared fixtures: tiny models and data built offline, once per test session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved nano Qwen3-style model with a character tokenizer and the fastslow template."""
    from train.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("tiny-model"), size="nano", seed=0)


@pytest.fixture(scope="session")
def arithmetic_data_dir(tmp_path_factory) -> Path:
    """train.jsonl (slow and fast responses) and test.jsonl for 1-2 digit sums."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from make_arithmetic_data import main

    out = tmp_path_factory.mktemp("arith-data")
    main(["--out", str(out), "--n-train", "64", "--n-test", "16", "--levels", "1", "2", "--modes", "slow", "fast"])
    return out
