"""The sandbox's limits and isolation settings, and the names of the outcomes a test case can have."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

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
