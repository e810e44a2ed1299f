"""Run untrusted Python solutions against test cases, contained.

``run_tests(code, tests, limits) -> SandboxResult`` runs one solution against its cases and says, per case, what
happened (``passed``, ``wrong_answer``, ``error``, ``timeout``, ``memory``, ``output_limit``, ``syntax_error``).
``run_many`` does the same for a batch on a thread pool (each thread waits on its own sandbox process).

How a solution is contained (one sandbox process per solution; each case runs in a fresh fork of it):

* **Syntax first.** The code is compiled in the calling process (compiling runs nothing); a syntax error scores
  every case ``syntax_error`` without starting a process.
* **A separate process** per solution: a fork of a long-lived *fork server* (``python -I -S -c <harness>``,
  started once per calling process with an environment built from scratch: no inherited variables, so no
  secrets), in its own session and process group, with a private temporary working directory that is deleted
  afterwards. Forking a ready interpreter instead of starting one per solution is what keeps the sandbox as
  cheap as a bare ``subprocess.run`` per case; ``fork_server=False`` starts a fresh interpreter instead (same
  isolation).
* **Namespaces** (``isolation="namespaces"``, needs root): the harness unshares a new network namespace (only a
  downed loopback: no network at all, not even to the host's localhost), a new PID namespace (the harness's child
  is PID 1 there; solutions cannot see or signal any process outside, and when PID 1 exits the kernel kills every
  process left inside, so nothing outlives the sandbox), a new mount namespace (the working directory is a tmpfs
  of ``max_disk_mb`` on ``/tmp``, also mounted on ``/var/tmp``, ``/dev/shm`` and ``/run/lock``, the only
  world-writable places, so nothing can be written outside it and nothing reaches the host's disk; ``hide_paths``
  such as ``/root`` and ``/work``, where data sets with expected outputs live, are covered by empty read-only
  tmpfs; a fresh ``/proc``), and new IPC and UTS namespaces.
* **An unprivileged user.** Each case runs as a dedicated uid (``uid_base`` + a slot, allocated across threads
  and processes with lock files) or as ``nobody``; this is what makes the process-count limit apply at all (it
  does not apply to root) and what keeps the solution out of root-owned files. Dedicated uids keep one
  solution's fork bomb from starving another's process quota (``RLIMIT_NPROC`` counts per uid).
* **Resource limits** per case: CPU time (``RLIMIT_CPU``), address space (``RLIMIT_AS``), processes
  (``RLIMIT_NPROC``), file size (``RLIMIT_FSIZE``), open files, no core dumps; a wall-clock timeout; a cap on
  the bytes written to stdout + stderr; ``no_new_privs`` (no setuid program can hand privileges back). After each
  case every process left in the namespace is killed.
* **Backstop**: if the harness itself does not finish in time, the caller kills its whole process group.
* **Never ``kill(-1)`` as root outside the sandbox's own PID namespace**: the harness checks that it is PID 1
  before using it to clear a case's leftovers (elsewhere that call would kill every process on the machine).

Not root (``isolation="rlimits"``, chosen automatically): no namespaces and no user switch are possible, so the
solution runs as the calling user with the same resource limits, its own session (killed as a group after each
case) and the scrubbed environment. It can then reach the network, write where the user can, read
``/proc/<pid>/environ`` of the user's other processes, and a fork that escapes with ``setsid`` is not killed.
Use it only for trusted code or inside a container; a warning is logged once.

Expected outputs never enter the sandbox: the harness only receives inputs and assert statements, and returns
the raw outputs, which are compared here. (Assert cases are the exception by nature: the statement must run.)
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
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
from dataclasses import asdict, dataclass, field
from typing import Any

logger = logging.getLogger("rewards.sandbox")

STATUSES = ("passed", "wrong_answer", "error", "timeout", "memory", "output_limit", "syntax_error", "skipped")

#: Outcomes that come from the limits (as opposed to a solution that ran and was wrong).
LIMIT_STATUSES = ("timeout", "memory", "output_limit")


@dataclass
class SandboxLimits:
    """Limits and isolation settings for one solution's run."""

    timeout_s: float = field(default=4.0, metadata={"help": "Wall-clock limit per test case, in seconds."})
    cpu_s: int = field(
        default=2, metadata={"help": "CPU-time limit per test case, in whole seconds (RLIMIT_CPU; SIGKILL 1 s later)."}
    )
    memory_mb: int = field(default=512, metadata={"help": "Address-space limit per test case in MiB (RLIMIT_AS)."})
    max_processes: int = field(
        default=16,
        metadata={
            "help": "Processes and threads the solution's uid may have at once (RLIMIT_NPROC), itself included."
        },
    )
    max_file_mb: int = field(
        default=16, metadata={"help": "Largest file the solution may write, in MiB (RLIMIT_FSIZE)."}
    )
    max_disk_mb: int = field(
        default=64,
        metadata={
            "help": "Size of the private working directory (a tmpfs on /tmp) with namespaces; without them the "
            "working directory is on the host's disk and only max_file_mb applies, per file."
        },
    )
    max_open_files: int = field(default=64, metadata={"help": "Open file descriptors per process (RLIMIT_NOFILE)."})
    max_output_bytes: int = field(
        default=1 << 20, metadata={"help": "Cap on stdout + stderr bytes per test case; more is `output_limit`."}
    )
    total_timeout_s: float | None = field(
        default=None,
        metadata={
            "help": "Backstop wall-clock limit for the whole solution (harness included); None: the sum of the "
            "per-case limits plus 10 s."
        },
    )
    isolation: str = field(
        default="auto",
        metadata={
            "help": "`namespaces` (root: private network, PID, mount, IPC and UTS namespaces plus a user switch), "
            "`rlimits` (resource limits only; the only choice when not root), or `auto` (namespaces when root)."
        },
    )
    user: str = field(
        default="dedicated",
        metadata={
            "help": "Who runs the solution when root: `dedicated` (one uid per concurrent sandbox, from uid_base), "
            "`nobody`, or a numeric uid."
        },
    )
    uid_base: int = field(
        default=61000,
        metadata={"help": "First uid of the dedicated range; the range must not belong to real accounts."},
    )
    uid_count: int = field(default=256, metadata={"help": "Size of the dedicated uid range (concurrent sandboxes)."})
    hide_paths: tuple[str, ...] = field(
        default=("/root", "/home", "/work", "/mnt", "/srv", "/data"),
        metadata={
            "help": "Directories covered by an empty read-only tmpfs inside the sandbox (namespaces only), so "
            "solutions cannot read data sets or checkpoints; the interpreter's own prefix is kept visible."
        },
    )
    python: str = field(default=sys.executable, metadata={"help": "The interpreter that runs solutions."})
    fork_server: bool = field(
        default=True,
        metadata={
            "help": "Fork each sandbox from a long-lived server process instead of starting an interpreter per "
            "solution (same isolation, much lower start-up cost)."
        },
    )
    site_packages: bool = field(
        default=False,
        metadata={"help": "Let solutions import installed packages (drops `python -S`; slower start-up)."},
    )

    def __post_init__(self) -> None:
        positive = ("timeout_s", "cpu_s", "memory_mb", "max_processes", "max_file_mb", "max_disk_mb")
        positive += ("max_open_files", "max_output_bytes", "uid_count")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"SandboxLimits.{name} must be positive, got {getattr(self, name)!r}")
        if self.total_timeout_s is not None and not self.total_timeout_s > 0:
            raise ValueError(f"SandboxLimits.total_timeout_s must be positive or None, got {self.total_timeout_s!r}")
        self.hide_paths = tuple(self.hide_paths)  # a YAML list becomes a tuple (hashable, comparable)


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


# --------------------------------------------------------------------------------------------- test cases


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


# ---------------------------------------------------------------------------------------------- the harness

# The program the sandbox process runs (as `python -I -S -c`, either as the fork server or for one solution). For
# each solution it reads the spec (from its job socket, or stdin), sets up the namespaces, then runs each case in
# a fresh fork that drops privileges and sets the limits, and writes one record per case (to the socket, or
# stdout). It never sees expected outputs. Start-up time is most of the sandbox's overhead, so it
# imports only built-in C modules: `posix` rather than `os`, `marshal` rather than `json` (records are framed by a
# 4-byte length), `_signal` rather than `signal`, `_ctypes` rather than `ctypes`, and formats tracebacks itself;
# `json`, `signal`, `ctypes` and `traceback` would triple its start-up time.
_HARNESS = r"""
import posix, sys, marshal, resource, select, time, io, builtins, _signal

MEMORY_EXIT, ASSERT_EXIT = 201, 202
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x20000, 0x4000000, 0x8000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
SIGKILL, SIGXCPU, SIGXFSZ = _signal.SIGKILL, _signal.SIGXCPU, _signal.SIGXFSZ
WNOWAIT = posix.WNOWAIT


def read_all(fd):
    chunks = []
    while True:
        chunk = posix.read(fd, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


spec, result_fd, notes, pending, namespaced, limits = None, None, [], [], False, None


def emit(obj):
    data = marshal.dumps(obj)
    data = len(data).to_bytes(4, "little") + data
    while data:
        data = data[posix.write(result_fd, data):]


def is_dir(path):
    try:
        return (posix.lstat(path).st_mode & 0o170000) == 0o040000  # a directory, not a link to one
    except OSError:
        return False


def make_dirs(path):
    parts, cur = path.strip("/").split("/"), ""
    for part in parts:
        cur += "/" + part
        if not is_dir(cur):
            posix.mkdir(cur, 0o755)


def libc_functions():
    # What ctypes.CDLL(None) would give, from the C module alone.
    import _ctypes

    class c_int(_ctypes._SimpleCData):
        _type_ = "i"

    class c_char_p(_ctypes._SimpleCData):
        _type_ = "z"

    class c_ulong(_ctypes._SimpleCData):
        _type_ = "L"

    class Fn(_ctypes.CFuncPtr):
        _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
        _restype_ = c_int

    class Libc:
        _handle = _ctypes.dlopen(None, 2)  # RTLD_NOW

    unshare, mount, prctl = Fn(("unshare", Libc)), Fn(("mount", Libc)), Fn(("prctl", Libc))
    unshare.argtypes = (c_int,)
    mount.argtypes = (c_char_p, c_char_p, c_char_p, c_ulong, c_char_p)
    prctl.argtypes = (c_int, c_ulong, c_ulong, c_ulong, c_ulong)
    return unshare, mount, prctl, _ctypes.get_errno


LIBC = None  # (unshare, mount, prctl, get_errno), loaded once by the fork server


def setup_namespaces():
    unshare, libc_mount, prctl, get_errno = LIBC

    def mount(src, dst, fstype, flags, data=None):
        enc = lambda s: None if s is None else s.encode()
        if libc_mount(enc(src), enc(dst), enc(fstype), flags, enc(data)) != 0:
            err = get_errno()
            raise OSError(err, f"mount {src} on {dst}: {posix.strerror(err)}")

    if unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS) != 0:
        emit({"fatal": "unshare: " + posix.strerror(get_errno())})
        posix._exit(3)
    pid = posix.fork()  # the child is PID 1 of the new PID namespace
    if pid:
        # The caller's backstop kills this PID 1 (the kernel then kills the whole namespace, and this process
        # exits only once it is empty, so the caller's end-of-file means nothing is left).
        emit({"init": pid})
        status = posix.waitpid(pid, 0)[1]
        posix._exit(posix.waitstatus_to_exitcode(status) & 0xFF)
    if posix.getpid() != 1:
        emit({"fatal": "the PID namespace was not created"})
        posix._exit(3)
    prctl(1, SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG: die with the outer harness
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing below propagates back to the host
    keep = spec["keep_paths"]
    for hidden in spec["hide_paths"]:
        inside = [k for k in keep if k.startswith(hidden + "/")]
        if not is_dir(hidden):
            continue
        try:
            fds = [posix.open(k, posix.O_PATH) for k in inside]  # still reachable once the tmpfs covers `hidden`
            mount("tmpfs", hidden, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,mode=755")
            for k, fd in zip(inside, fds):
                make_dirs(k)
                mount(f"/proc/self/fd/{fd}", k, None, MS_BIND | MS_REC)
                posix.close(fd)
            mount(None, hidden, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
        except OSError as exc:
            notes.append(f"could not hide {hidden}: {exc}")
    # The working directory: a size-capped tmpfs on /tmp, owned by the solution's user, also mounted on the other
    # world-writable places. It vanishes with the namespace; nothing reaches the host's disk.
    uid, opts = spec["uid"], f"size={spec['limits']['max_disk_mb']}m,mode=700"
    mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, opts + (f",uid={uid[0]},gid={uid[1]}" if uid else ""))
    for shared in ("/var/tmp", "/dev/shm", "/run/lock"):
        if is_dir(shared):
            mount("/tmp", shared, None, MS_BIND)
    try:
        mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except OSError as exc:
        notes.append(f"fresh /proc not mounted: {exc}")
    return "/tmp"


def set_limits(lim):
    def cap(res, value):
        resource.setrlimit(res, (int(value), int(value)))

    resource.setrlimit(resource.RLIMIT_CPU, (lim["cpu_s"], lim["cpu_s"] + 1))
    cap(resource.RLIMIT_AS, lim["memory_mb"] << 20)
    cap(resource.RLIMIT_FSIZE, lim["max_file_mb"] << 20)
    cap(resource.RLIMIT_NOFILE, lim["max_open_files"])
    cap(resource.RLIMIT_CORE, 0)
    cap(resource.RLIMIT_NPROC, lim["max_processes"])
    try:  # deep recursion is common in solutions; the stack may grow into the address-space limit
        resource.setrlimit(resource.RLIMIT_STACK, (min(256, lim["memory_mb"]) << 20, resource.RLIM_INFINITY))
    except (ValueError, OSError):
        pass


def format_exception(exc):
    # traceback.format_exc for the solution's own frames, without importing traceback.
    lines = ["Traceback (most recent call last):"]
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_filename in ("<solution>", "<test>"):
            lines.append(f'  File "{code.co_filename}", line {tb.tb_lineno}, in {code.co_name}')
        tb = tb.tb_next
    try:
        message = str(exc)
    except BaseException:
        message = "<unprintable>"
    lines.append(f"{type(exc).__name__}: {message}" if message else type(exc).__name__)
    return "\n".join(lines) + "\n"


def child(case, in_fd, out_w, err_w):
    global spec, pending
    try:
        posix.setsid()
        posix.dup2(in_fd, 0)
        posix.dup2(out_w, 1)
        posix.dup2(err_w, 2)
        posix.closerange(3, 1 << 16)
        code, lim, uid = spec["code"], spec["limits"], spec["uid"]
        spec = None
        pending.clear()  # this fork's copy: the other cases are not this case's business
        set_limits(lim)
        if LIBC[2](38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS: no setuid program can give privileges back
            posix.write(2, b"sandbox: PR_SET_NO_NEW_PRIVS failed\n")
            posix._exit(1)
        if uid is not None:
            posix.setgroups([])
            posix.setresgid(uid[1], uid[1], uid[1])
            posix.setresuid(uid[0], uid[0], uid[0])
        sys.stdin = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)), encoding="utf-8")
        sys.stdout = io.TextIOWrapper(io.BufferedWriter(io.FileIO(1, "w", closefd=False)), encoding="utf-8")
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8", write_through=True)
        sys.__stdin__, sys.__stdout__, sys.__stderr__ = sys.stdin, sys.stdout, sys.stderr
        builtins.exit = builtins.quit = sys.exit  # `site` would have defined them
        glb = {"__name__": "__main__" if "assert" not in case else "solution", "__builtins__": builtins}
        exec(compile(code, "<solution>", "exec"), glb)
        if "assert" in case:
            try:
                exec(compile(case["assert"], "<test>", "exec"), glb)
            except AssertionError as exc:
                sys.stderr.write(format_exception(exc))
                finish(ASSERT_EXIT)
        finish(0)
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            finish(0 if exc.code is None else exc.code & 0xFF)
        try:
            sys.stderr.write(f"{exc.code}\n")
        except BaseException:
            pass
        finish(1)
    except MemoryError:
        finish(MEMORY_EXIT)
    except BaseException as exc:
        try:
            sys.stderr.write(format_exception(exc))
        except BaseException:
            pass
        finish(1)


def finish(code):
    try:
        sys.stdout.flush()
    except MemoryError:
        code = MEMORY_EXIT
    except BaseException:
        pass
    posix._exit(code)


def kill_rest(pid):
    try:
        # kill(-1) from PID 1 of our own PID namespace reaches only that namespace. Anywhere else, as root, it
        # would kill every process on the machine: hence the getpid() check, whatever `namespaced` says.
        if namespaced and posix.getpid() == 1:
            posix.kill(-1, SIGKILL)
        elif pid > 1:
            posix.killpg(pid, SIGKILL)  # the case's own session (it called setsid)
    except (ProcessLookupError, PermissionError):
        pass


def read_into(fd, out, err, out_r):
    # One read; returns the bytes read (0 at end of file). stdout is kept up to the cap, stderr's tail.
    chunk = posix.read(fd, 1 << 16)
    if fd == out_r:
        out += chunk[: limits["max_output_bytes"] + 1 - len(out)]
    else:
        err += chunk
        del err[:-4096]
    return len(chunk)


def run_case(case):
    lim = limits
    in_fd = posix.memfd_create("stdin")
    data = case.get("input", "").encode("utf-8", "replace")
    while data:
        data = data[posix.write(in_fd, data):]
    posix.lseek(in_fd, 0, 0)
    out_r, out_w = posix.pipe()
    err_r, err_w = posix.pipe()
    start = time.monotonic()
    pid = posix.fork()
    if pid == 0:
        child(case, in_fd, out_w, err_w)
    if not namespaced:
        emit({"case": pid})  # without a PID namespace the caller's backstop must kill the case's group itself
    for fd in (in_fd, out_w, err_w):
        posix.close(fd)
    try:
        pidfd = posix.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None  # old kernel: exit is polled every 20 ms
    poller = select.poll()
    for fd in (out_r, err_r):
        poller.register(fd, select.POLLIN)
    if pidfd is not None:
        poller.register(pidfd, select.POLLIN)
    out, err, total, status, exited, open_fds = bytearray(), bytearray(), 0, None, False, {out_r, err_r}
    deadline = start + lim["timeout_s"]
    while (open_fds or not exited) and status is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            status = "timeout"
            break
        for fd, _ in poller.poll(remaining * 1000 if pidfd is not None else min(remaining * 1000, 20)):
            if fd == pidfd:
                exited = True
                poller.unregister(pidfd)
                continue
            n = read_into(fd, out, err, out_r)
            if not n:
                poller.unregister(fd)
                open_fds.discard(fd)
            total += n
            if total > lim["max_output_bytes"]:
                status = "output_limit"
        if pidfd is None and not exited and posix.waitid(posix.P_PID, pid, posix.WEXITED | posix.WNOHANG | WNOWAIT):
            exited = True
        if exited and open_fds:
            kill_rest(pid)  # the case is over; leftovers still holding its pipes go too
    try:
        posix.kill(pid, SIGKILL)
    except ProcessLookupError:
        pass
    kill_rest(pid)
    _, wstatus, usage = posix.wait4(pid, 0)
    wall = time.monotonic() - start
    for fd in (out_r, err_r):
        posix.set_blocking(fd, False)
        try:
            while fd in open_fds and len(out) <= lim["max_output_bytes"] and read_into(fd, out, err, out_r):
                pass
        except OSError:
            pass
        posix.close(fd)
    if pidfd is not None:
        posix.close(pidfd)
    reap()
    sig = posix.WTERMSIG(wstatus) if posix.WIFSIGNALED(wstatus) else None
    code = posix.WEXITSTATUS(wstatus) if posix.WIFEXITED(wstatus) else None
    cpu = usage.ru_utime + usage.ru_stime
    if status is None:
        if sig == SIGXCPU or (sig == SIGKILL and cpu >= lim["cpu_s"]):
            status = "timeout"  # the soft CPU limit, or the hard one a second later
        elif sig == SIGXFSZ:
            status = "output_limit"
        elif code == MEMORY_EXIT or b"MemoryError" in err[-300:]:
            status = "memory"
        elif code == ASSERT_EXIT:
            status = "assert_failed"
        elif code == 0:
            status = "ok"
        else:
            status = "error"
    emit({"status": status, "returncode": code if sig is None else -sig, "wall_s": wall, "cpu_s": cpu,
          "stdout": out.decode("utf-8", "replace"), "stderr": err.decode("utf-8", "replace")})


def reap():
    while True:
        try:
            if posix.waitpid(-1, posix.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return


def serve(in_fd, out_fd):
    # One solution: read its spec from in_fd, write its records to out_fd, run its cases.
    global spec, result_fd, namespaced, limits, pending
    result_fd = out_fd
    emit({"pid": posix.getpid()})  # the caller's handle for its backstop (kills this process group)
    spec = marshal.loads(read_all(in_fd))
    namespaced, limits = spec["namespaces"], spec["limits"]
    global LIBC
    try:
        LIBC = LIBC or libc_functions()
        workdir = setup_namespaces() if namespaced else spec["workdir"]
    except Exception as exc:
        emit({"fatal": f"sandbox set-up failed: {type(exc).__name__}: {exc}"})
        posix._exit(3)
    posix.chdir(workdir)
    if "os" in sys.modules:  # the fork server imported it (via socket): keep the solution's view consistent
        sys.modules["os"].environ.update(HOME=workdir, TMPDIR=workdir)
    emit({"ready": True, "notes": notes})
    pending = spec.pop("cases")
    while pending:
        run_case(pending.pop(0))


def fork_server(control_fd):
    # Started once per caller process: forks a fresh harness per request, so no solution pays for an
    # interpreter start-up. A request is one byte carrying a socket (SCM_RIGHTS) for that solution's spec and
    # records. It exits when the caller's end of the control socket closes (the caller exited).
    import socket

    global LIBC
    LIBC = libc_functions()  # loaded here once rather than in every harness
    _signal.signal(_signal.SIGCHLD, _signal.SIG_IGN)  # the kernel reaps the harnesses
    control = socket.socket(fileno=control_fd)
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(control, 1, 4)
        except InterruptedError:
            continue
        if not msg:
            posix._exit(0)
        for fd in fds[1:]:
            posix.close(fd)
        if not fds:
            continue
        pid = posix.fork()
        if pid == 0:
            try:
                control.close()
                _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
                posix.setsid()  # its own process group: the caller's backstop kills it as one
                serve(fds[0], fds[0])
            finally:
                posix._exit(0)
        posix.close(fds[0])


if sys.argv[1:2] == ["fork-server"]:
    posix.dup2(posix.open("/dev/null", posix.O_RDWR), 0)
    fork_server(int(sys.argv[2]))
else:  # one solution: spec on stdin, records on stdout
    spec_fd = posix.dup(0)
    posix.dup2(posix.open("/dev/null", posix.O_RDONLY), 0)
    serve(spec_fd, posix.dup(1))
"""


# ------------------------------------------------------------------------------------------ running a solution

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
    results = [_judge(i, cases[i], kinds[i], rec) for i, rec in enumerate(raw[: len(cases)])]
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
        if seen < len(cases) and not _judge(seen, cases[seen], kinds[seen], rec).passed:
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
    argv = [limits.python, "-I"] + ([] if limits.site_packages else ["-S"]) + ["-c", _HARNESS]
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
        argv += ["-c", _HARNESS, "fork-server", str(theirs.fileno())]
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


def _judge(index: int, case: dict[str, str], kind: str, rec: dict[str, Any]) -> CaseResult:
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
