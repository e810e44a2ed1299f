"""The record schema every stage shares, its loaders, validation and weighted mixtures.

One record per prompt:

==============  =================================================================================================
key             meaning
==============  =================================================================================================
``prompt``      the query: a string (one user turn) or a list of chat messages ``{"role", "content"}``. Required.
``task``        ``math``, ``code``, ``general`` (or another name a reward router knows). Required.
``answer``      reference answer (LaTeX or plain text for math, reference text for general). Optional.
``tests``       code only: a list of cases, each ``{"input": str, "output": str}`` (stdin/stdout program) or
                ``{"assert": str}`` (a Python statement run after the solution). A JSON string is accepted.
``response``    a target reply (with its think block) for supervised stages. Optional.
``difficulty``  a number (the arithmetic world uses levels 1-6). Optional.
``source``      where the record came from. Optional.
``id``          a stable id; derived from the prompt when missing. Optional.
==============  =================================================================================================

Every error names the file, the row (1-based line for JSONL) and the key. Files must be UTF-8 (an error names the
row and byte that is not). A record whose text (every string in it but the code ``tests``) is larger than
``max_record_bytes`` (:data:`MAX_RECORD_BYTES`, 1 MiB, by default) is refused: one runaway row would stall
tokenisation for minutes. Ids name prompts: two rows with one id must ask the same problem (they may differ in mode
tag or target response), and two identical rows are a duplicate; both are errors naming the two rows.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import random
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from datasets import Dataset, concatenate_datasets

from train.core.modes import untagged

logger = logging.getLogger(__name__)

REQUIRED = ("prompt", "task")
OPTIONAL = ("answer", "tests", "response", "difficulty", "source", "id")
KNOWN_TASKS = ("math", "code", "general")
_ROLES = {"system", "user", "assistant", "tool"}
#: The default largest record, in bytes of text (UTF-8) outside the code ``tests``: 1 MiB.
MAX_RECORD_BYTES = 1 << 20


_PRESET_HINT = "a data set in another schema is read as dataset_name with a dataset_preset, see docs/data.md)"


class DataError(ValueError):
    """A record that does not follow the schema; the message names the file, row and key."""


def _where(source: str, row: int | None, key: str | None = None) -> str:
    where = source if row is None else f"{source}, row {row}"
    return f"{where}, key {key!r}" if key else where


def record_id(prompt: Any) -> str:
    """A stable id derived from the prompt's text."""
    text = prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True, ensure_ascii=False)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def _check_prompt(prompt: Any, where: str) -> Any:
    if isinstance(prompt, str):
        if not prompt.strip():
            raise DataError(f"{where}: empty prompt")
        return prompt
    if isinstance(prompt, list) and prompt:
        for j, msg in enumerate(prompt):
            if not isinstance(msg, dict) or msg.get("role") not in _ROLES or not isinstance(msg.get("content"), str):
                raise DataError(f"{where}: message {j} must be {{'role': one of {sorted(_ROLES)}, 'content': str}}")
        if not any(m["role"] == "user" for m in prompt):
            raise DataError(f"{where}: the conversation has no user turn")
        return [{"role": m["role"], "content": m["content"]} for m in prompt]
    raise DataError(f"{where}: expected a non-empty string or a list of chat messages, got {type(prompt).__name__}")


def _check_tests(tests: Any, where: str) -> list[dict[str, str]] | None:
    if tests is None or tests == "":
        return None
    if isinstance(tests, str):
        try:
            tests = json.loads(tests)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: not valid JSON ({exc.msg})") from None
    if not isinstance(tests, list):
        raise DataError(f"{where}: expected a list of test cases, got {type(tests).__name__}")
    out = []
    for j, case in enumerate(tests):
        if isinstance(case, dict) and isinstance(case.get("assert"), str):
            out.append({"assert": case["assert"]})
        elif isinstance(case, dict) and "input" in case and "output" in case:
            out.append({"input": str(case["input"]), "output": str(case["output"])})
        else:
            raise DataError(f"{where}: case {j} must be {{'input', 'output'}} or {{'assert'}}, got {case!r:.80}")
    return out


def validate_record(row: dict[str, Any], source: str = "<records>", index: int | None = None) -> dict[str, Any]:
    """A normalised copy of ``row``; raises :class:`DataError` naming ``source``, the row and the key."""
    if not isinstance(row, dict):
        raise DataError(f"{_where(source, index)}: a record must be a JSON object, got {type(row).__name__}")
    # Empty cells (CSV, Parquet nulls) mean "absent" for optional keys.
    row = {k: (None if v == "" and k in OPTIONAL else v) for k, v in row.items()}
    for key in REQUIRED:
        if row.get(key) in (None, ""):
            # A row of a public data set (OpenR1's problem/solution, ...) reads with a preset, not as a record.
            other = key not in row and not set(row) & set(REQUIRED)
            hint = f" (its keys: {', '.join(sorted(row))}: " + _PRESET_HINT if other and row else ""
            raise DataError(f"{_where(source, index, key)}: missing required key{hint}")
    rec: dict[str, Any] = {"prompt": _check_prompt(row["prompt"], _where(source, index, "prompt"))}
    if not isinstance(row["task"], str):
        raise DataError(f"{_where(source, index, 'task')}: expected a string such as {KNOWN_TASKS}")
    rec["task"] = row["task"].strip().lower()
    answer = row.get("answer")
    if answer is not None and (isinstance(answer, (dict, list, tuple)) or not isinstance(answer, (str, int, float))):
        raise DataError(f"{_where(source, index, 'answer')}: expected a string or a number, got {answer!r:.80}")
    rec["answer"] = None if answer is None else str(answer)
    rec["tests"] = _check_tests(row.get("tests"), _where(source, index, "tests"))
    if rec["task"] == "code" and not rec["tests"]:
        logger.debug("%s: code record without tests", _where(source, index))
    response = row.get("response")
    if response is not None and not isinstance(response, str):
        raise DataError(f"{_where(source, index, 'response')}: expected a string")
    rec["response"] = response
    difficulty = row.get("difficulty")
    if difficulty is not None:
        try:
            difficulty = float(difficulty)
        except (TypeError, ValueError):
            raise DataError(f"{_where(source, index, 'difficulty')}: expected a number, got {difficulty!r}") from None
        if not math.isfinite(difficulty):
            raise DataError(f"{_where(source, index, 'difficulty')}: expected a finite number, got {difficulty!r}")
    rec["difficulty"] = difficulty
    rec["source"] = None if row.get("source") is None else str(row["source"])
    rec["id"] = str(row["id"]) if row.get("id") is not None else record_id(rec["prompt"])
    return rec


def record_bytes(row: Any) -> int:
    """The UTF-8 size of a row's text: every string in it, nested ones included, except the code ``tests``."""
    if isinstance(row, str):
        return len(row.encode("utf-8"))
    if isinstance(row, dict):
        return sum(record_bytes(v) for k, v in row.items() if k != "tests")
    if isinstance(row, (list, tuple)):
        return sum(record_bytes(v) for v in row)
    return 0


def check_size(row: Any, where: str, max_bytes: int | None, bound: int | None = None) -> None:
    """Refuse a row whose text (:func:`record_bytes`) is over ``max_bytes``, naming ``where``."""
    # ``bound`` (a JSONL line's length) is an upper bound of the text's size: most rows need no counting.
    if not max_bytes or (bound is not None and bound <= max_bytes):
        return
    size = record_bytes(row)
    if size > max_bytes:
        raise DataError(
            f"{where}: the record's text is {size} bytes, over max_record_bytes={max_bytes} (a row this large stalls "
            "tokenisation; raise max_record_bytes, or set it to null for no limit, if it is meant)"
        )


def _not_utf8(raw: bytes, exc: UnicodeDecodeError, where: str, offset: int = 0) -> DataError:
    return DataError(
        f"{where}: byte {offset + exc.start} (0x{raw[exc.start]:02x}) is not valid UTF-8 ({exc.reason}); "
        "convert the file to UTF-8"
    )


def _decode(raw: bytes, where: str, offset: int = 0) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _not_utf8(raw, exc, where, offset) from None


def _decode_file(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise _not_utf8(raw, exc, f"{path}, line {line}") from None


def _read_jsonl(path: Path, max_bytes: int | None) -> list[tuple[int, Any]]:
    rows = []
    offset = 0
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, 1):
            line = _decode(raw, f"{path}, row {line_no}", offset)
            offset += len(raw)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}, row {line_no}: malformed JSON ({exc.msg})") from None
            check_size(row, f"{path}, row {line_no}", max_bytes, bound=len(raw))
            rows.append((line_no, row))
    return rows


def _read_csv(path: Path, max_bytes: int | None) -> list[tuple[int, Any]]:
    reader = csv.DictReader(io.StringIO(_decode_file(path), newline=""))
    old = csv.field_size_limit()
    # csv's own field limit (128 KiB) would refuse a large cell with an error that names no row; ours names it.
    csv.field_size_limit(max(old, min(sys.maxsize, 4 * max_bytes + 1) if max_bytes else sys.maxsize))
    try:
        return list(enumerate(reader, 2))  # row numbers as a spreadsheet shows them
    except csv.Error as exc:
        raise DataError(f"{path}, line {reader.line_num}: malformed CSV ({exc})") from None
    finally:
        csv.field_size_limit(old)


def read_rows(path: Path, max_bytes: int | None = MAX_RECORD_BYTES) -> list[tuple[int, Any]]:
    """The raw rows of a local JSONL/JSON/CSV/Parquet file as ``(row number, row)``, unvalidated."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _read_jsonl(path, max_bytes)
    if suffix == ".json":
        try:
            data = json.loads(_decode_file(path))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: malformed JSON at line {exc.lineno} ({exc.msg})") from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a list of records (or {{'data': [...]}})")
        rows = list(enumerate(data, 1))
    elif suffix == ".csv":
        rows = _read_csv(path, max_bytes)
    elif suffix == ".parquet":
        rows = list(enumerate(Dataset.from_parquet(str(path)).to_list(), 1))
    else:
        raise DataError(f"{path}: unsupported file type {suffix!r}; expected .jsonl, .json, .csv or .parquet")
    for i, row in rows:
        check_size(row, f"{path}, row {i}", max_bytes)
    return rows


def check_ids(records: Sequence[dict[str, Any]], source: str, rows: Sequence[int] | None = None) -> None:
    """Refuse an id shared by two different prompts (a collision) or by two identical rows (a duplicate).

    One problem asked in two modes, or with two target responses, may share its id. Errors name both rows.
    """
    rows = list(range(1, len(records) + 1)) if rows is None else rows
    first: dict[str, tuple[int, Any, str]] = {}
    seen: dict[tuple[str, str, Any], int] = {}
    for row, rec in zip(rows, records):
        rid = rec["id"]
        prompt = json.dumps(untagged(rec["prompt"]), sort_keys=True, ensure_ascii=False)
        if rid in first and first[rid][1] != prompt:
            raise DataError(
                f"{_where(source, row, 'id')}: id {rid!r} is also row {first[rid][0]}'s, a different prompt "
                f"({rec['prompt']!r:.60} vs {first[rid][2]!r:.60}); give every problem its own id"
            )
        first.setdefault(rid, (row, prompt, rec["prompt"]))
        key = (rid, json.dumps(rec["prompt"], sort_keys=True, ensure_ascii=False), rec.get("response"))
        if key in seen:
            raise DataError(
                f"{_where(source, row, 'id')}: duplicate id {rid!r} (also row {seen[key]}): the same prompt and "
                "response twice; remove one"
            )
        seen[key] = row


def read_records(
    path: str | Path, validate: bool = True, max_record_bytes: int | None = MAX_RECORD_BYTES
) -> list[dict[str, Any]]:
    """The records of a local file as validated dicts (:func:`validate_record`, ids checked by :func:`check_ids`).

    ``max_record_bytes`` refuses a larger record (see :func:`record_bytes`); None accepts any size.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such data file")
    rows = read_rows(path, max_record_bytes)
    if not validate:
        return [r for _, r in rows]
    records = [validate_record(row, str(path), i) for i, row in rows]
    check_ids(records, str(path), [i for i, _ in rows])
    return records


def load_records(
    spec: str | Path,
    split: str = "train",
    validate: bool = True,
    limit: int | None = None,
    max_record_bytes: int | None = MAX_RECORD_BYTES,
) -> Dataset:
    """A :class:`datasets.Dataset` of records from a local file or a hub dataset name.

    Local paths never touch the network. A hub name is loaded with ``datasets.load_dataset(spec, split=split)``.
    ``max_record_bytes`` is :func:`read_records`'.
    """
    path = Path(spec)
    if path.exists():
        records = read_records(path, validate=validate, max_record_bytes=max_record_bytes)
        source = str(path)
    else:
        from datasets import load_dataset

        source = str(spec)
        records = load_dataset(source, split=split).to_list()
        for i, r in enumerate(records, 1):
            check_size(r, f"{source}, row {i}", max_record_bytes)
        if validate:
            records = [validate_record(r, source, i) for i, r in enumerate(records, 1)]
            check_ids(records, source)
    if limit is not None:
        records = records[:limit]
    if not records:
        raise DataError(f"{source}: no records")
    return records_to_dataset(records)


def records_to_dataset(records: Sequence[dict[str, Any]]) -> Dataset:
    """A Dataset with a fixed column set; ``tests`` and message prompts are kept as JSON-friendly values."""
    columns = list(REQUIRED + OPTIONAL)
    extra = sorted({k for r in records for k in r} - set(columns))
    rows = [{k: r.get(k) for k in columns + extra} for r in records]
    # Arrow needs one type per column: a mix of string and message-list prompts is stored as messages.
    if any(isinstance(r["prompt"], list) for r in rows):
        for r in rows:
            r["prompt"] = to_messages(r["prompt"])
    for r in rows:
        r["tests"] = None if r["tests"] is None else json.dumps(r["tests"])
    return Dataset.from_list(rows)


def code_tests(value: Any) -> list[dict[str, str]] | None:
    """The test cases of a record's ``tests`` value (stored as JSON text in a Dataset)."""
    return _check_tests(value, "tests")


def to_messages(prompt: str | list[dict[str, str]], system: str | None = None) -> list[dict[str, str]]:
    """A prompt as a list of chat messages."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
    if system and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": system})
    return messages


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> Path:
    """Write records atomically (a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def mix(datasets: Sequence[Dataset], weights: Sequence[float], size: int | None = None, seed: int = 0) -> Dataset:
    """A weighted mixture: ``size`` rows drawn so that source ``i`` gives a ``weights[i]`` share.

    A source smaller than its share is repeated (sampled with replacement); otherwise rows are drawn without
    replacement. ``size`` defaults to the total number of rows.
    """
    if len(datasets) != len(weights) or not datasets:
        raise ValueError(f"mix needs one weight per dataset, got {len(datasets)} datasets and {len(weights)} weights")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"mixture weights must be non-negative with a positive sum, got {list(weights)}")
    total = sum(weights)
    size = sum(len(d) for d in datasets) if size is None else size
    rng = random.Random(seed)
    parts = []
    for ds, w in zip(datasets, weights):
        n = round(size * w / total)
        if n == 0:
            continue
        idx = rng.sample(range(len(ds)), n) if n <= len(ds) else [rng.randrange(len(ds)) for _ in range(n)]
        parts.append(ds.select(idx))
    return concatenate_datasets(parts).shuffle(seed=seed)


def difficulty_bucket(difficulty: Any) -> str:
    """The bucket name of an annotated difficulty: ``1``, ``1.0`` and ``"1"`` are ``"1"``, ``2.5`` is ``"2.5"``.

    A value that is not a number (a named bucket such as ``"c0"``) is returned as given. Every stage names buckets
    with this one rule, so a bucket chosen in a config matches the one a report prints.
    """
    try:
        d = float(difficulty)
    except (TypeError, ValueError):
        return str(difficulty)
    return str(int(d)) if d.is_integer() else f"{d:g}"


def base_id(row: dict[str, Any]) -> str:
    """The prompt id of a record derived per mode tag (fusion records ``<id>-<fusion_tag>``): the id without it."""
    tag, rid = row.get("fusion_tag"), str(row["id"])
    return rid[: -len(tag) - 1] if tag and rid.endswith(f"-{tag}") else rid
