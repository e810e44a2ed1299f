"""The parent side of the sandbox: start the harness (a fork of the fork server, or a fresh interpreter), feed it
one solution's spec, collect its records, enforce the backstop, and judge the outputs.

The harness itself is :mod:`rewards.sandbox.harness`, run by path in the child interpreter; how a solution is
contained is described in :mod:`rewards.sandbox`.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import marshal
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from rewards.sandbox.limits import SandboxLimits
from rewards.sandbox.results import CaseResult, SandboxResult, check_syntax, judge_record, normalize_tests

logger = logging.getLogger("rewards.sandbox")

#: The harness program, run by path in the child interpreter (``python -I -S harness.py``); see its docstring.
HARNESS_PATH = Path(__file__).with_name("harness.py")

_FALLBACK_WARNED = False
_NAMESPACES_BROKEN = False
_SLOT_LOCK = threading.Lock()
_SLOTS_IN_USE: set[int] = set()


def _isolation(limits: SandboxLimits) -> str:
    global _FALLBACK_WARNED
    if limits.isolation not in ("auto", "namespaces", "rlimits"):
        raise ValueError(f"SandboxLimits.isolation must be auto, namespaces or rlimits, got {limits.isolation!r}")
    root = os.geteuid() == 0
    if limits.isolation == "namespaces" and not root:
        raise PermissionError("isolation='namespaces' needs root (private namespaces and a user switch)")
    if limits.isolation == "rlimits" or not root or (limits.isolation == "auto" and _NAMESPACES_BROKEN):
        if not _FALLBACK_WARNED and limits.isolation == "auto":
            _FALLBACK_WARNED = True
            logger.warning(
                "code sandbox without namespaces (not root, or unshare failed): solutions keep network access and "
                "the calling user's rights; run untrusted code only inside a container"
            )
        return "rlimits"
    return "namespaces"


@contextlib.contextmanager
def _uid(limits: SandboxLimits) -> Iterator[tuple[int, int] | None]:
    """The (uid, gid) to run as, held for the duration; None when no switch is possible (not root)."""
    if os.geteuid() != 0:
        yield None
        return
    if limits.user == "nobody":
        yield (65534, 65534)
        return
    if limits.user != "dedicated":
        if not str(limits.user).isdigit() or int(limits.user) == 0:
            raise ValueError(
                f"SandboxLimits.user must be 'dedicated', 'nobody' or a non-zero uid, got {limits.user!r}"
            )
        yield (int(limits.user), int(limits.user))
        return
    lock_dir = os.path.join(tempfile.gettempdir(), "fastslow-uid-locks")
    os.makedirs(lock_dir, mode=0o700, exist_ok=True)
    while True:  # a free slot: free in this process (set) and in others (flock)
        for slot in range(limits.uid_count):
            uid = limits.uid_base + slot
            with _SLOT_LOCK:
                if uid in _SLOTS_IN_USE:
                    continue
                _SLOTS_IN_USE.add(uid)
            fd = os.open(os.path.join(lock_dir, str(uid)), os.O_CREAT | os.O_RDWR, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                with _SLOT_LOCK:
                    _SLOTS_IN_USE.discard(uid)
                continue
            try:
                yield (uid, uid)
            finally:
                os.close(fd)  # releases the flock
                with _SLOT_LOCK:
                    _SLOTS_IN_USE.discard(uid)
            return
        time.sleep(0.01)


@functools.lru_cache(maxsize=8)
def _keep_paths(python: str) -> list[str]:
    """What must stay visible under hidden paths: the interpreter and its standard library."""
    import sysconfig

    paths = {os.path.realpath(sys.base_prefix), os.path.dirname(os.path.realpath(python))}
    paths.add(os.path.realpath(sysconfig.get_paths()["stdlib"]))
    return sorted(paths)


def _clean_env(workdir: str) -> dict[str, str]:
    # Built from scratch: nothing of the caller's environment (tokens, keys) reaches the solution.
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": workdir,
        "TMPDIR": workdir,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONHASHSEED": "0",
    }


def _limits_dict(limits: SandboxLimits) -> dict[str, Any]:
    return {
        "timeout_s": float(limits.timeout_s),
        "cpu_s": max(1, int(limits.cpu_s)),
        "memory_mb": int(limits.memory_mb),
        "max_processes": int(limits.max_processes),
        "max_file_mb": int(limits.max_file_mb),
        "max_open_files": int(limits.max_open_files),
        "max_output_bytes": int(limits.max_output_bytes),
        "max_disk_mb": int(limits.max_disk_mb),
    }


def run_tests(
    code: str, tests: Any, limits: SandboxLimits | None = None, stop_after_failures: int | None = None
) -> SandboxResult:
    """Run ``code`` against ``tests`` (see :func:`normalize_tests`) in the sandbox; never raises for bad code.

    ``stop_after_failures``: once that many cases have failed, the sandbox is killed and the cases not yet run are
    ``skipped`` (1 for an all-or-nothing score: a solution stuck in a loop then costs one timeout, not one per
    case). Raises ``ValueError`` for malformed ``tests``.
    """
    limits = limits or SandboxLimits()
    cases = normalize_tests(tests)
    kinds = ["assert" if "assert" in c else "stdio" for c in cases]
    error = check_syntax(code)
    if error is not None:
        return SandboxResult([CaseResult(i, k, "syntax_error", detail=error) for i, k in enumerate(kinds)], "none")
    if not cases:
        return SandboxResult([], "none")
    isolation = _isolation(limits)
    raw, notes, stopped = _run_harness(code, cases, kinds, limits, isolation, stop_after_failures)
    if raw is None and isolation == "namespaces" and limits.isolation == "auto":
        isolation = _isolation(limits)  # unshare failed and the fallback is now chosen
        raw, notes, stopped = _run_harness(code, cases, kinds, limits, isolation, stop_after_failures)
    missing = "the sandbox died before this case finished"
    if raw is None:
        missing = f"the sandbox could not start: {notes[0] if notes else 'unknown error'}"
    raw = raw or []
    results = [judge_record(i, cases[i], kinds[i], rec) for i, rec in enumerate(raw[: len(cases)])]
    for i in range(len(results), len(cases)):
        if stopped:
            results.append(CaseResult(i, kinds[i], "skipped", detail=f"not run: {stop_after_failures} case(s) failed"))
        else:
            results.append(CaseResult(i, kinds[i], "error", detail=missing))
    return SandboxResult(results, isolation, notes)


def _run_harness(
    code: str,
    cases: list[dict[str, str]],
    kinds: list[str],
    limits: SandboxLimits,
    isolation: str,
    stop_after_failures: int | None,
) -> tuple[list[dict[str, Any]] | None, list[str], bool]:
    """Raw per-case records from one sandbox process (fewer than the cases if it died or was stopped), its notes,
    and whether it was stopped after ``stop_after_failures`` failures; records are None if it could not start."""
    global _NAMESPACES_BROKEN
    failures, seen = 0, 0

    def on_record(rec: dict[str, Any]) -> bool:  # judged as they arrive, to stop early
        nonlocal failures, seen
        if seen < len(cases) and not judge_record(seen, cases[seen], kinds[seen], rec).passed:
            failures += 1
        seen += 1
        return stop_after_failures is not None and failures >= stop_after_failures

    # With namespaces the working directory is a tmpfs inside them; otherwise a host directory, deleted after.
    workdir = None if isolation == "namespaces" else tempfile.mkdtemp(prefix="fastslow-sandbox-")
    try:
        with _uid(limits) as ids:
            if ids is not None and workdir is not None:
                os.chown(workdir, *ids)
            spec = {
                "code": code,
                # inputs and assert statements only: expected outputs stay out of the sandbox
                "cases": [{"assert": c["assert"]} if "assert" in c else {"input": c["input"]} for c in cases],
                "limits": _limits_dict(limits),
                "uid": list(ids) if ids else None,
                "namespaces": isolation == "namespaces",
                "workdir": workdir,
                "hide_paths": [p.rstrip("/") for p in limits.hide_paths],
                "keep_paths": _keep_paths(limits.python),
            }
            backstop = limits.total_timeout_s or len(cases) * (limits.timeout_s + 1.0) + 10.0
            launch = _serve_forked if limits.fork_server else _launch
            stdout, stopped = launch(spec, workdir, limits, backstop, on_record)
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
    records, notes = [], []
    for rec in _records(stdout):
        if "fatal" in rec:
            logger.warning("sandbox could not start: %s", rec["fatal"])
            if isolation == "namespaces" and limits.isolation == "auto":
                _NAMESPACES_BROKEN = True
            return None, [rec["fatal"]], False
        if "pid" in rec or "init" in rec or "case" in rec:
            continue
        if rec.get("ready"):
            notes = rec.get("notes", [])
            for note in notes:
                logger.debug("sandbox: %s", note)
            continue
        records.append(rec)
    return records, notes, stopped


def _records(data: bytes) -> Iterator[dict[str, Any]]:
    """The harness's records: each a 4-byte little-endian length, then marshal data (written by our own code)."""
    for rec, _ in _records_from(data, 0):
        yield rec


def _records_from(data: bytes, pos: int) -> Iterator[tuple[dict[str, Any], int]]:
    """Complete records from offset ``pos`` on, each with the offset after it; a truncated last one is left."""
    while pos + 4 <= len(data):
        size = int.from_bytes(data[pos : pos + 4], "little")
        if pos + 4 + size > len(data):
            return  # not all there yet, or the harness was killed mid-write
        yield marshal.loads(data[pos + 4 : pos + 4 + size]), pos + 4 + size
        pos += 4 + size


def _launch(
    spec: dict[str, Any], workdir: str | None, limits: SandboxLimits, backstop: float, on_record: OnRecord | None
) -> tuple[bytes, bool]:
    """Run the harness as a fresh interpreter (``fork_server=False``); its records."""
    argv = [limits.python, "-I"] + ([] if limits.site_packages else ["-S"]) + [str(HARNESS_PATH)]
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=workdir or "/",
        env=_clean_env(workdir or "/tmp"),
        close_fds=True,
        start_new_session=True,  # its own process group, killed as one by the backstop
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write(marshal.dumps(spec))
            proc.stdin.close()
        fd = proc.stdout.fileno()

        def recv(timeout: float) -> bytes:
            if not select.select([fd], [], [], timeout)[0]:
                raise TimeoutError
            return os.read(fd, 1 << 20)

        return _collect(recv, backstop, on_record)
    finally:
        proc.stdout.close()
        proc.wait()


def _kill_group(pid: int | None) -> None:
    if pid is not None and pid > 1:  # never 0 or -1: those would mean our own group, or everything
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


class _ForkServer:
    """A long-lived harness process that forks a fresh harness per solution (see ``fork_server`` in the harness).

    One per interpreter configuration and caller process, started on first use and restarted if it dies. Python
    start-up (~10-30 ms) is paid once instead of per solution, which is what brings the sandbox's cost below
    a bare ``subprocess.run`` per test case.
    """

    _servers: dict[tuple[str, bool, int], _ForkServer] = {}
    _servers_lock = threading.Lock()

    def __init__(self, python: str, site_packages: bool) -> None:
        self.python, self.site_packages = python, site_packages
        self.lock = threading.Lock()
        self.proc: subprocess.Popen[bytes] | None = None
        self.control: socket.socket | None = None

    @classmethod
    def get(cls, limits: SandboxLimits) -> _ForkServer:
        key = (limits.python, limits.site_packages, os.getpid())  # a forked caller starts its own
        with cls._servers_lock:
            if key not in cls._servers:
                cls._servers[key] = cls(limits.python, limits.site_packages)
            return cls._servers[key]

    def _start(self) -> None:
        if self.control is not None:  # a dead server's leftovers
            self.control.close()
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        argv = [self.python, "-I"] + ([] if self.site_packages else ["-S"])
        argv += [str(HARNESS_PATH), "fork-server", str(theirs.fileno())]
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            cwd="/",
            env=_clean_env("/tmp"),  # inside the namespaces /tmp is the working directory
            pass_fds=(theirs.fileno(),),
            start_new_session=True,
        )
        theirs.close()
        self.control = ours

    def connect(self) -> socket.socket:
        """A socket to a freshly forked harness (restarting the server once if it died)."""
        with self.lock:
            for _ in range(2):
                if self.proc is None or self.proc.poll() is not None or self.control is None:
                    self._start()
                job, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    socket.send_fds(self.control, [b"j"], [theirs.fileno()])
                    return job
                except OSError:
                    job.close()
                    if self.proc is not None:
                        with contextlib.suppress(ProcessLookupError):
                            self.proc.kill()  # not answering: start another
                        self.proc.wait()
                    self.proc = None
                finally:
                    theirs.close()
        raise RuntimeError("the sandbox fork server does not accept requests")


def _after_fork_in_child() -> None:
    # A forked caller (a data-loader worker, say) starts its own server; locks held by another thread at the
    # fork would never be released in the child, so they are replaced.
    global _SLOT_LOCK
    for server in _ForkServer._servers.values():
        if server.control is not None:
            server.control.close()  # the child's copy only; the parent keeps its server
    _ForkServer._servers = {}
    _ForkServer._servers_lock = threading.Lock()
    _SLOT_LOCK = threading.Lock()
    _SLOTS_IN_USE.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _serve_forked(
    spec: dict[str, Any], workdir: str | None, limits: SandboxLimits, backstop: float, on_record: OnRecord | None
) -> tuple[bytes, bool]:
    """Run the harness as a fork of the fork server; its records."""
    job = _ForkServer.get(limits).connect()
    try:
        job.sendall(marshal.dumps(spec))
        job.shutdown(socket.SHUT_WR)

        def recv(timeout: float) -> bytes:
            job.settimeout(timeout)
            return job.recv(1 << 20)

        return _collect(recv, backstop, on_record)
    except OSError as exc:  # the harness died before reading its spec
        logger.debug("sandbox harness connection failed: %s", exc)
        return b"", False
    finally:
        job.close()


OnRecord = Callable[[dict[str, Any]], bool]


def _collect(recv: Callable[[float], bytes], backstop: float, on_record: OnRecord | None) -> tuple[bytes, bool]:
    """Everything the harness writes until it exits, and whether ``on_record`` stopped it early.

    Past ``backstop`` seconds the harness is killed (see ``_stop``); so it is as soon as ``on_record`` returns True
    for a case's record (enough cases have failed).
    """
    deadline = time.monotonic() + backstop
    data, pos, handles, stage, stopped = bytearray(), 0, {}, 0, False
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            if stage == 0 and not stopped:
                logger.warning("sandbox exceeded its backstop of %.1fs; killing it", backstop)
            if stage == 2:
                break
            _stop(handles, hard=stage == 1)
            stage, deadline = stage + 1, time.monotonic() + 5.0
            continue
        try:
            chunk = recv(remaining)
        except TimeoutError:
            continue
        if not chunk:
            break
        data += chunk
        for rec, end in _records_from(bytes(data), pos):  # note the processes to kill, as they are announced
            handles.update({k: rec[k] for k in ("pid", "init", "case") if k in rec})
            pos = end
            if not stopped and "status" in rec and on_record is not None and on_record(rec):
                stopped = True
                _stop(handles, hard=False)
                stage, deadline = 1, time.monotonic() + 5.0
    return bytes(data), stopped


def _stop(handles: dict[str, int], hard: bool) -> None:
    """Kill a sandbox. With namespaces, killing its PID 1 makes the kernel kill every process inside, and the
    harness exits (closing its end) only once they are all gone; otherwise, or if that did not end it (``hard``),
    its process group and the running case's group are killed."""
    init = handles.get("init")
    if init is not None and init > 1 and not hard:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(init, signal.SIGKILL)
        return
    _kill_group(handles.get("pid"))
    _kill_group(handles.get("case"))
    for key in ("pid", "case"):  # SIGKILL takes effect asynchronously: be sure before saying it is gone
        _wait_dead(handles.get(key))


def _wait_dead(pid: int | None, timeout: float = 2.0) -> None:
    """Wait until ``pid`` is gone or a zombie (dead, waiting to be reaped by its parent)."""
    deadline = time.monotonic() + timeout
    while pid is not None and pid > 1 and time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            return
        if state in (b"Z", b"X"):
            return
        time.sleep(0.005)


def run_many(
    jobs: Sequence[tuple[str, Any]],
    limits: SandboxLimits | None = None,
    max_workers: int | None = None,
    stop_after_failures: int | None = None,
) -> list[SandboxResult]:
    """``run_tests`` for each ``(code, tests)`` pair, ``max_workers`` sandboxes at a time (default: CPU count).

    Raises ``ValueError`` naming the job whose tests are malformed, before anything runs.
    """
    limits = limits or SandboxLimits()
    checked = []
    for j, (code, tests) in enumerate(jobs):
        try:
            checked.append((code, normalize_tests(tests)))
        except ValueError as exc:
            raise ValueError(f"job {j}: {exc}") from None
    workers = max(1, min(len(checked), max_workers or os.cpu_count() or 1))
    if workers == 1:
        return [run_tests(code, tests, limits, stop_after_failures) for code, tests in checked]
    with ThreadPoolExecutor(workers, thread_name_prefix="sandbox") as pool:
        return list(pool.map(lambda job: run_tests(job[0], job[1], limits, stop_after_failures), checked))
