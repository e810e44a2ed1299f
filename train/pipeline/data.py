"""The pipeline's data sets: a data name given as a data set (hub id or local path) becomes a records file.

A ``data:`` entry may be a file, a list of files, or a mapping naming a data set (:class:`DataSource`:
``dataset_name``, ``dataset_config``, ``dataset_split``, ``dataset_preset``, ``column_mapping``, ...). Such a data
set is read once through :func:`train.core.sources.load_source` (the presets of docs/data.md, a missing column an
error naming it and the data set) and written to ``<run_dir>/data/<name>.jsonl``, the file every stage and the
evaluation then read, so each stage keeps its file keys (``train_files``, ``eval_file``, ...) and the run keeps
the exact records it trained on. With ``think_format`` the replies' think delimiters are rewritten into the base
model's (a DeepSeek-R1 trace for openPangu), and rows without a think block are dropped.

``<name>.source.json`` beside the records says what they were read from (the entry, the target think format, and
for a local file or folder its sizes and modification times): a rerun with the same reuses the file, anything else
reads the data set again. It is removed before and written after the records, so a run killed in between reads
the data set again, never half a file or another entry's records.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from train.core.data import write_jsonl
from train.core.fingerprint import file_stamps, write_json_atomic
from train.core.loading import load_tokenizer
from train.core.modes import THINK_FORMATS, ThinkFormat
from train.core.sources import load_source_from
from train.pipeline.config import DataSource

logger = logging.getLogger(__name__)


def data_source_file(run_dir: Path, name: str) -> Path:
    """Where the records of data name ``name`` are written."""
    return run_dir / "data" / f"{name}.jsonl"


def data_source_meta(run_dir: Path, name: str) -> Path:
    """Where what a data set entry's records were read from is recorded, beside them."""
    return data_source_file(run_dir, name).with_suffix(".source.json")


def data_provenance(run_dir: Path, name: str) -> Any:
    """What a data set entry's records were read from (its ``.source.json``), None before they are written."""
    meta = data_source_meta(run_dir, name)
    return json.loads(meta.read_text()).get("provenance") if meta.exists() else None


def needs_think(data: dict[str, Any]) -> bool:
    """Whether any data set entry rewrites its replies into the base model's think format."""
    return any(isinstance(s, DataSource) and s.think_format for s in data.values())


def base_think(base_model: str, trust_remote_code: bool = False) -> ThinkFormat:
    """The base model's think format, from its tokenizer (the one object every stage uses)."""
    return ThinkFormat.from_tokenizer(load_tokenizer(base_model, trust_remote_code=trust_remote_code))


def check_stage_think(stages: list[Any], think: ThinkFormat, root: Path = Path(".")) -> None:
    """Refuse a stage whose YAML (or overrides) names other think delimiters than the base model's tokenizer, into
    which the data sets' replies are rewritten: its rewards and parsing would read another format than it trains."""
    for stage in stages:
        raw = stage.recipe_config(root)
        named = (raw.get("think_start"), raw.get("think_end"))
        if all(named) and named != (think.start, think.end):
            raise ValueError(
                f"stage {stage.name!r} ({stage.config}): think_start/think_end {named[0]!r}/{named[1]!r}, but the "
                f"base model's tokenizer, which the data's replies are rewritten into, uses {think.start!r}/"
                f"{think.end!r}"
            )


def local_stamp(name: str) -> list[list[Any]] | None:
    """Sizes and modification times of a local data file or folder's files (None for a hub id): an edited file is
    read again."""
    path = Path(name).expanduser()
    if path.is_file():
        return file_stamps([path], path.parent)
    if path.is_dir():
        return file_stamps((f for f in path.rglob("*") if f.is_file()), path) or None
    return None


def provenance(source: DataSource, think: ThinkFormat | None) -> dict[str, Any]:
    target = [think.start, think.end] if source.think_format and think is not None else None
    return {"source": dataclasses.asdict(source), "think": target, "local": local_stamp(source.dataset_name)}


def _trace(text: Any, given: ThinkFormat) -> bool:
    """A reply with exactly one closed, leading think block in ``given``'s delimiters."""
    return isinstance(text, str) and given.parse(text).well_formed


def with_think(records: list[dict], source: DataSource, think: ThinkFormat, label: str) -> list[dict]:
    """Replies (``response`` and a ``pool`` of them) rewritten from ``source.think_format`` into ``think``; rows
    whose response is not one well-formed think block and an answer are dropped."""
    given = THINK_FORMATS[source.think_format]
    kept = [r for r in records if _trace(r.get("response"), given)]
    if len(kept) < len(records):
        logger.info("data %s: %d of %d rows have no well-formed %s...%s reply and are dropped", label,
                    len(records) - len(kept), len(records), given.start, given.end)  # fmt: skip
    if not kept:
        raise ValueError(f"data {label} ({source.dataset_name}): no reply has a {given.start}...{given.end} block")
    out = []
    for r in kept:
        row = {**r, "response": think.rewrite(r["response"], given)}
        if isinstance(r.get("pool"), list):
            row["pool"] = [think.rewrite(t, given) if isinstance(t, str) else t for t in r["pool"]]
        for key, value in (("think_start", think.start), ("think_end", think.end)):
            if row.get(key):  # a record that names its delimiters names the new ones
                row[key] = value
        out.append(row)
    return out


def prepare_data(data: dict[str, Any], run_dir: Path, think: ThinkFormat | None = None) -> dict[str, Path]:
    """Write every data set entry of ``data`` to its records file (skipping those already written from the same
    entry); ``think``: the base model's think format, which entries with ``think_format`` are rewritten into.
    Returns name -> file for those entries."""
    written: dict[str, Path] = {}
    for name, source in data.items():
        if not isinstance(source, DataSource):
            continue
        if source.think_format and think is None:
            raise ValueError(f"data {name}: think_format needs the base model's think format")
        path, meta = data_source_file(run_dir, name), data_source_meta(run_dir, name)
        want = provenance(source, think)
        if not (path.exists() and data_provenance(run_dir, name) == want):
            meta.unlink(missing_ok=True)
            records = load_source_from(source, limit=source.max_samples)
            if source.think_format:
                records = with_think(records, source, think, name)
            write_jsonl(path, records)
            write_json_atomic(meta, {"provenance": want, "records": len(records)})
            logger.info("data %s: %d records from %s -> %s", name, len(records), source.dataset_name, path)
        written[name] = path
    return written
