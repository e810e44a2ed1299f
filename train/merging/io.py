"""Streaming safetensors I/O: read one tensor at a time, write sharded checkpoints tensor by tensor.

Why not ``safetensors.safe_open``: it memory-maps the files, and every mapped page a merge touches stays in the
process's resident set until the file is closed, so after a merge the resident set holds every input whole, which is
exactly what streaming is meant to avoid. Mapping each tensor's byte range on its own (unmapped once it is merged)
keeps only the tensors in flight in memory. The format is simple (an 8-byte little-endian header length, a JSON header
with each tensor's dtype, shape and byte range, then the raw data), so reader and writer are a few dozen lines each
and the files they write load with the official ``safetensors`` library and ``from_pretrained``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import mmap
import os
import re
import shutil
import struct
import sys
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from train.core.fingerprint import fault_point

logger = logging.getLogger(__name__)

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}

# madvise(2) advice that faults a mapping's pages in (read-only) in one call: Linux 5.14+; Python 3.11 lacks the name
_MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22 if sys.platform.startswith("linux") else None)


class CheckpointError(ValueError):
    """A checkpoint folder or file that cannot be read as safetensors."""


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: file, dtype, shape and absolute byte range."""

    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def read_header(path: str | Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse a safetensors header: ``({name: TensorInfo}, metadata)``. Reads only the header bytes."""
    path = Path(path)
    with open(path, "rb") as f:
        raw_len = f.read(8)
        if len(raw_len) != 8:
            raise CheckpointError(f"{path}: too short to be a safetensors file")
        (n,) = struct.unpack("<Q", raw_len)
        if n > 100_000_000:
            raise CheckpointError(f"{path}: implausible safetensors header length {n}")
        try:
            header = json.loads(f.read(n))
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path}: safetensors header is not valid JSON ({e})") from e
    data_start = 8 + n
    metadata = header.pop("__metadata__", None) or {}
    entries = {}
    for name, meta in header.items():
        if meta["dtype"] not in DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {meta['dtype']}")
        start, end = meta["data_offsets"]
        entries[name] = TensorInfo(
            path, DTYPES[meta["dtype"]], tuple(meta["shape"]), data_start + start, data_start + end
        )
    return entries, metadata


def weight_files(folder: str | Path) -> list[Path]:
    """The safetensors files of a ``save_pretrained`` folder, sharded (index) or not."""
    folder = Path(folder)
    index = folder / INDEX_NAME
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [folder / f for f in sorted(set(weight_map.values()))]
    single = folder / SINGLE_NAME
    if single.is_file():
        return [single]
    if any(folder.glob("*.bin")) or any(folder.glob("*.pt")):
        raise CheckpointError(
            f"{folder}: only pickle weights (*.bin/*.pt) found; merging reads safetensors only "
            "(re-save with model.save_pretrained(dir) to convert)"
        )
    raise CheckpointError(f"{folder}: no {SINGLE_NAME} or {INDEX_NAME} found")


class SafetensorsCheckpoint:
    """Random access to the tensors of a (possibly sharded) safetensors checkpoint, one tensor at a time.

    Each tensor is a private (copy-on-write) memory map of just its byte range: reading is zero-copy from the page
    cache, a stray write never reaches the file, and the mapping (and its pages in the resident set) goes away when
    the last reference to the tensor does. Mapping whole files instead would keep
    every page a merge touched resident until the end, i.e. whole models.
    """

    def __init__(self, folder: str | Path, files: list[Path] | None = None):
        self.folder = Path(folder)
        self.files = weight_files(self.folder) if files is None else [Path(f) for f in files]
        self.entries: dict[str, TensorInfo] = {}
        for f in self.files:
            entries, _ = read_header(f)
            for name, info in entries.items():
                if name in self.entries:
                    raise CheckpointError(f"{self.folder}: tensor {name!r} appears in two shards")
                self.entries[name] = info
        self._handles: dict[Path, object] = {}
        self._hash_jobs: dict[Path, Future] = {}

    @classmethod
    def from_files(cls, folder: str | Path, files: list[Path]) -> SafetensorsCheckpoint:
        """A checkpoint made of explicit files (e.g. a PEFT ``adapter_model.safetensors``)."""
        return cls(folder, files)

    def names(self) -> list[str]:
        """Tensor names in storage order (file, then offset), the order that reads the files sequentially."""
        order = {f: i for i, f in enumerate(self.files)}
        return sorted(self.entries, key=lambda n: (order[self.entries[n].file], self.entries[n].start))

    def info(self, name: str) -> TensorInfo:
        try:
            return self.entries[name]
        except KeyError:
            raise CheckpointError(f"{self.folder}: no tensor named {name!r}") from None

    def read(self, name: str, prefault: bool = False) -> torch.Tensor:
        """One tensor, backed by a private memory map of its bytes (writable; writes never reach the file).

        ``prefault``: map its pages in now (``MADV_POPULATE_READ``, Linux 5.14+; ignored elsewhere) rather than one
        page fault at a time when the merge first touches them; the streaming merge does this on its reader thread.
        """
        info = self.info(name)
        numel = math.prod(info.shape)
        if not info.nbytes:
            return torch.empty(info.shape, dtype=info.dtype)
        if info.nbytes != numel * torch.empty((), dtype=info.dtype).element_size():
            raise CheckpointError(f"{info.file}: byte range of tensor {name!r} does not match its shape and dtype")
        start = info.start - info.start % mmap.ALLOCATIONGRANULARITY
        f = self._handle(info.file)
        try:
            mm = mmap.mmap(f.fileno(), info.end - start, offset=start, access=mmap.ACCESS_COPY)
        except (ValueError, OSError) as e:
            raise CheckpointError(f"{info.file}: cannot read tensor {name!r} ({e}); is the file truncated?") from e
        if prefault and _MADV_POPULATE_READ is not None:
            try:
                mm.madvise(_MADV_POPULATE_READ)
            except OSError:  # an older kernel: the pages fault in on first touch instead
                pass
        # The tensor keeps ``mm`` alive; the mapping is released with the tensor. Merges only read it (writing would
        # copy page by page, much slower than computing into a fresh buffer); ACCESS_COPY just makes a stray write
        # harmless to the file.
        return torch.frombuffer(mm, dtype=info.dtype, count=numel, offset=info.start - start).view(info.shape)

    def start_hashing(self, executor: Executor) -> None:
        """Hash the weight files in the background (hashlib releases the GIL), overlapping the merge."""
        for path in self.files:
            self._hash_jobs.setdefault(path, executor.submit(sha256_file, path))

    def file_hashes(self) -> dict[Path, str]:
        """sha256 of every weight file (from :meth:`start_hashing` when it was called)."""
        return {p: (self._hash_jobs[p].result() if p in self._hash_jobs else sha256_file(p)) for p in self.files}

    def _handle(self, path: Path):
        if path not in self._handles:
            if path.stat().st_size < max(i.end for i in self.entries.values() if i.file == path):
                raise CheckpointError(f"{path}: file is shorter than its header says (truncated?)")
            self._handles[path] = open(path, "rb")  # noqa: SIM115 - closed in close()
        return self._handles[path]

    def close(self) -> None:
        for f in self._handles.values():
            f.close()
        self._handles.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def parse_size(size: int | str) -> int:
    """``5000000``, ``"500MB"``, ``"5GB"``, ``"2GiB"`` -> bytes."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(I?)B?\s*", str(size).upper())
    if not m:
        raise ValueError(f"cannot parse size {size!r}; use bytes or e.g. '500MB', '5GB'")
    number, unit, binary = m.groups()
    base = 1024 if binary else 1000
    return int(float(number) * base ** "_KMGT".index(unit or "_"))


@dataclass(frozen=True)
class OutputTensor:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n * torch.empty((), dtype=self.dtype).element_size()


SYNC_EVERY = 64 << 20  # bytes written between the writer's intermediate data syncs of a shard
_datasync = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync


class ShardedWriter:
    """Write a safetensors checkpoint whose layout (names, dtypes, shapes) is known up front, one tensor at a time.

    Knowing the layout lets every shard's header be written before its data, so nothing is buffered: each tensor
    goes straight to disk when ``write`` is called. Tensors must be written in layout order. Shards are cut before a
    tensor that would push a shard past ``max_shard_size`` (a single larger tensor gets a shard of its own), and an
    index file is written when there is more than one shard, as ``save_pretrained`` does.
    """

    def __init__(
        self,
        folder: str | Path,
        layout: Iterable[OutputTensor],
        max_shard_size: int | str = "5GB",
        background: bool = True,
        hash_files: bool = True,
        max_queued: int | str = "64MB",
    ):
        self.folder = Path(folder)
        self.layout = list(layout)
        limit = parse_size(max_shard_size)
        shards: list[list[OutputTensor]] = [[]]
        size = 0
        for t in self.layout:
            if shards[-1] and size + t.nbytes > limit:
                shards.append([])
                size = 0
            shards[-1].append(t)
            size += t.nbytes
        n = len(shards)
        names = [SINGLE_NAME] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        self.shards = list(zip(names, shards))
        self._order = [t.name for _, shard in self.shards for t in shard]
        self._next = 0
        self._file = None
        self._shard_idx = -1
        self._remaining_in_shard = 0
        self.hashes: dict[str, str] = {}  # shard file name -> sha256, computed while writing
        self._hash_files = hash_files
        # One background thread writes (and hashes) in order while the caller computes the next tensors. Queued
        # tensors are capped at ``max_queued`` bytes (one larger tensor may always be queued alone), so after a big
        # tensor the caller can go on with the small ones that follow instead of waiting for its write.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="merge-write") if background else None
        self._pending: deque[tuple[Future, int]] = deque()
        self._queued = 0
        self.max_queued = parse_size(max_queued)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Queue ``tensor`` (the next one in layout order) for writing; errors of earlier writes surface here."""
        if self._next >= len(self._order) or self._order[self._next] != name:
            expected = self._order[self._next] if self._next < len(self._order) else "nothing"
            raise RuntimeError(f"tensors must be written in layout order: got {name!r}, expected {expected!r}")
        spec = self.layout_by_name[name]
        if tuple(tensor.shape) != spec.shape or tensor.dtype != spec.dtype:
            raise RuntimeError(
                f"tensor {name!r} is {tensor.dtype} {tuple(tensor.shape)}, layout says {spec.dtype} {spec.shape}"
            )
        self._next += 1
        tensor = tensor.detach().contiguous()
        if self._worker is None:
            self._write_now(tensor)
            return
        nbytes = tensor.numel() * tensor.element_size()
        while self._pending and self._queued + nbytes > self.max_queued:
            self._wait_one()
        self._pending.append((self._worker.submit(self._write_now, tensor), nbytes))
        self._queued += nbytes

    def _wait_one(self) -> None:
        pending, nbytes = self._pending.popleft()
        self._queued -= nbytes
        pending.result()

    def _wait(self) -> None:
        while self._pending:
            self._wait_one()

    def _write_now(self, tensor: torch.Tensor) -> None:
        if self._remaining_in_shard == 0:
            self._open_next_shard()
        if tensor.numel():
            self._emit(memoryview(tensor.view(-1).view(torch.uint8).numpy()))
        self._remaining_in_shard -= 1
        if self._remaining_in_shard == 0:
            self._close_shard()
        elif self._unsynced >= SYNC_EVERY:
            # Flush what is written so far while the merge still computes, so that the shard's closing fsync only
            # waits for the last few MB instead of the whole shard (it is still what makes the shard durable).
            self._file.flush()
            _datasync(self._file.fileno())
            self._unsynced = 0

    @property
    def layout_by_name(self) -> dict[str, OutputTensor]:
        if not hasattr(self, "_by_name"):
            self._by_name = {t.name: t for t in self.layout}
        return self._by_name

    def _open_next_shard(self) -> None:
        self._shard_idx += 1
        fname, shard = self.shards[self._shard_idx]
        header: dict[str, object] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for t in shard:
            header[t.name] = {
                "dtype": DTYPE_NAMES[t.dtype],
                "shape": list(t.shape),
                "data_offsets": [offset, offset + t.nbytes],
            }
            offset += t.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned, as the reference writer does
        self._file = open(self.folder / fname, "wb")  # noqa: SIM115 - closed in _close_shard()
        self._hash = hashlib.sha256() if self._hash_files else None
        self._unsynced = 0
        self._emit(struct.pack("<Q", len(raw)))
        self._emit(raw)
        self._remaining_in_shard = len(shard)

    def _emit(self, data) -> None:
        self._file.write(data)
        self._unsynced += len(data)
        if self._hash is not None:
            self._hash.update(data)

    def _close_shard(self) -> None:
        if self._hash is not None:
            self.hashes[self.shards[self._shard_idx][0]] = self._hash.hexdigest()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None

    def close(self) -> None:
        """Finish the pending write, check every tensor was written and write the index for sharded output."""
        try:
            self._wait()
        finally:
            self._shutdown()
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._next != len(self._order):
            raise RuntimeError(f"only {self._next} of {len(self._order)} tensors were written")
        if len(self.shards) > 1:
            index = {
                "metadata": {"total_size": sum(t.nbytes for t in self.layout)},
                "weight_map": {t.name: fname for fname, shard in self.shards for t in shard},
            }
            (self.folder / INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")

    def abort(self) -> None:
        """After a failure: cancel the queued writes, wait for the running one (ignoring errors), close the file."""
        try:
            for pending, _ in self._pending:
                pending.cancel()
            while self._pending:
                try:
                    self._wait_one()
                except Exception:  # noqa: BLE001 - the caller is already handling the first error
                    pass
        finally:
            self._shutdown()
        if self._file is not None:
            self._file.close()
            self._file = None

    def _shutdown(self) -> None:
        if self._worker is not None:
            self._worker.shutdown(wait=True)
            self._worker = None


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file (same value as ``sha256sum``), read into one reused 1 MB buffer.

    Reusing the buffer (rather than ``f.read``, a fresh 8 MB object per call) saves a page fault per 4 KB read and
    keeps the data in cache between the copy and the hash: ~40% less time per file.
    """
    h = hashlib.sha256()
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


# -- atomic, self-cleaning commits of an output folder ------------------------------------------------------------
#
# An output folder is written whole into ``.<name>.partial-<pid>`` and renamed into place. Replacing an existing one
# takes three steps: ``out -> .<name>.old-<pid>``, ``partial -> out``, remove the old folder. A kill between them
# leaves ``out`` missing (the old one hidden) or a whole checkpoint behind; :func:`recover_commit`, run at the next
# start, restores the old folder when the new one never arrived and removes it when it did, and removes the partial
# folders of dead processes. Renames are atomic, so ``out`` is either the whole old folder or the whole new one.


def partial_dir(out: Path) -> Path:
    """Where this process writes ``out`` before committing it."""
    return out.parent / f".{out.name}.partial-{os.getpid()}"


def _dead_siblings(out: Path, kind: str) -> list[Path]:
    """``.<name>.<kind>-<pid>`` folders next to ``out`` whose process is gone (another user's live one is kept)."""
    found = []
    for p in sorted(out.parent.glob(f".{out.name}.{kind}-*")):
        try:
            os.kill(int(p.name.rsplit("-", 1)[1]), 0)
        except (ValueError, ProcessLookupError):
            found.append(p)
        except PermissionError:
            pass
    return found


def recover_commit(out: str | Path) -> None:
    """Finish or undo a commit into ``out`` that a kill interrupted, and remove the partial outputs of dead runs."""
    out = Path(out)
    for old in _dead_siblings(out, "old"):
        if out.exists():  # the new folder arrived whole: the old one is a leftover
            logger.warning("removing %s, left by a commit into %s that was killed", old, out)
            shutil.rmtree(old, ignore_errors=True)
        else:  # killed between the two renames: the old output comes back
            logger.warning("restoring %s from %s, hidden by a commit that was killed", out, old)
            os.rename(old, out)
    for partial in _dead_siblings(out, "partial"):
        logger.info("removing stale partial output %s", partial)
        shutil.rmtree(partial, ignore_errors=True)


def commit_dir(tmp: Path, out: Path, overwrite: bool) -> None:
    """Rename the finished folder ``tmp`` into place; an existing ``out`` is swapped out only after ``tmp`` is whole.

    ``FASTSLOW_FAULT=commit`` kills the process just before the final rename (the reliability tests).
    """
    if out.exists():
        if any(out.iterdir()) and not overwrite:
            raise FileExistsError(f"{out} appeared while writing it; not replacing it")
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.rename(out, old)
        fault_point("commit")
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        fault_point("commit")
        os.rename(tmp, out)


__all__ = [
    "CheckpointError",
    "OutputTensor",
    "SafetensorsCheckpoint",
    "ShardedWriter",
    "TensorInfo",
    "commit_dir",
    "parse_size",
    "partial_dir",
    "read_header",
    "recover_commit",
    "sha256_file",
    "weight_files",
]
