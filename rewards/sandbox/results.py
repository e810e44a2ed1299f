"""What a sandbox run says, and how outputs are judged: test-case normalisation, output comparison, syntax checks.

Everything here runs in the calling process: expected outputs never enter the sandbox, the harness returns the raw
outputs and :func:`judge_record` compares them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class CaseResult:
    """What happened to one test case."""

    index: int
    kind: str  # "stdio" or "assert"
    status: str  # one of STATUSES
    wall_s: float = 0.0
    cpu_s: float = 0.0
    returncode: int | None = None
    detail: str = ""  # the error's last line, the first differing line, or what limit was hit
    stdout: str = ""  # truncated, for logging
    stderr: str = ""  # the tail, for logging

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclass
class SandboxResult:
    """One solution's outcome over all its cases."""

    cases: list[CaseResult]
    isolation: str = ""
    notes: list[str] = field(default_factory=list)  # e.g. a hidden path that could not be covered

    @property
    def total(self) -> int:
        return len(self.cases)

    @property
    def passed(self) -> int:
        return sum(c.passed for c in self.cases)

    @property
    def fraction(self) -> float:
        return self.passed / self.total if self.cases else 0.0

    @property
    def all_passed(self) -> bool:
        return bool(self.cases) and self.passed == self.total

    @property
    def statuses(self) -> list[str]:
        return [c.status for c in self.cases]

    def to_dict(self, with_output: bool = False) -> dict[str, Any]:
        """A JSON-able summary for logging (outputs left out unless ``with_output``)."""
        cases = [asdict(c) for c in self.cases]
        if not with_output:
            for c in cases:
                c.pop("stdout")
                c.pop("stderr")
        return {
            "passed": self.passed,
            "total": self.total,
            "isolation": self.isolation,
            "notes": self.notes,
            "cases": cases,
        }


def normalize_tests(tests: Any) -> list[dict[str, str]]:
    """``tests`` as a list of ``{"input", "output"}`` / ``{"assert"}`` dicts; a JSON string is decoded.

    Raises ``ValueError`` naming the case that has neither shape.
    """
    if isinstance(tests, str):
        try:
            tests = json.loads(tests)
        except json.JSONDecodeError as exc:
            raise ValueError(f"tests: not valid JSON ({exc.msg} at char {exc.pos})") from None
    if isinstance(tests, dict):  # one case on its own
        tests = [tests]
    if not isinstance(tests, (list, tuple)):
        raise ValueError(f"tests: expected a list of cases, got {type(tests).__name__}")
    out = []
    for j, case in enumerate(tests):
        if isinstance(case, dict) and isinstance(case.get("assert"), str):
            out.append({"assert": case["assert"]})
        elif isinstance(case, dict) and "input" in case and "output" in case:
            out.append({"input": _text(case["input"]), "output": _text(case["output"])})
        else:
            raise ValueError(f"tests: case {j} must be {{'input', 'output'}} or {{'assert'}}, got {case!r:.80}")
    return out


def _text(value: Any) -> str:
    return "" if value is None else value if isinstance(value, str) else str(value)


def output_lines(text: str) -> list[str]:
    """Output as compared: surrounding blank lines dropped, each line stripped."""
    return [line.strip() for line in text.strip().splitlines()]


def compare_output(actual: str, expected: str) -> str | None:
    """None when ``actual`` matches ``expected`` line by line (stripped); otherwise the first difference."""
    got, want = output_lines(actual), output_lines(expected)
    if got == want:
        return None
    for i, (g, w) in enumerate(zip(got, want)):
        if g != w:
            return f"line {i + 1}: expected {w!r:.60}, got {g!r:.60}"
    return f"expected {len(want)} lines, got {len(got)}"


def check_syntax(code: str) -> str | None:
    """None when ``code`` compiles; otherwise the error (compiling executes nothing)."""
    try:
        compile(code, "<solution>", "exec")
    # ValueError: null bytes; RecursionError/MemoryError: absurdly nested or huge code (the compiler's guards)
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError) as exc:
        line = getattr(exc, "lineno", None)
        return f"{type(exc).__name__}: {getattr(exc, 'msg', exc)}" + (f" (line {line})" if line else "")
    return None


def judge_record(index: int, case: dict[str, str], kind: str, rec: dict[str, Any]) -> CaseResult:
    """One case's outcome from the harness's raw record (status, outputs): the output is compared here, outside
    the sandbox, against the expected output the sandbox never saw."""
    result = CaseResult(
        index,
        kind,
        rec["status"],
        wall_s=round(rec["wall_s"], 4),
        cpu_s=round(rec["cpu_s"], 4),
        returncode=rec["returncode"],
        stdout=rec["stdout"][:2000],
        stderr=rec["stderr"][-2000:],
    )
    status = rec["status"]
    if status == "ok" and kind == "stdio":
        diff = compare_output(rec["stdout"], case["output"])
        result.status, result.detail = ("passed", "") if diff is None else ("wrong_answer", diff)
    elif status == "ok":
        result.status = "passed"
    elif status == "assert_failed":
        result.status, result.detail = "wrong_answer", _last_line(rec["stderr"]) or "AssertionError"
    elif status == "error":
        result.detail = _last_line(rec["stderr"]) or f"exit status {rec['returncode']}"
        if "[Errno 27]" in result.detail:  # EFBIG: Python ignores SIGXFSZ, so the file-size limit shows up here
            result.status = "output_limit"
    else:
        result.detail = {
            "timeout": "wall-clock or CPU-time limit",
            "memory": "memory limit",
            "output_limit": "output or file-size limit",
        }.get(status, status)
    return result


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""
