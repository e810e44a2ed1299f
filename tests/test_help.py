"""Every program (recipes, scripts, benchmarks) answers ``--help`` with a description and exits 0."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]
PROGRAMS = sorted(
    str(p.relative_to(ROOT)) for d in ("recipes", "scripts", "scripts/bench") for p in (ROOT / d).glob("*.py")
)


@pytest.mark.parametrize("program", PROGRAMS)
def test_program_answers_help(program):
    module = load_script(program)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code in (0, None), program
    text = out.getvalue()
    assert text.startswith("usage:") and "--help" in text and len(text.splitlines()) > 3, text[:500]
