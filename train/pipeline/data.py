"""The pipeline's data sets: a data name given as a data set (hub id or local path) becomes a records file.

A ``data:`` entry may be a file, a list of files, or a mapping naming a data set (:class:`DataSource`:
``dataset_name``, ``dataset_config``, ``dataset_split``, ``dataset_preset``, ``column_mapping``, ...). Such a data
set is read once through :func:`train.core.sources.load_source` (the presets of docs/data.md, a missing column an
error naming it and the data set) and written to ``<run_dir>/data/<name>.jsonl``, the file every stage and the
evaluation then read, so each stage keeps its file keys (``train_files``, ``eval_file``, ...) and the run keeps
the exact records it trained on. ``<name>.source.json`` beside it records what it was read from: a rerun with the
same entry reuses the file, a changed entry reads the data set again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from train.core.data import write_jsonl
from train.core.fingerprint import write_json_atomic
from train.core.sources import load_source
from train.pipeline.config import DataSource

logger = logging.getLogger(__name__)


def data_source_file(run_dir: Path, name: str) -> Path:
    """Where the records of data name ``name`` are written."""
    return run_dir / "data" / f"{name}.jsonl"


def _record(source: DataSource) -> dict[str, Any]:
    return dataclasses.asdict(source)


def _written(path: Path, source: DataSource) -> bool:
    """The records file exists and was read from this very entry."""
    meta = path.with_suffix(".source.json")
    if not (path.exists() and meta.exists()):
        return False
    return json.loads(meta.read_text()).get("source") == _record(source)


def prepare_data(data: dict[str, Any], run_dir: Path) -> dict[str, Path]:
    """Write every data set entry of ``data`` to its records file (skipping those already written from the same
    entry); returns name -> file for those entries."""
    written: dict[str, Path] = {}
    for name, source in data.items():
        if not isinstance(source, DataSource):
            continue
        path = data_source_file(run_dir, name)
        if not _written(path, source):
            records = load_source(source.dataset_name, source.dataset_config, source.dataset_split,
                                  source.column_mapping, source.dataset_preset, source.max_samples,
                                  hint=source.dataset_hint)  # fmt: skip
            write_jsonl(path, records)
            # Written after the records: a run killed in between reads the data set again, never a partial file.
            write_json_atomic(path.with_suffix(".source.json"), {"source": _record(source), "records": len(records)})
            logger.info("data %s: %d records from %s -> %s", name, len(records), source.dataset_name, path)
        written[name] = path
    return written
