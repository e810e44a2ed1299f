"""Honest resume: a resumable stage records the configuration that produced its partial output and refuses to
resume under another one.

A stage calls :func:`check_run_config` before it reads anything it wrote earlier. The first call writes
``run_config.json`` (the keys that change results and their hash, atomically); a later call with the same keys
passes, with different ones raises :class:`ResumeConfigError` naming the keys that differ. Keys that do not change
results (logging, progress bars, report_to, output paths) are left out with ``ignore`` (``fnmatch`` patterns).
To start over under a new configuration, delete the output (the error says which); there is no flag that mixes
two configurations in one output.

``FASTSLOW_FAULT`` (:func:`fault_point`) is the fault-injection hook of the reliability tests: a process that reaches
the named phase exits at once with status 137, as a SIGKILL would.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

RUN_CONFIG = "run_config.json"

# Keys of trl/transformers training arguments that change no result: where logs, reports and checkpoints go, how
# often they are written, and how progress is shown. Everything else is kept (an unknown key is assumed to matter).
TRAINING_IGNORE = (
    "output_dir", "logging_*", "log_level*", "log_on_each_node", "report_to", "run_name", "disable_tqdm", "save_*",
    "push_to_hub*", "hub_*", "ddp_timeout", "overwrite_output_dir", "trackio_*", "project", "resume_from_checkpoint",
    "dataloader_num_workers", "dataloader_persistent_workers", "dataloader_prefetch_factor", "include_*tokens*",
)  # fmt: skip


#: Keys of the sampler (``SamplerConfig``, ``sampler_*`` in a recipe) that say how requests reach a server, not what
#: it samples: a resumed run may point at a restarted server (another port, key or timeout); ``sampler_model`` names
#: the model it serves and stays recorded. Timeouts and retries decide only whether a request gets through, which no
#: value makes reproducible; ``batch_budget`` is not here: it decides by design which replies come back.
SAMPLER_TRANSPORT = (
    "base_url", "api_key_env", "timeout", "max_retries", "backoff", "max_backoff", "concurrency",
    "requests_per_second",
)  # fmt: skip

#: What a recipe's run configuration ignores: the training arguments that change no result, the process rank and
#: the sampler's transport keys.
RECIPE_IGNORE = (
    *(f"training.{p}" for p in (*TRAINING_IGNORE, "local_rank")),
    *(f"*.sampler_{k}" for k in SAMPLER_TRANSPORT),
)


class ResumeConfigError(RuntimeError):
    """A partial output was produced under another configuration; the message names the keys and how to restart."""


def _jsonable(value: Any) -> Any:
    """``value`` as plain JSON (tuples as lists, enums and paths as strings) so recorded and new values compare."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _ignored(key: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatch(key, p) for p in patterns)


def config_fingerprint(mapping: Mapping[str, Any], ignore: Iterable[str] = ()) -> dict[str, Any]:
    """``{"keys": {...}, "hash": sha256}`` of ``mapping`` less the keys matching an ``ignore`` pattern."""
    patterns = tuple(ignore)
    keys = {k: _jsonable(v) for k, v in sorted(mapping.items()) if not _ignored(k, patterns)}
    digest = hashlib.sha256(json.dumps(keys, sort_keys=True).encode("utf-8")).hexdigest()
    return {"keys": keys, "hash": digest}


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """Write JSON into a temporary sibling, fsync it and rename it into place: a reader sees all of it or nothing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    return path


def file_stamps(files: Iterable[Path], root: Path) -> list[list[Any]]:
    """``[path relative to root, size, modification time in ns]`` per file, in path order: files that changed since
    (rewritten, edited) give other stamps, without reading their bytes."""
    return [[str(f.relative_to(root)), f.stat().st_size, f.stat().st_mtime_ns] for f in sorted(files)]


def differing_keys(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Keys whose values differ (or that only one side has), sorted."""
    return sorted(k for k in set(recorded) | set(current) if recorded.get(k, "<unset>") != current.get(k, "<unset>"))


def check_run_config(
    record: str | Path,
    mapping: Mapping[str, Any],
    ignore: Iterable[str] = (),
    *,
    output: str | Path | None = None,
    write: bool = True,
) -> dict[str, Any]:
    """Record ``mapping``'s fingerprint in ``record`` (a ``run_config.json``), or check it against the recorded one.

    Raises :class:`ResumeConfigError` when the recorded keys differ, naming each key with both values, and the
    ``output`` (default: ``record``'s folder) to delete to start over. ``write=False`` only checks (processes other
    than the main one). Returns the fingerprint.
    """
    record, ignore = Path(record), tuple(ignore)
    fingerprint = config_fingerprint(mapping, ignore)
    if record.exists():
        try:
            recorded = json.loads(record.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ResumeConfigError(f"{record}: unreadable recorded configuration ({exc.msg})") from None
        # Keys, not the hash: a record written before a key joined ``ignore`` still holds it, and must not block.
        old = {k: v for k, v in recorded.get("keys", {}).items() if not _ignored(k, ignore)}
        new = fingerprint["keys"]
        diff = differing_keys(old, new)
        if diff:
            shown = "; ".join(f"{k}: {old.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r}" for k in diff[:12])
            more = f" (and {len(diff) - 12} more)" if len(diff) > 12 else ""
            raise ResumeConfigError(
                f"{record}: the partial output in {output or record.parent} was produced under another "
                f"configuration ({shown}{more}); rerun with the recorded values to resume, or delete "
                f"{output or record.parent} to start over"
            )
    elif write:
        write_json_atomic(record, fingerprint)
    return fingerprint


def check_recipe_config(
    output_dir: str | Path,
    stage: str,
    config: Any,
    training_args: Any,
    model_args: Any,
    *,
    write: bool = True,
    ignore: Iterable[str] = (),
) -> dict[str, Any]:
    """Record (``write``: the main process) or check a recipe's configuration in ``<output_dir>/run_config.json``.

    Keys are ``<stage>.*`` (the recipe's own dataclass), ``training.*`` (the trainer's arguments, less those that
    change no result: :data:`RECIPE_IGNORE`) and ``model.*``; ``ignore`` adds patterns of keys that change nothing a
    resume reuses. Raises :class:`ResumeConfigError` naming the keys that differ from the recorded ones.
    """
    mapping = {
        **{f"{stage}.{k}": v for k, v in asdict(config).items()},
        **{f"training.{k}": v for k, v in training_args.to_dict().items()},
        **{f"model.{k}": v for k, v in asdict(model_args).items()},
    }
    return check_run_config(Path(output_dir) / RUN_CONFIG, mapping, (*RECIPE_IGNORE, *ignore), write=write)


def fault_point(phase: str) -> None:
    """Exit at once (status 137, like SIGKILL) when ``FASTSLOW_FAULT`` names ``phase``: the reliability tests' kill.

    ``FASTSLOW_FAULT=<phase>`` fires the first time the process reaches ``phase``; ``<phase>@<n>`` the ``n``-th time.
    Unset (always, outside those tests) it costs one dictionary look-up.
    """
    wanted = os.environ.get("FASTSLOW_FAULT")
    if not wanted:
        return
    name, _, nth = wanted.partition("@")
    if name != phase:
        return
    _REACHED[phase] = _REACHED.get(phase, 0) + 1
    if _REACHED[phase] == int(nth or 1):
        os._exit(137)


_REACHED: dict[str, int] = {}
