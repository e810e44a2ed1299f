"""Local benchmark files in the common formats, turned into fastslow records with a checker that fits them.

Formats (``--format auto`` guesses from the first row's keys):

==========  ==========================================================================================
format      row keys
==========  ==========================================================================================
records     fastslow records: ``prompt``, ``task``, ``answer`` or ``tests`` (see :mod:`train.core.data`)
aime        ``problem`` (or ``question``) and an integer ``answer``; task ``math``
math500     ``problem``, ``answer`` (``solution`` optional), ``level`` (difficulty), ``subject``; task ``math``
gpqa        ``Question``, ``Correct Answer``, ``Incorrect Answer 1..3`` (the GPQA CSV); or ``question``,
            ``choices`` (a list) and ``answer`` (a letter or a 0-based index); task ``choice``
code        ``prompt``/``question``/``problem`` with ``tests`` (fastslow cases), or HumanEval-style ``prompt``,
            ``test`` and ``entry_point``; task ``code``
==========  ==========================================================================================

Multiple-choice options are shuffled with a seed derived from the question, so a file always renders the same
way and the correct letter is not always A. :func:`check` verifies a reply's answer by task: the letter for
``choice``, the sandboxed tests for ``code`` (MARS code reward), math-verify otherwise (exact match first).
"""

from __future__ import annotations

import logging
import random
import re
from pathlib import Path
from typing import Any

from rewards.verify import check as rule_check
from train.core.checks import exact_match
from train.core.data import DataError, read_records, record_id, validate_record

logger = logging.getLogger(__name__)

FORMATS = ("auto", "records", "aime", "math500", "gpqa", "code")
LETTERS = "ABCDEFGHIJ"
BOXED_HINT = "Put the final answer in \\boxed{}."
CHOICE_HINT = "Answer with the letter of the correct option."


def detect_format(row: dict[str, Any]) -> str:
    keys = set(row)
    if "Correct Answer" in keys or "choices" in keys:
        return "gpqa"
    if "entry_point" in keys or ("tests" in keys and "task" not in keys):
        return "code"
    if "prompt" in keys and "task" in keys:
        return "records"
    if "problem" in keys and ("level" in keys or "solution" in keys or "subject" in keys):
        return "math500"
    if ("problem" in keys or "question" in keys) and "answer" in keys:
        return "aime"
    raise DataError(f"cannot tell the benchmark format from the keys {sorted(keys)}; pass --format")


def _text(row: dict[str, Any], keys: tuple[str, ...], where: str) -> str:
    for k in keys:
        if row.get(k) not in (None, ""):
            return str(row[k])
    raise DataError(f"{where}: missing {' or '.join(map(repr, keys))}")


def _level(value: Any) -> float | None:
    if value is None or value == "":
        return None
    m = re.search(r"\d+(\.\d+)?", str(value))
    return float(m.group()) if m else None


def convert_row(row: dict[str, Any], fmt: str, where: str, hint: bool = True) -> dict[str, Any]:
    """One benchmark row as a fastslow record (task ``math``, ``choice`` or ``code``)."""
    if fmt == "records":
        rec = validate_record(row, where)
    elif fmt in ("aime", "math500"):
        problem = _text(row, ("problem", "question", "Problem", "Question"), where)
        answer = _text(row, ("answer", "Answer"), where + ", answer")
        prompt = f"{problem}\n\n{BOXED_HINT}" if hint else problem
        rec = {"prompt": prompt, "task": "math", "answer": answer, "difficulty": _level(row.get("level"))}
    elif fmt == "gpqa":
        rec = _choice_record(row, where, hint)
    elif fmt == "code":
        rec = _code_record(row, where)
    else:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    rec.setdefault("id", str(row.get("id") or row.get("ID") or record_id(rec["prompt"])))
    return rec


def _choice_record(row: dict[str, Any], where: str, hint: bool) -> dict[str, Any]:
    question = _text(row, ("question", "Question"), where)
    if "Correct Answer" in row:
        correct = str(row["Correct Answer"]).strip()
        wrong = [str(row[k]).strip() for k in sorted(row) if k.startswith("Incorrect Answer") and row[k]]
        options = [correct] + wrong
        random.Random(record_id(question)).shuffle(options)
        answer = LETTERS[options.index(correct)]
    else:
        options = [str(o) for o in row["choices"]]
        raw = row.get("answer")
        if isinstance(raw, int) or (isinstance(raw, str) and raw.strip().isdigit()):
            answer = LETTERS[int(raw)]
        elif isinstance(raw, str) and raw.strip().upper() in LETTERS[: len(options)]:
            answer = raw.strip().upper()
        else:
            raise DataError(f"{where}, key 'answer': expected a letter or a 0-based index, got {raw!r}")
    if len(options) > len(LETTERS) or len(options) < 2:
        raise DataError(f"{where}: a multiple-choice question needs 2 to {len(LETTERS)} options")
    body = "\n".join(f"({LETTERS[i]}) {o}" for i, o in enumerate(options))
    prompt = f"{question}\n\n{body}" + (f"\n\n{CHOICE_HINT}" if hint else "")
    return {"prompt": prompt, "task": "choice", "answer": answer, "difficulty": _level(row.get("difficulty"))}


def _code_record(row: dict[str, Any], where: str) -> dict[str, Any]:
    prompt = _text(row, ("prompt", "question", "problem"), where)
    if "entry_point" in row:
        tests = [{"assert": f"{row['test']}\ncheck({row['entry_point']})"}]
    else:
        tests = row.get("tests")
    rec = validate_record({"prompt": prompt, "task": "code", "tests": tests}, where)
    if not rec["tests"]:
        raise DataError(f"{where}, key 'tests': a code problem needs tests")
    return rec


def load_benchmark(path: str | Path, fmt: str = "auto", limit: int | None = None, hint: bool = True) -> list[dict]:
    """The rows of a local benchmark file (JSONL, JSON, CSV, Parquet) as records (see the module docstring)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    rows = read_records(path, validate=False)
    if not rows:
        raise DataError(f"{path}: no rows")
    fmt = detect_format(rows[0]) if fmt == "auto" else fmt
    logger.info("%s: %d rows in the %s format", path, len(rows), fmt)
    out = [convert_row(r, fmt, f"{path}, row {i}", hint) for i, r in enumerate(rows[:limit] if limit else rows, 1)]
    return out


_LETTER_RE = re.compile(
    r"(?:\\boxed\{\s*\(?([A-J])\)?\s*\}|\(([A-J])\)|\b(?:answer|option)\s*(?:is|:)?\s*\(?([A-J])\b|^\s*\(?([A-J])\)?[.)]?\s*$)",
    re.IGNORECASE | re.MULTILINE,
)


def choice_letter(answer: str | None) -> str | None:
    """The option letter a reply chose: ``\\boxed{B}``, ``(B)``, ``answer is B``, or a bare ``B`` (last one wins)."""
    if not answer:
        return None
    found = [next(g for g in m.groups() if g) for m in _LETTER_RE.finditer(answer)]
    return found[-1].upper() if found else None


def check(answer: str | None, record: dict[str, Any]) -> bool:
    """Whether a reply's answer (after the think block) is right for a benchmark record."""
    task = record.get("task")
    if task == "choice":
        return choice_letter(answer) == str(record.get("answer", "")).strip().upper()
    if exact_match(answer, record):
        return True
    if task == "code" or record.get("answer") not in (None, ""):
        return bool(rule_check(answer, record))
    return False
