"""Run untrusted Python solutions against test cases, contained.

``run_tests(code, tests, limits) -> SandboxResult`` runs one solution against its cases and says, per case, what
happened (``passed``, ``wrong_answer``, ``error``, ``timeout``, ``memory``, ``output_limit``, ``syntax_error``).
``run_many`` does the same for a batch on a thread pool (each thread waits on its own sandbox process).

How a solution is contained (one sandbox process per solution; each case runs in a fresh fork of it):

* **Syntax first.** The code is compiled in the calling process (compiling runs nothing); a syntax error scores
  every case ``syntax_error`` without starting a process.
* **A separate process** per solution: a fork of a long-lived *fork server* (``python -I -S harness.py``,
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
the raw outputs, which are compared in the calling process. (Assert cases are the exception by nature: the
statement must run.)

The package:

* :mod:`rewards.sandbox.limits`: ``SandboxLimits`` and the outcome names (``STATUSES``, ``LIMIT_STATUSES``);
* :mod:`rewards.sandbox.results`: ``CaseResult``, ``SandboxResult``, and the parent-side checks: ``normalize_tests``,
  ``compare_output``, ``check_syntax``, ``judge_record``;
* :mod:`rewards.sandbox.runner`: the parent side (fork server management, ``run_tests``, ``run_many``);
* :mod:`rewards.sandbox.harness`: the harness, a standard-library-only program run by path in the child interpreter
  (never imported: it runs isolated, with nothing of the project on its path).
"""

from rewards.sandbox.limits import LIMIT_STATUSES, STATUSES, SandboxLimits
from rewards.sandbox.results import (
    CaseResult,
    SandboxResult,
    check_syntax,
    compare_output,
    judge_record,
    normalize_tests,
    output_lines,
)
from rewards.sandbox.runner import HARNESS_PATH, run_many, run_tests

__all__ = [
    "HARNESS_PATH",
    "LIMIT_STATUSES",
    "STATUSES",
    "CaseResult",
    "SandboxLimits",
    "SandboxResult",
    "check_syntax",
    "compare_output",
    "judge_record",
    "normalize_tests",
    "output_lines",
    "run_many",
    "run_tests",
]
