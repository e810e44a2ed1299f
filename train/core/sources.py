"""Real data sets in: a hub id or a local path, read through ``datasets``, mapped onto the record schema.

:func:`load_source` reads a data set (a local JSONL/JSON/CSV/Parquet file, a folder ``datasets`` can load, or a
hub id) and turns each row into a fastslow record (:mod:`train.core.data`) with a named **preset** for its schema
and an optional ``column_mapping`` ``{field: column}``: the preset's field (or, with no preset, the record key) is
read from the named column instead. A mapping or a preset naming a column the data lacks is an error naming the
column and the data. Presets (docs/data.md has the full table):

=================  ===============================  =========================================================
preset             written for                      reads
=================  ===============================  =========================================================
``records``        fastslow's own schema            ``prompt``, ``task`` (the default: no conversion)
``openr1-math``    open-r1/OpenR1-Math-220k         ``problem``, ``answer``; ``response``: the shortest
                                                    generation math-verify marked correct, else ``solution``
``numinamath``     AI-MO/NuminaMath-CoT, -1.5       ``problem``, ``solution`` (the response); ``answer`` or the
                                                    solution's last ``\\boxed{}``
``gsm8k``          openai/gsm8k                     ``question``, ``answer`` (the reasoning, then ``#### n``)
``math500``        HuggingFaceH4/MATH-500           ``problem``, ``answer``, ``solution``, ``level``
``aime``           AI-MO/aimo-validation-aime, ...  ``problem`` (or ``Problem``/``question``), ``answer``
``apps``           codeparrot/apps                  ``question``, ``input_output`` JSON, ``solutions``
``taco``           BAAI/TACO                        ``question``, ``input_output`` JSON, ``solutions``
``livecodebench``  livecodebench/code_generation_*  ``question_content``, ``public_test_cases`` (and private)
``humaneval``      openai/openai_humaneval          ``prompt``, ``test``, ``entry_point``
``code``           any code set with fastslow tests ``prompt`` (or ``question``/``problem``), ``tests``
``gpqa``           Idavidrein/gpqa                  ``Question``, ``Correct Answer``, ``Incorrect Answer 1..3``
``multiple-choice``  MMLU-style                     ``question``, ``choices``, ``answer`` (letter or index)
=================  ===============================  =========================================================

Code presets write ``tests`` the code reward runs (:mod:`rewards.code`): stdin/stdout cases, and for call-based
problems (APPS/TACO ``fn_name``, LiveCodeBench ``functional``) an ``assert`` case that calls the function (a
``Solution`` method when the solution defines that class). Multiple-choice options are shuffled with a seed derived
from the question (the same prompt every time), and the answer is the option letter (task ``general``: the
default MARS router's short-answer rule checks it; :mod:`train.eval.benchmarks` scores it as ``choice``).
With ``hint`` (the default), prompts end with the answer format the rewards read (``\\boxed{}``, the letter, a
``python`` code block).
"""

from __future__ import annotations

import argparse
import base64
import io
import itertools
import json
import logging
import os
import pickle
import random
import re
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets

from train.core.data import MAX_RECORD_BYTES, DataError, check_ids, check_size, read_rows, record_id, validate_record

logger = logging.getLogger(__name__)

LETTERS = "ABCDEFGHIJ"
BOXED_HINT = "Put the final answer in \\boxed{}."
CHOICE_HINT = "Answer with the letter of the correct option."
CODE_HINT = "Reply with the complete Python solution, imports included, in one ```python code block."
STDIO_HINT = "The program reads standard input and writes standard output."
#: Answer values of math sets that are no answer (proofs, unsolved).
NO_ANSWER = ("", "proof", "notfound", "none")
_LOCAL_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")

Row = dict[str, Any]


# ------------------------------------------------------------------------------------------------ arguments


@dataclass
class DatasetArguments:
    """A data set by name (hub id or local path), its config and split, a preset for its schema, a column mapping.

    A mixin: recipe configs inherit it, and :func:`load_source_from` loads what it names.
    """

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "A data set read through `datasets`: a hub id (e.g. open-r1/OpenR1-Math-220k), a local file "
            "(JSONL, JSON, CSV, Parquet) or a folder; converted with dataset_preset and column_mapping."
        },
    )
    dataset_config: str | None = field(
        default=None, metadata={"help": "The hub data set's config (subset) name, e.g. `main` for openai/gsm8k."}
    )
    dataset_split: str = field(
        default="train", metadata={"help": "The split to read (`train`, `test`, or a slice such as `train[:1000]`)."}
    )
    column_mapping: dict[str, str] | str | None = field(
        default=None,
        metadata={
            "help": "Read a field from another column: {field: column} (YAML mapping, JSON, or field=column,"
            "field=column); the fields are the preset's (or the record keys when there is no preset)."
        },
    )
    dataset_preset: str | None = field(
        default=None,
        metadata={
            "help": "The data set's schema: records (fastslow's), openr1-math, numinamath, gsm8k, math500, aime, "
            "apps, taco, livecodebench, humaneval, code, gpqa, multiple-choice (docs/data.md), or auto (guessed from "
            "the columns). Default: records."
        },
    )
    dataset_eval_split: str | None = field(
        default=None, metadata={"help": "A held-out split of dataset_name (e.g. `test`) read as the eval records."}
    )
    dataset_hint: bool = field(
        default=True,
        metadata={
            "help": "Append the preset's answer format to prompts (\\boxed{} for math, the option letter, a python "
            "code block), so the rewards can read the reply."
        },
    )

    def __post_init__(self) -> None:
        self.column_mapping = parse_column_mapping(self.column_mapping)
        if self.dataset_preset not in (None, "auto"):
            get_preset(self.dataset_preset)
        if (self.dataset_preset or self.column_mapping or self.dataset_eval_split) and not self.dataset_name:
            raise DataError("dataset_preset, column_mapping and dataset_eval_split need dataset_name")


def parse_column_mapping(value: dict[str, str] | str | None) -> dict[str, str] | None:
    """A column mapping from a mapping, a JSON object or ``field=column,field=column`` text (None when empty)."""
    if value is None or value == "" or value == {}:
        return None
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DataError(f"column_mapping: not a valid JSON object ({exc.msg}): {text!r:.80}") from None
        else:
            pairs = [p.split("=", 1) for p in text.split(",") if p.strip()]
            if any(len(p) != 2 or not p[0].strip() or not p[1].strip() for p in pairs):
                raise DataError(f"column_mapping: expected field=column,field=column or a JSON object, got {text!r}")
            value = {k.strip(): v.strip() for k, v in pairs}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise DataError(f"column_mapping: expected a mapping of field names to column names, got {value!r:.80}")
    return dict(value) or None


def _mapping_arg(text: str) -> dict[str, str] | None:
    try:
        return parse_column_mapping(text)
    except DataError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--dataset-name --dataset-config --dataset-split --column-mapping --dataset-preset`` (and
    ``--no-dataset-hint``) to a script; :func:`load_source_from` reads them."""
    group = parser.add_argument_group("data set (a hub id or a local path, read through `datasets`)")
    group.add_argument(
        "--dataset-name", dest="dataset_name", help="hub id, local file (jsonl/json/csv/parquet) or folder"
    )
    group.add_argument("--dataset-config", dest="dataset_config", help="the hub data set's config (subset)")
    group.add_argument("--dataset-split", dest="dataset_split", default="train", help="split to read (default: train)")
    group.add_argument(
        "--column-mapping",
        dest="column_mapping",
        type=_mapping_arg,
        help='read a field from another column: JSON {"field": "column"} or field=column,field=column',
    )
    group.add_argument(
        "--dataset-preset",
        dest="dataset_preset",
        choices=[*preset_names(), "auto"],
        help="the data set's schema (docs/data.md; auto: guessed from its columns)",
    )
    group.add_argument(
        "--no-dataset-hint",
        dest="dataset_hint",
        action="store_false",
        help="do not append the preset's answer format to prompts",
    )


def load_source_from(args: Any, split: str | None = None, limit: int | None = None, **kwargs: Any) -> list[dict]:
    """:func:`load_source` on what a :class:`DatasetArguments` (or :func:`add_source_arguments`' namespace) names.

    ``split`` overrides ``dataset_split`` (e.g. ``args.dataset_eval_split``); ``kwargs`` go to :func:`load_source`.
    """
    if not getattr(args, "dataset_name", None):
        raise DataError("dataset_name: give a hub id or a local path")
    return load_source(
        args.dataset_name,
        config=getattr(args, "dataset_config", None),
        split=split or getattr(args, "dataset_split", None) or "train",
        column_mapping=getattr(args, "column_mapping", None),
        preset=getattr(args, "dataset_preset", None),
        limit=limit,
        hint=getattr(args, "dataset_hint", True),
        **kwargs,
    )


# -------------------------------------------------------------------------------------------- row helpers


def _value(row: Row, names: Iterable[str]) -> Any:
    """The first non-empty value among ``names`` (None when all are missing or empty)."""
    for name in names:
        value = row.get(name)
        if value is not None and value != "":
            return value
    return None


def _need(row: Row, names: tuple[str, ...], where: str) -> Any:
    value = _value(row, names)
    if value is None:
        raise DataError(f"{where}, key {names[0]!r}: missing or empty")
    return value


def _json(value: Any, where: str) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: not valid JSON ({exc.msg})") from None


def _answer(value: Any) -> str | None:
    text = None if value is None else str(value).strip()
    return None if text is None or text.lower() in NO_ANSWER else text


def _level(value: Any, levels: dict[str, float] | None = None) -> float | None:
    """A difficulty: a named level from ``levels`` (case-insensitive), else the first number in the value."""
    if value is None or value == "":
        return None
    if levels is not None:
        return levels.get(str(value).strip().lower())
    m = re.search(r"\d+(\.\d+)?", str(value))
    return float(m.group()) if m else None


def last_boxed(text: str | None) -> str | None:
    """The content of the last ``\\boxed{...}`` of ``text`` (braces balanced), or None."""
    if not text:
        return None
    start = text.rfind("\\boxed{")
    if start == -1:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1 : j].strip() or None
    return None


def _with_hint(text: str, hint: str | None) -> str:
    return f"{text.rstrip()}\n\n{hint}" if hint else text


def _code_block(code: str) -> str:
    return f"```python\n{code.strip(chr(10))}\n```"


# ------------------------------------------------------------------------------------------------- math


def math_record(row: Row, where: str, hint: bool) -> Row:
    """A math problem (``problem``/``Problem``/``question``) with its ``answer``; the ``solution`` is the response."""
    problem = str(_need(row, ("problem", "Problem", "question", "Question"), where))
    return {
        "prompt": _with_hint(problem, BOXED_HINT if hint else None),
        "task": "math",
        "answer": _answer(_value(row, ("answer", "Answer"))),
        "response": _value(row, ("solution", "Solution")),
        "difficulty": _level(row.get("level")),
        "source": row.get("source"),
        "id": _value(row, ("unique_id", "uuid", "id", "ID")),
    }


def verified_generation(row: Row) -> str | None:
    """OpenR1-Math: the shortest generation that math-verify marked correct and whose reasoning is complete (the
    method's rule for a teacher pool: of the verified replies, the shortest is kept; the first on a tie)."""
    generations = row.get("generations") or []
    correct = row.get("correctness_math_verify") or []
    complete = row.get("is_reasoning_complete") or [True] * len(generations)
    kept = [str(text) for text, ok, done in zip(generations, correct, complete) if ok and done and text]
    return min(kept, key=len) if kept else None


def openr1_record(row: Row, where: str, hint: bool) -> Row:
    rec = math_record(row, where, hint)
    rec["response"] = verified_generation(row) or row.get("solution") or None
    return rec


def numina_record(row: Row, where: str, hint: bool) -> Row:
    rec = math_record(row, where, hint)
    rec["answer"] = rec["answer"] or _answer(last_boxed(row.get("solution")))
    return rec


def gsm8k_record(row: Row, where: str, hint: bool) -> Row:
    """GSM8K: the ``answer`` column is the worked reasoning, then ``#### <final answer>``."""
    question = str(_need(row, ("question",), where))
    full = str(_need(row, ("answer",), where))
    if "####" not in full:
        raise DataError(f"{where}, key 'answer': no '####' before the final answer")
    reasoning, final = full.rsplit("####", 1)
    final = final.strip()
    final = final.replace(",", "") if re.fullmatch(r"-?[\d,]+(\.\d+)?", final) else final
    reasoning = re.sub(r"<<[^<>]*>>", "", reasoning).strip()  # the calculator annotations (<<48/2=24>>)
    return {
        "prompt": _with_hint(question, BOXED_HINT if hint else None),
        "task": "math",
        "answer": final,
        "response": f"{reasoning}\n\nThe answer is \\boxed{{{final}}}.",
    }


# ------------------------------------------------------------------------------------------------- code


def call_assert(fn: str, args: list[Any], expected: Any, unwrap: bool = True) -> str:
    """A test case calling ``fn(*args)`` (a ``Solution`` method when the solution defines that class).

    APPS/TACO store a call's expected value wrapped in a list; ``unwrap`` also accepts the unwrapped value, as
    their own checker does. A returned tuple compares as a list (JSON has no tuples).
    """
    if not fn.isidentifier():
        raise DataError(f"function name {fn!r} is not a Python identifier")
    check = "_out == _exp"
    if unwrap:
        check += " or (isinstance(_exp, list) and len(_exp) == 1 and _out == _exp[0])"
    return (
        f"_fn = Solution().{fn} if 'Solution' in globals() else {fn}\n"
        f"_out = _fn(*{args!r})\n"
        "_out = list(_out) if isinstance(_out, tuple) else _out\n"
        f"_exp = {expected!r}\n"
        f"assert {check}, (_out, _exp)"
    )


def _io_text(value: Any) -> str:
    return "\n".join(map(str, value)) if isinstance(value, list) else str(value)


def io_tests(spec: Any, where: str) -> list[dict[str, str]]:
    """APPS/TACO ``input_output``: ``{"inputs": [...], "outputs": [...], "fn_name"?}`` as fastslow test cases."""
    spec = _json(spec, where)
    inputs = spec.get("inputs") if isinstance(spec, dict) else None
    outputs = spec.get("outputs") if isinstance(spec, dict) else None
    if not isinstance(inputs, list) or not isinstance(outputs, list) or len(inputs) != len(outputs) or not inputs:
        raise DataError(f"{where}: expected {{'inputs': [...], 'outputs': [...]}} of equal, non-zero lengths")
    fn = spec.get("fn_name")
    if fn:
        try:
            return [
                {"assert": call_assert(str(fn), a if isinstance(a, list) else [a], o)} for a, o in zip(inputs, outputs)
            ]
        except DataError as exc:
            raise DataError(f"{where}: {exc}") from None
    return [{"input": _io_text(i), "output": _io_text(o)} for i, o in zip(inputs, outputs)]


def _code_prompt(question: str, starter: str | None, fn: str | None, hint: bool) -> str:
    text = question.rstrip()
    if starter and starter.strip():
        text += f"\n\nStart from this code:\n{_code_block(starter)}"
    if hint:
        text += "\n\n" + (f"Define `{fn}` as the starter code does. " if fn else f"{STDIO_HINT} ") + CODE_HINT
    return text


def _first_solution(value: Any, where: str) -> str | None:
    solutions = _json(value, where) if value not in (None, "") else None
    if isinstance(solutions, list) and solutions and isinstance(solutions[0], str):
        return _code_block(solutions[0])
    return None


APPS_LEVELS = {"introductory": 1.0, "interview": 2.0, "competition": 3.0}
TACO_LEVELS = {"easy": 1.0, "medium": 2.0, "medium_hard": 3.0, "hard": 4.0, "very_hard": 5.0}
LCB_LEVELS = {"easy": 1.0, "medium": 2.0, "hard": 3.0}


def _io_code_record(row: Row, where: str, hint: bool, levels: dict[str, float]) -> Row:
    question = str(_need(row, ("question",), where))
    spec = _json(_need(row, ("input_output",), where), f"{where}, key 'input_output'")
    tests = io_tests(spec, f"{where}, key 'input_output'")
    return {
        "prompt": _code_prompt(question, row.get("starter_code"), spec.get("fn_name"), hint),
        "task": "code",
        "tests": tests,
        "response": _first_solution(row.get("solutions"), f"{where}, key 'solutions'"),
        "difficulty": _level(row.get("difficulty"), levels),
        "source": row.get("source"),
        "id": _value(row, ("problem_id", "id", "name")),
    }


def apps_record(row: Row, where: str, hint: bool) -> Row:
    return _io_code_record(row, where, hint, APPS_LEVELS)


def taco_record(row: Row, where: str, hint: bool) -> Row:
    return _io_code_record(row, where, hint, TACO_LEVELS)


class _DataOnly(pickle.Unpickler):
    """Unpickles plain data only: no class or function is ever looked up, so nothing runs."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing {module}.{name}: test cases are plain data")


def lcb_cases(value: Any, where: str) -> list[dict[str, Any]]:
    """LiveCodeBench test cases: a JSON list, or (private cases) base64 of zlib of a pickled JSON string."""
    if value is None or value == "" or value == []:
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            try:
                value = json.loads(_DataOnly(io.BytesIO(zlib.decompress(base64.b64decode(value)))).load())
            except Exception as exc:  # any of base64, zlib, pickle or JSON failing means the same thing here
                raise DataError(f"{where}: neither JSON nor LiveCodeBench's compressed cases ({exc})") from None
    if not isinstance(value, list) or not all(isinstance(c, dict) and "input" in c and "output" in c for c in value):
        raise DataError(f"{where}: expected a list of {{'input', 'output', 'testtype'}} cases")
    return value


def lcb_tests(cases: list[dict[str, Any]], fn: str | None, where: str) -> list[dict[str, str]]:
    """``stdin`` cases as stdin/stdout tests; ``functional`` ones (one JSON argument per input line) as calls."""
    tests = []
    for j, case in enumerate(cases):
        if case.get("testtype") != "functional":
            tests.append({"input": str(case["input"]), "output": str(case["output"])})
            continue
        if not fn:
            raise DataError(f"{where}: case {j} is functional but the metadata names no func_name")
        try:
            args = [json.loads(line) for line in str(case["input"]).split("\n") if line.strip()]
            tests.append({"assert": call_assert(fn, args, json.loads(case["output"]), unwrap=False)})
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: case {j} is not one JSON value per line ({exc.msg})") from None
    return tests


def lcb_record(row: Row, where: str, hint: bool) -> Row:
    question = str(_need(row, ("question_content", "question"), where))
    cases = lcb_cases(row.get("public_test_cases"), f"{where}, key 'public_test_cases'")
    cases += lcb_cases(row.get("private_test_cases"), f"{where}, key 'private_test_cases'")
    meta = _json(row.get("metadata") or "{}", f"{where}, key 'metadata'")
    fn = meta.get("func_name") if isinstance(meta, dict) else None
    return {
        "prompt": _code_prompt(question, row.get("starter_code"), fn, hint),
        "task": "code",
        "tests": lcb_tests(cases, fn, where),
        "difficulty": _level(row.get("difficulty"), LCB_LEVELS),
        "source": row.get("platform"),
        "id": _value(row, ("question_id", "id")),
    }


def humaneval_record(row: Row, where: str, hint: bool) -> Row:
    """HumanEval: complete the function ``prompt``; the ``test`` defines ``check``, called on ``entry_point``."""
    prompt = str(_need(row, ("prompt",), where))
    test, entry = _need(row, ("test",), where), _need(row, ("entry_point",), where)
    text = f"Complete this Python function:\n{_code_block(prompt)}\n\n{CODE_HINT}" if hint else prompt
    solution = row.get("canonical_solution")
    return {
        "prompt": text,
        "task": "code",
        "tests": [{"assert": f"{test}\ncheck({entry})"}],
        "response": _code_block(prompt + solution) if solution else None,
        "id": _value(row, ("task_id", "id")),
    }


def code_record(row: Row, where: str, hint: bool) -> Row:
    """A code problem (``prompt``/``question``/``problem``) with fastslow ``tests`` or LiveCodeBench-style cases."""
    prompt = str(_need(row, ("prompt", "question", "problem"), where))
    tests = _json(row.get("tests"), f"{where}, key 'tests'")
    if isinstance(tests, list) and any(isinstance(c, dict) and "testtype" in c for c in tests):
        tests = lcb_tests(tests, row.get("func_name"), where)
    if not tests:
        raise DataError(f"{where}, key 'tests': a code problem needs tests")
    return {
        "prompt": _with_hint(prompt, CODE_HINT if hint else None),
        "task": "code",
        "tests": tests,
        "response": row.get("response"),
        "difficulty": _level(row.get("difficulty")),
        "id": row.get("id"),
    }


# ------------------------------------------------------------------------------------------- multiple choice


def _choice(question: str, options: list[str], answer: str, hint: bool) -> Row:
    if not 2 <= len(options) <= len(LETTERS):
        raise DataError(f"a multiple-choice question needs 2 to {len(LETTERS)} options, got {len(options)}")
    body = "\n".join(f"({LETTERS[i]}) {o}" for i, o in enumerate(options))
    return {
        "prompt": _with_hint(f"{question}\n\n{body}", CHOICE_HINT if hint else None),
        "task": "general",
        "answer": answer,
    }


def gpqa_record(row: Row, where: str, hint: bool) -> Row:
    """GPQA: the correct answer and the incorrect ones, shuffled by a seed derived from the question."""
    question = str(_need(row, ("Question", "question"), where))
    correct = str(_need(row, ("Correct Answer",), where)).strip()
    wrong = [str(row[k]).strip() for k in sorted(row) if k.startswith("Incorrect Answer") and row[k] not in (None, "")]
    options = [correct] + wrong
    random.Random(record_id(question)).shuffle(options)
    try:
        rec = _choice(question, options, LETTERS[options.index(correct)], hint)
    except DataError as exc:
        raise DataError(f"{where}: {exc}") from None
    explanation = row.get("Explanation")
    rec["response"] = f"{explanation}\n\nThe answer is ({rec['answer']})." if explanation else None
    rec["id"] = _value(row, ("Record ID", "id"))
    return rec


def choice_record(row: Row, where: str, hint: bool) -> Row:
    """MMLU-style: ``question``, a list of ``choices`` and the ``answer`` as a letter or a 0-based index."""
    question = str(_need(row, ("question", "Question"), where))
    options = _json(_need(row, ("choices",), where), f"{where}, key 'choices'")
    if not isinstance(options, list):
        raise DataError(f"{where}, key 'choices': expected a list of options")
    options = [str(o) for o in options]
    raw = row.get("answer")
    if isinstance(raw, int) or (isinstance(raw, str) and raw.strip().isdigit()):
        if not 0 <= int(raw) < len(options):
            raise DataError(f"{where}, key 'answer': index {raw} is not one of the {len(options)} options")
        answer = LETTERS[int(raw)]
    elif isinstance(raw, str) and raw.strip().upper() in LETTERS[: len(options)]:
        answer = raw.strip().upper()
    else:
        raise DataError(f"{where}, key 'answer': expected a letter or a 0-based index, got {raw!r}")
    try:
        rec = _choice(question, options, answer, hint)
    except DataError as exc:
        raise DataError(f"{where}: {exc}") from None
    rec["id"] = row.get("id")
    return rec


# ---------------------------------------------------------------------------------------------------- presets


@dataclass(frozen=True)
class Preset:
    """A data set schema: the columns it needs and how one row becomes a record (validated afterwards)."""

    name: str
    dataset: str  # the data set it is written for (a hub id or a description)
    columns: tuple[tuple[str, ...], ...]  # required columns; each entry lists the names accepted for one field
    convert: Callable[[Row, str, bool], Row]  # (row, "file, row i", hint) -> record
    task: str


def _records(row: Row, where: str, hint: bool) -> Row:
    return row


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("records", "fastslow's schema (train/core/data.py)", (("prompt",), ("task",)), _records, "any"),
        Preset("openr1-math", "open-r1/OpenR1-Math-220k", (("problem",), ("answer",)), openr1_record, "math"),
        Preset(
            "numinamath",
            "AI-MO/NuminaMath-CoT, AI-MO/NuminaMath-1.5",
            (("problem",), ("solution",)),
            numina_record,
            "math",
        ),
        Preset("gsm8k", "openai/gsm8k (config main)", (("question",), ("answer",)), gsm8k_record, "math"),
        Preset("math500", "HuggingFaceH4/MATH-500", (("problem",), ("answer",)), math_record, "math"),
        Preset(
            "aime",
            "AI-MO/aimo-validation-aime, Maxwell-Jia/AIME_2024",
            (("problem", "Problem", "question"), ("answer", "Answer")),
            math_record,
            "math",
        ),
        Preset("apps", "codeparrot/apps", (("question",), ("input_output",)), apps_record, "code"),
        Preset("taco", "BAAI/TACO", (("question",), ("input_output",)), taco_record, "code"),
        Preset(
            "livecodebench",
            "livecodebench/code_generation_lite",
            (("question_content", "question"), ("public_test_cases",)),
            lcb_record,
            "code",
        ),
        Preset(
            "humaneval",
            "openai/openai_humaneval",
            (("prompt",), ("test",), ("entry_point",)),
            humaneval_record,
            "code",
        ),
        Preset(
            "code",
            "code problems with fastslow tests",
            (("prompt", "question", "problem"), ("tests",)),
            code_record,
            "code",
        ),
        Preset(
            "gpqa",
            "Idavidrein/gpqa",
            (("Question", "question"), ("Correct Answer",), ("Incorrect Answer 1",)),
            gpqa_record,
            "general",
        ),
        Preset(
            "multiple-choice",
            "MMLU-style (question, choices, answer)",
            (("question",), ("choices",), ("answer",)),
            choice_record,
            "general",
        ),
    )
}


def preset_names() -> list[str]:
    """The names of the presets, in table order."""
    return list(PRESETS)


def get_preset(name: str | None) -> Preset:
    """The preset called ``name`` (None: ``records``); an unknown name is an error listing the known ones."""
    if name is None:
        return PRESETS["records"]
    key = name.strip().lower().replace("_", "-")
    if key not in PRESETS:
        raise DataError(f"dataset_preset {name!r}: unknown; expected one of {preset_names()}")
    return PRESETS[key]


def suggest_preset(columns: Iterable[str]) -> str | None:
    """The first preset (other than ``records``) whose required columns the data has, or None."""
    have = set(columns)
    for preset in PRESETS.values():
        if preset.name != "records" and all(have & set(group) for group in preset.columns):
            return preset.name
    return None


def detect_preset(columns: Iterable[str], first: Row | None = None) -> str:
    """The preset a data set's columns (and its ``first`` row) look like; an error when none fits."""
    c = set(columns)
    answer = str((first or {}).get("answer", ""))
    rules = (
        ("records", {"prompt", "task"} <= c),
        ("humaneval", {"prompt", "test", "entry_point"} <= c),
        ("gpqa", {"Correct Answer", "Incorrect Answer 1"} <= c),
        ("multiple-choice", {"question", "choices", "answer"} <= c),
        ("livecodebench", "public_test_cases" in c),
        ("taco", {"input_output", "raw_tags"} <= c or {"input_output", "skill_types"} <= c),
        ("apps", {"question", "input_output"} <= c),
        ("code", "tests" in c and bool(c & {"prompt", "question", "problem"})),
        ("gsm8k", {"question", "answer"} <= c and "####" in answer),
        ("openr1-math", {"problem", "answer", "generations"} <= c),
        ("numinamath", {"problem", "solution"} <= c and "answer" not in c),
        ("math500", {"problem", "answer"} <= c and bool(c & {"level", "solution", "subject"})),
        ("aime", bool(c & {"problem", "Problem", "question"}) and bool(c & {"answer", "Answer"})),
    )
    for name, fits in rules:
        if fits:
            return name
    raise DataError(f"cannot tell the data set's schema from its columns {sorted(c)}; give dataset_preset")


def check_columns(columns: Iterable[str], mapping: dict[str, str] | None, preset: Preset, source: str) -> None:
    """Refuse a mapping naming a column the data lacks, or a required column missing after the mapping."""
    have = set(columns)
    listed = ", ".join(sorted(have)) or "none"
    for fld, column in (mapping or {}).items():
        if column not in have:
            reads = {name for group in preset.columns for name in group}
            flipped = " (column_mapping is {field: column})" if fld in have and column in reads else ""
            raise DataError(
                f"{source}: column {column!r} (column_mapping {fld!r}) not found{flipped}; its columns: {listed}"
            )
    have |= set(mapping or {})
    for group in preset.columns:
        if not have & set(group):
            alternatives = f" (or {', '.join(map(repr, group[1:]))})" if len(group) > 1 else ""
            guess = suggest_preset(have) if preset.name == "records" else None
            advice = (
                f"use dataset_preset {guess!r}"
                if guess
                else f"map a column onto it: column_mapping {{{group[0]!r}: <column>}}"
            )
            raise DataError(
                f"{source}: column {group[0]!r}{alternatives} missing, needed by preset {preset.name!r}; "
                f"its columns: {listed}; {advice}"
            )


# ---------------------------------------------------------------------------------------------------- loading


def map_columns(row: Any, mapping: dict[str, str] | None) -> Any:
    """``row`` with each field of ``mapping`` ``{field: column}`` read from its column (the columns stay too)."""
    if not mapping or not isinstance(row, dict):
        return row
    return {**row, **{fld: row.get(col) for fld, col in mapping.items()}}


def hub_offline() -> bool:
    """Whether the hub is off (``HF_HUB_OFFLINE`` or ``HF_DATASETS_OFFLINE`` set, or ``datasets`` says so)."""
    on = ("1", "ON", "YES", "TRUE")
    env = any(os.environ.get(k, "").upper() in on for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    return env or bool(datasets.config.HF_HUB_OFFLINE)


def _looks_local(name: str) -> bool:
    """A name that can only be a path (a file suffix, or absolute/relative/home), never a hub id."""
    return name.lower().endswith(_LOCAL_SUFFIXES) or name.startswith(("/", "./", "../", "~"))


def _load_dataset(name: str, config: str | None, split: str, label: str) -> datasets.Dataset:
    try:
        return datasets.load_dataset(name, config, split=split)
    except ValueError as exc:  # an unknown split or config
        raise DataError(f"{label}: {exc}") from exc
    except (OSError, datasets.exceptions.DatasetsError) as exc:
        if hub_offline():
            raise DataError(
                f"{name}: not in the local datasets cache and the hub is off (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE): "
                f"load it once with the hub on, or give a local file or folder ({type(exc).__name__}: {exc})"
            ) from exc
        raise DataError(f"{name}: cannot load it through datasets ({type(exc).__name__}: {exc})") from exc


def read_source(
    name: str, config: str | None = None, split: str = "train", max_record_bytes: int | None = MAX_RECORD_BYTES
) -> tuple[list[str], Iterator[tuple[int, Row]], str]:
    """The raw rows of a data set: (column names, ``(row number, row)`` pairs, a label naming it).

    A local file is read with fastslow's own reader (rows numbered as the file shows them, UTF-8 and size errors
    naming the row); it is one split, ``train``. A folder or a hub id goes through ``datasets.load_dataset``.
    """
    path = Path(name).expanduser()
    if path.is_file():
        if split not in ("train", "", None):
            raise DataError(f"{path}: a single file is one split (train), not {split!r}; give a folder or hub id")
        if config:
            raise DataError(f"{path}: a local file has no config (got {config!r})")
        rows = read_rows(path, max_record_bytes)
        columns = list(dict.fromkeys(k for _, r in rows if isinstance(r, dict) for k in r))
        return columns, iter(rows), str(path)
    if not path.is_dir() and _looks_local(name):
        raise FileNotFoundError(f"{name}: no such data file or folder")
    label = f"{name}{f' ({config})' if config else ''} [{split}]"
    ds = _load_dataset(str(path) if path.is_dir() else name, config, split, label)

    def rows() -> Iterator[tuple[int, Row]]:
        for i, row in enumerate(ds, 1):
            check_size(row, f"{label}, row {i}", max_record_bytes)
            yield i, row

    return list(ds.column_names), rows(), label


def load_source(
    name: str,
    config: str | None = None,
    split: str = "train",
    column_mapping: dict[str, str] | str | None = None,
    preset: str | None = None,
    limit: int | None = None,
    *,
    hint: bool = True,
    max_record_bytes: int | None = MAX_RECORD_BYTES,
) -> list[dict]:
    """Validated fastslow records from a data set (see the module docstring).

    ``name`` is a local file (JSONL/JSON/CSV/Parquet), a folder or a hub id; ``config``/``split`` choose the hub
    subset and split; ``preset`` converts its schema (default ``records``; ``auto``: :func:`detect_preset`),
    ``column_mapping`` ``{field: column}`` reads a field from another column; ``limit`` keeps the first rows.
    Rows that repeat a record exactly are dropped (real sets have them); two different prompts with one id are an
    error naming both rows.
    """
    mapping = parse_column_mapping(column_mapping)
    spec = None if preset == "auto" else get_preset(preset)
    columns, rows, source = read_source(name, config, split, max_record_bytes)
    if spec is None:
        first = next(rows, None)
        rows = itertools.chain([first] if first else [], rows)
        have = [*columns, *(mapping or {})]
        spec = get_preset(detect_preset(have, map_columns(first[1], mapping) if first else None))
        logger.info("%s: read with preset %s", source, spec.name)
    check_columns(columns, mapping, spec, source)
    records, numbers, seen, dropped = [], [], set(), 0
    for i, row in rows:
        if limit is not None and len(records) >= limit:
            break
        row = map_columns(row, mapping)
        rec = validate_record(
            spec.convert(row, f"{source}, row {i}", hint) if isinstance(row, dict) else row, source, i
        )
        if rec["source"] is None:
            rec["source"] = name
        key = json.dumps(rec, sort_keys=True, ensure_ascii=False)
        if key in seen and spec.name != "records":
            dropped += 1
            continue
        seen.add(key)
        records.append(rec)
        numbers.append(i)
    if not records:
        raise DataError(f"{source}: no records")
    check_ids(records, source, numbers)
    if dropped:
        logger.info("%s: %d rows repeating a record exactly were dropped", source, dropped)
    logger.info("%s: %d records (preset %s)", source, len(records), spec.name)
    return records
