"""The hand-written sample sets in recipes/data: schema, stable unique ids, counts, math answers that math-verify
parses and accepts, and code reference solutions that pass their own tests when actually run."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from math_verify import parse, verify

DATA_DIR = Path(__file__).resolve().parents[1] / "recipes" / "data"
FILES = {"math": DATA_DIR / "math.jsonl", "code": DATA_DIR / "code.jsonl", "general": DATA_DIR / "general.jsonl"}
MIN_COUNTS = {"math": 50, "code": 30, "general": 30}
SOURCE = "fastslow-handwritten"
COMMON_KEYS = {"id", "task", "prompt", "answer", "difficulty", "source"}
TIMEOUT_S = 10.0


def _load(task: str) -> list[dict[str, Any]]:
    rows = []
    path = FILES[task]
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        assert line.strip(), f"{path.name}:{line_no}: blank line"
        row = json.loads(line)
        assert isinstance(row, dict), f"{path.name}:{line_no}: not a JSON object"
        rows.append(row)
    return rows


RECORDS = {task: _load(task) for task in FILES}
MATH, CODE, GENERAL = RECORDS["math"], RECORDS["code"], RECORDS["general"]


# --- a minimal local test harness (the real sandbox lives elsewhere; this only proves the data is consistent) ---


def _normalise(text: str) -> str:
    """stdout comparison rule: trailing whitespace on each line and trailing blank lines don't matter."""
    return "\n".join(line.rstrip() for line in text.rstrip().splitlines())


def _run(source: str, stdin: str = "", timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess:
    # -I: isolated mode, so neither the repo nor user site-packages leak into the program under test
    return subprocess.run(
        [sys.executable, "-I", "-c", source], input=stdin, capture_output=True, text=True, timeout=timeout
    )


def failures(solution: str, tests: list[dict[str, str]], timeout: float = TIMEOUT_S) -> list[str]:
    """Why ``solution`` fails ``tests`` (empty when it passes all of them)."""
    problems = []
    asserts = [case["assert"] for case in tests if "assert" in case]
    if asserts:
        try:
            proc = _run(solution + "\n" + "\n".join(asserts) + "\n", timeout=timeout)
        except subprocess.TimeoutExpired:
            return [f"asserts: timed out after {timeout}s"]
        if proc.returncode != 0:
            problems.append(f"asserts: exit {proc.returncode}: {proc.stderr.strip()[-300:]}")
    for j, case in enumerate(c for c in tests if "input" in c):
        try:
            proc = _run(solution, case["input"], timeout=timeout)
        except subprocess.TimeoutExpired:
            problems.append(f"case {j}: timed out after {timeout}s")
            continue
        if proc.returncode != 0:
            problems.append(f"case {j}: exit {proc.returncode}: {proc.stderr.strip()[-300:]}")
        elif _normalise(proc.stdout) != _normalise(case["output"]):
            problems.append(f"case {j}: expected {case['output']!r}, got {proc.stdout!r}")
    return problems


# --- schema ---------------------------------------------------------------------------------------------------


def test_counts():
    for task, minimum in MIN_COUNTS.items():
        assert len(RECORDS[task]) >= minimum, f"{task}: {len(RECORDS[task])} records, want >= {minimum}"


def test_ids_unique_stable_and_sequential():
    all_ids = [r["id"] for rows in RECORDS.values() for r in rows]
    dupes = [i for i, n in Counter(all_ids).items() if n > 1]
    assert not dupes, f"duplicate ids: {dupes}"
    for task, rows in RECORDS.items():
        # ids are positional and never reused: appending keeps every existing id valid
        assert [r["id"] for r in rows] == [f"{task}-{i:04d}" for i in range(1, len(rows) + 1)]


@pytest.mark.parametrize("task", list(FILES))
def test_fields_typed(task: str):
    extra = {"tests", "solution"} if task == "code" else set()
    for row in RECORDS[task]:
        rid = row.get("id")
        assert set(row) == COMMON_KEYS | extra, f"{FILES[task].name} {rid}: keys {sorted(row)}"
        assert row["task"] == task, rid
        assert isinstance(row["prompt"], str) and row["prompt"].strip(), rid
        assert isinstance(row["answer"], str) and row["answer"].strip(), rid
        assert type(row["difficulty"]) is int and 1 <= row["difficulty"] <= 5, rid
        assert row["source"] == SOURCE, rid


def test_prompts_unique():
    prompts = [r["prompt"] for rows in RECORDS.values() for r in rows]
    assert len(prompts) == len(set(prompts))


def test_difficulty_spread():
    assert set(Counter(r["difficulty"] for r in MATH)) == {1, 2, 3, 4, 5}
    assert len({r["difficulty"] for r in CODE}) >= 3
    assert len({r["difficulty"] for r in GENERAL}) >= 3


def test_code_tests_shape():
    kinds = Counter()
    for row in CODE:
        rid = row["id"]
        assert isinstance(row["solution"], str) and row["solution"].strip(), rid
        tests = row["tests"]
        assert isinstance(tests, list) and len(tests) >= 2, f"{rid}: needs at least two test cases"
        shapes = {frozenset(case) for case in tests}
        assert shapes in ({frozenset({"input", "output"})}, {frozenset({"assert"})}), f"{rid}: mixed/odd cases"
        for case in tests:
            assert all(isinstance(v, str) for v in case.values()), rid
            if "assert" in case:
                assert case["assert"].startswith("assert "), f"{rid}: {case['assert']!r}"
        kinds["io" if "input" in tests[0] else "assert"] += 1
    # roughly half stdin/stdout programs, half function problems
    assert kinds["io"] >= 12 and kinds["assert"] >= 12, kinds


def test_records_pass_the_shared_loader():
    data = pytest.importorskip("train.core.data")
    for task, path in FILES.items():
        for index, row in enumerate(RECORDS[task], 1):
            rec = data.validate_record(row, str(path), index)
            assert (rec["id"], rec["task"]) == (row["id"], task)
            if task == "code":
                assert rec["tests"] == row["tests"]


# --- content ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("row", MATH, ids=lambda r: r["id"])
def test_math_answer_parses_and_verifies_itself(row: dict[str, Any]):
    gold = parse("$" + row["answer"] + "$")
    assert gold, f"{row['id']}: math-verify could not parse {row['answer']!r}"
    assert verify(gold, parse("$" + row["answer"] + "$")), row["id"]


def test_math_answers_are_discriminative():
    # a verifier that accepted anything would pass the self-check above; a few known-wrong pairs must fail
    by_id = {r["id"]: r for r in MATH}
    wrong = {"math-0001": "86", "math-0008": "\\frac{3}{5}", "math-0027": "3\\sqrt{3}"}
    for rid, bad in wrong.items():
        gold = parse("$" + by_id[rid]["answer"] + "$")
        assert not verify(gold, parse("$" + bad + "$")), f"{rid}: {bad} accepted for {by_id[rid]['answer']}"


@pytest.mark.parametrize("row", CODE, ids=lambda r: r["id"])
def test_code_solution_passes_its_tests(row: dict[str, Any]):
    assert failures(row["solution"], row["tests"]) == []


def test_harness_rejects_wrong_and_hanging_solutions():
    io = next(r for r in CODE if "input" in r["tests"][0])
    fn = next(r for r in CODE if "assert" in r["tests"][0])
    assert failures("print('nope')", io["tests"])  # wrong output
    assert failures("raise SystemExit(3)", io["tests"])  # crash
    assert failures("pass", fn["tests"])  # function never defined
    hang = failures("while True: pass", io["tests"][:1], timeout=1.0)
    assert hang == ["case 0: timed out after 1.0s"]


def test_general_answers_are_prose():
    for row in GENERAL:
        assert row["prompt"].rstrip().endswith(("?", ".")), row["id"]
        assert re.search(r"[A-Za-z]", row["answer"]), row["id"]


def test_code_solutions_pass_in_the_real_sandbox():
    # the same check through the project's sandbox (rewards/sandbox.py), so the data and the code reward agree
    sandbox = pytest.importorskip("rewards.sandbox")
    failed = [r["id"] for r in CODE if not sandbox.run_tests(r["solution"], r["tests"]).all_passed]
    assert failed == []
