"""Benchmark sets in the common formats, turned into fastslow records with a checker that fits them.

The conversion is :mod:`train.core.sources`' presets (one place for every schema); this module adds the
benchmark view: ``--format auto`` guesses from the first row's keys, and multiple-choice records get task
``choice`` (scored by :func:`check` on the option letter). Formats:

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
...         any other preset of :data:`train.core.sources.PRESETS` by name (``gsm8k``, ``apps``, ``taco``,
            ``livecodebench``, ``humaneval``, ``openr1-math``, ``numinamath``, ``multiple-choice``)
==========  ==========================================================================================

Multiple-choice options are shuffled with a seed derived from the question, so a file always renders the same
way and the correct letter is not always A. :func:`check` verifies a reply's answer by task: the letter for
``choice``, the sandboxed tests for ``code`` (MARS code reward), math-verify otherwise (exact match first).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from rewards.verify import check as rule_check
from train.core.checks import exact_match
from train.core.data import DataError, validate_record
from train.core.sources import (
    BOXED_HINT,
    CHOICE_HINT,
    LETTERS,
    PRESETS,
    check_columns,
    detect_preset,
    map_columns,
    parse_column_mapping,
    read_source,
)

logger = logging.getLogger(__name__)

# The hints and letters are the presets'; kept here under their old names for the evaluation script and tests.
__all__ = [
    "BOXED_HINT",
    "CHOICE_HINT",
    "FORMATS",
    "LETTERS",
    "DataError",
    "check",
    "choice_letter",
    "convert_row",
    "detect_format",
    "load_benchmark",
    "load_benchmark_from",
]

#: The benchmark formats: the historical names first, then every other preset.
FORMATS = ("auto", "records", "aime", "math500", "gpqa", "code") + tuple(
    p for p in PRESETS if p not in ("records", "aime", "math500", "gpqa", "code")
)
#: Presets read as a benchmark format: a format's name, or one of two shapes the format accepts.
_CHOICE_PRESETS = ("gpqa", "multiple-choice")


def detect_format(row: dict[str, Any]) -> str:
    """The benchmark format of a row: a preset name, with GPQA-like rows as ``gpqa`` and HumanEval as ``code``."""
    try:
        preset = detect_preset(row, row)
    except DataError:
        raise DataError(f"cannot tell the benchmark format from the keys {sorted(row)}; pass --format") from None
    return {"multiple-choice": "gpqa", "humaneval": "code"}.get(preset, preset)


def _preset(fmt: str, keys: Any) -> str:
    """The preset reading a row of benchmark format ``fmt`` (``gpqa`` and ``code`` take two shapes each)."""
    if fmt == "gpqa":
        return "gpqa" if "Correct Answer" in keys else "multiple-choice"
    if fmt == "code":
        return "humaneval" if "entry_point" in keys else "code"
    if fmt not in PRESETS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    return fmt


def convert_row(row: dict[str, Any], fmt: str, where: str, hint: bool = True) -> dict[str, Any]:
    """One benchmark row as a validated fastslow record (task ``math``, ``choice``, ``code``, ...)."""
    preset = _preset(fmt, row)
    rec = validate_record(PRESETS[preset].convert(row, where, hint), where)
    if preset in _CHOICE_PRESETS:
        rec["task"] = "choice"
    return rec


def load_benchmark(
    path: str | Path,
    fmt: str = "auto",
    limit: int | None = None,
    hint: bool = True,
    *,
    config: str | None = None,
    split: str = "train",
    column_mapping: dict[str, str] | None = None,
) -> list[dict]:
    """The rows of a benchmark as records (see the module docstring).

    ``path`` is a local file (JSONL, JSON, CSV, Parquet), a folder or a hub id (``config``/``split`` choose its
    subset and split; see :func:`train.core.sources.read_source`); ``column_mapping`` ``{field: column}`` reads a
    field from another column.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    columns, rows, source = read_source(str(path), config, split)
    rows = [(i, map_columns(r, column_mapping)) for i, r in rows]
    if not rows:
        raise DataError(f"{source}: no rows")
    fmt = detect_format(rows[0][1]) if fmt == "auto" else fmt
    check_columns(columns, column_mapping, PRESETS[_preset(fmt, rows[0][1])], source)
    logger.info("%s: %d rows in the %s format", source, len(rows), fmt)
    return [convert_row(r, fmt, f"{source}, row {i}", hint) for i, r in (rows[:limit] if limit else rows)]


def load_benchmark_from(args: Any, limit: int | None = None, hint: bool = True) -> list[dict]:
    """:func:`load_benchmark` on what :func:`train.core.sources.add_source_arguments` (or a
    :class:`~train.core.sources.DatasetArguments`) names: the preset is the format (default ``auto``), and
    multiple-choice records get task ``choice`` (scored on the letter), unlike :func:`~train.core.sources.load_source`.
    """
    return load_benchmark(
        args.dataset_name,
        args.dataset_preset or "auto",
        limit,
        hint=hint and getattr(args, "dataset_hint", True),
        config=args.dataset_config,
        split=args.dataset_split or "train",
        column_mapping=parse_column_mapping(args.column_mapping),
    )


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
