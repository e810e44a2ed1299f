"""The code sandbox: exact outcomes for good and bad solutions, and containment of hostile ones.

Every hostile solution must be stopped by its limit, score 0, and leave the test process and the machine as they
were: no process of the sandbox users left, nothing written outside the working directory, no secret read.
"""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import uuid

import pytest

from rewards.sandbox import SandboxLimits, check_syntax, compare_output, normalize_tests, run_many, run_tests, runner

ROOT = os.geteuid() == 0
# A uid range of its own, so the leftover-process check sees only this file's sandboxes.
UID_BASE, UID_COUNT = 62000, 16
FAST = SandboxLimits(
    timeout_s=1.5, cpu_s=1, memory_mb=256, max_processes=8, max_output_bytes=10_000, uid_base=UID_BASE, uid_count=16
)
needs_root = pytest.mark.skipif(not ROOT, reason="namespaces and the user switch need root")


def sandbox_processes() -> list[tuple[int, int, str]]:
    """(pid, uid, command) of every live process owned by a sandbox uid, from a /proc scan."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                status = f.read().splitlines()
            uid = next(int(line.split()[1]) for line in status if line.startswith("Uid:"))
            if any(line.startswith("State:\tZ") for line in status):
                continue  # dead already, only waiting for its parent to reap it
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")[:80]
        except (OSError, StopIteration):
            continue  # the process ended while we looked
        if UID_BASE <= uid < UID_BASE + UID_COUNT or uid == 65534:
            found.append((int(entry), uid, cmd))
    return found


@pytest.fixture
def no_leftovers():
    """Fails the test if any sandbox process outlives the run."""
    assert sandbox_processes() == [], "sandbox processes were already running"
    yield
    assert sandbox_processes() == []


def one(code: str, expected: str = "ok", stdin: str = "", limits: SandboxLimits = FAST):
    result = run_tests(code, [{"input": stdin, "output": expected}], limits)
    assert result.total == 1
    return result.cases[0]


# ---------------------------------------------------------------------------------------------- exact outcomes

DOUBLE = "n = int(input())\nprint(n * 2)\n"
STDIO = [{"input": "3\n", "output": "6"}, {"input": "5", "output": "10\n"}, {"input": "-1", "output": "-2"}]


def test_stdio_correct_partial_wrong():
    assert run_tests(DOUBLE, STDIO, FAST).fraction == 1.0
    partial = run_tests("n = int(input())\nprint(6 if n == 3 else n * 2 + 1)", STDIO, FAST)
    assert partial.statuses == ["passed", "wrong_answer", "wrong_answer"]
    assert partial.fraction == pytest.approx(1 / 3)
    assert partial.cases[1].detail == "line 1: expected '10', got '11'"
    wrong = run_tests("print('nope')", STDIO, FAST)
    assert wrong.fraction == 0.0 and not wrong.all_passed


def test_stdio_comparison_strips_each_line_and_surrounding_blank_lines():
    code = "print('  a  ')\nprint('b\\t')\nprint()\nprint()"
    assert run_tests(code, [{"input": "", "output": "a\n  b\n"}], FAST).all_passed
    assert compare_output("a\nb", "a\nc") == "line 2: expected 'c', got 'b'"
    assert compare_output("a", "a\nb") == "expected 2 lines, got 1"


def test_assert_cases_correct_partial_wrong():
    tests = [
        {"assert": "assert add(1, 2) == 3"},
        {"assert": "assert add(-1, 1) == 0"},
        {"assert": "assert add(2, 2) == 4"},
    ]
    assert run_tests("def add(a, b):\n    return a + b", tests, FAST).fraction == 1.0
    partial = run_tests("def add(a, b):\n    return 3", tests, FAST)
    assert partial.statuses == ["passed", "wrong_answer", "wrong_answer"]
    assert partial.fraction == pytest.approx(1 / 3)
    missing = run_tests("def plus(a, b):\n    return a + b", tests, FAST)
    assert missing.statuses == ["error"] * 3
    assert missing.cases[0].detail == "NameError: name 'add' is not defined"


def test_assert_cases_do_not_run_the_main_guard_and_mixed_cases_work():
    code = "def sq(x):\n    return x * x\nif __name__ == '__main__':\n    print(sq(int(input())))\n"
    result = run_tests(code, [{"assert": "assert sq(3) == 9"}, {"input": "4", "output": "16"}], FAST)
    assert result.statuses == ["passed", "passed"]
    assert [c.kind for c in result.cases] == ["assert", "stdio"]


def test_exit_codes_and_exceptions():
    assert one("print('ok')\nexit(0)").status == "passed"
    assert one("import sys\nprint('ok')\nsys.exit()").status == "passed"
    case = one("print('ok')\nraise SystemExit(3)")
    assert (case.status, case.returncode) == ("error", 3)
    case = one("raise ValueError('bad input')")
    assert (case.status, case.detail) == ("error", "ValueError: bad input")


def test_syntax_error_scores_zero_without_running(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a process was started for code that does not compile")

    monkeypatch.setattr(runner.subprocess, "Popen", refuse)
    result = run_tests("def f(:\n    pass", STDIO, FAST)
    assert result.statuses == ["syntax_error"] * 3
    assert result.fraction == 0.0
    assert check_syntax("x = 1") is None
    assert check_syntax("x = (").startswith("SyntaxError")
    assert check_syntax("x = 1\0") is not None


def test_tests_as_json_and_malformed_tests():
    assert normalize_tests('[{"input": "1", "output": "2"}, {"assert": "assert True"}]') == [
        {"input": "1", "output": "2"},
        {"assert": "assert True"},
    ]
    assert normalize_tests([{"input": 1, "output": 2}]) == [{"input": "1", "output": "2"}]
    with pytest.raises(ValueError, match="case 1 must be"):
        normalize_tests([{"assert": "assert 1"}, {"input": "x"}])
    with pytest.raises(ValueError, match="not valid JSON"):
        normalize_tests("[{")
    with pytest.raises(ValueError, match="job 1: tests: case 0"):
        run_many([("print(1)", STDIO), ("print(1)", [{"oops": 1}])], FAST)


def test_unicode_and_large_input():
    big = "\n".join(str(i) for i in range(20000))
    code = "import sys\nprint(sum(map(int, sys.stdin.read().split())), 'é')"
    assert run_tests(code, [{"input": big, "output": f"{sum(range(20000))} é"}], FAST).all_passed


# --------------------------------------------------------------------------------------------- hostile code


@needs_root
def test_endless_loop_times_out(no_leftovers):
    case = one("while True:\n    pass")
    assert case.status == "timeout"
    assert case.wall_s < FAST.timeout_s + 1.0


@needs_root
def test_sleeping_forever_hits_the_wall_clock_limit(no_leftovers):
    case = one("import time\ntime.sleep(60)")
    assert case.status == "timeout"
    assert FAST.timeout_s <= case.wall_s < FAST.timeout_s + 1.0


@needs_root
def test_fork_bomb_is_capped_and_cleaned_up(no_leftovers):
    code = (
        "import os, time\n"
        "while True:\n"
        "    try:\n"
        "        if os.fork() == 0:\n"
        "            os.setsid()\n"  # escape the process group: the PID namespace still holds it
        "    except OSError:\n"
        "        time.sleep(0.01)\n"
    )
    case = one(code)
    assert case.status == "timeout"


@needs_root
def test_process_limit_applies(no_leftovers):
    code = (
        "import os, time\n"
        "n = 0\n"
        "try:\n"
        "    for _ in range(50):\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(30)\n"
        "            os._exit(0)\n"
        "        n += 1\n"
        "except OSError:\n"
        "    pass\n"
        "print(n)\n"
    )
    case = one(code)
    assert case.status == "wrong_answer"
    assert int(case.stdout) == FAST.max_processes - 1  # itself plus max_processes - 1 children


@needs_root
def test_memory_bomb(no_leftovers):
    case = one("x = []\nwhile True:\n    x.append(bytearray(64 << 20))")
    assert case.status == "memory"
    assert one("x = bytearray(10 ** 10)").status == "memory"


@needs_root
def test_output_flood_is_cut(no_leftovers):
    case = one("while True:\n    print('y' * 1000)")
    assert case.status == "output_limit"
    assert len(case.stdout) <= FAST.max_output_bytes + 1
    assert one("import sys\nwhile True:\n    sys.stderr.write('e' * 1000)").status == "output_limit"
    assert one("open('big', 'w').write('x' * (64 << 20))").status == "output_limit"  # RLIMIT_FSIZE


@needs_root
def test_no_network_not_even_to_the_hosts_localhost(no_leftovers):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    try:
        code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\nprint('ok')"
        case = one(code)
        assert case.status == "error"
        assert "Connection refused" in case.detail or "unreachable" in case.detail
        case = one("import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=1)\nprint('ok')")
        assert case.status == "error" and "unreachable" in case.detail
        with pytest.raises(socket.timeout):
            server.accept()  # nobody came through
    finally:
        server.close()


@needs_root
def test_cannot_write_or_delete_outside_the_working_directory(tmp_path, no_leftovers):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # even a world-writable directory of the host is out of reach
    canary = shared / "canary.txt"
    canary.write_text("alive")
    canary.chmod(0o666)
    private = tmp_path / "private.txt"
    private.write_text("secret")
    marker = f"escape-{uuid.uuid4().hex}"
    code = f"""
import os, shutil
hits = []
for attempt in (lambda: os.remove({str(canary)!r}), lambda: open({str(canary)!r}, 'w').write('pwned'),
                lambda: shutil.rmtree({str(shared)!r}), lambda: print(open({str(private)!r}).read()),
                lambda: open('../{marker}', 'w').write('x'), lambda: open('/{marker}', 'w').write('x'),
                lambda: open('/etc/{marker}', 'w').write('x'), lambda: os.remove('/etc/hostname')):
    try:
        attempt()
        hits.append('hit')
    except OSError:
        hits.append('blocked')
for d in ('/tmp', '/var/tmp', '/dev/shm'):
    open(os.path.join(d, {marker!r}), 'w').write('x')  # lands in the private working directory
print(' '.join(hits))
print(sorted(os.listdir('.')))
"""
    case = one(code)
    assert case.status == "wrong_answer"  # ran to the end; every attempt blocked
    assert case.stdout.splitlines()[0] == " ".join(["blocked"] * 8)
    assert canary.read_text() == "alive"
    assert private.read_text() == "secret"
    for d in ("/", "/etc", "/tmp", "/var/tmp", "/dev/shm", str(tmp_path)):
        assert not os.path.exists(os.path.join(d, marker))
    assert os.path.exists("/etc/hostname") or not os.path.exists("/etc")


@needs_root
def test_working_directory_is_a_capped_tmpfs(no_leftovers):
    limits = SandboxLimits(**{**FAST.__dict__, "max_disk_mb": 8, "max_file_mb": 4})
    code = (
        "import os\n"
        "try:\n"
        "    for i in range(10):\n"
        "        with open(f'f{i}', 'wb') as f:\n"
        "            f.write(b'x' * (3 << 20))\n"
        "except OSError as exc:\n"
        "    print(i, exc.strerror)\n"
    )
    case = one(code, limits=limits)
    assert case.stdout.strip() == "2 No space left on device"  # 8 MiB hold two 3 MiB files, not three


@needs_root
def test_no_new_privileges(no_leftovers):
    case = one("print([l for l in open('/proc/self/status') if l.startswith('NoNewPrivs')][0].strip())")
    assert case.stdout.split() == ["NoNewPrivs:", "1"]


@needs_root
def test_working_directory_is_private_and_deleted(tmp_path, monkeypatch, no_leftovers):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    case = one("import os\nopen('scratch.txt', 'w').write('x')\nprint(os.getcwd(), os.listdir('.'))")
    assert case.stdout.strip() == "/tmp ['scratch.txt']"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("fastslow-sandbox-")] == []


@needs_root
def test_secrets_in_the_environment_are_not_visible(monkeypatch, no_leftovers):
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    monkeypatch.setenv("FASTSLOW_TEST_SECRET", secret)
    code = """
import os
found = [v for v in os.environ.values() if 's3cr3t' in v]
for pid in os.listdir('/proc'):
    try:
        data = open(f'/proc/{pid}/environ', 'rb').read()
    except OSError:
        continue
    found += [w.decode() for w in data.split(b'\\0') if b's3cr3t' in w]
print(found[0].split('=')[-1] if found else 'nothing')
print(sorted(os.environ))
"""
    case = one(code, expected=secret)
    assert case.status == "wrong_answer"
    assert secret not in case.stdout
    assert case.stdout.splitlines()[0] == "nothing"
    assert eval(case.stdout.splitlines()[1]) == sorted(runner._clean_env("/tmp"))


@needs_root
def test_killing_the_parent_fails_and_the_harness_carries_on(no_leftovers):
    code = f"""
import os, signal
tried = []
for attempt in (lambda: os.kill(os.getppid(), signal.SIGKILL), lambda: os.kill(1, signal.SIGKILL),
                lambda: os.kill({os.getpid()}, signal.SIGKILL), lambda: os.killpg({os.getpgrp()}, signal.SIGKILL),
                lambda: os.kill(-1, signal.SIGKILL)):
    try:
        attempt()
        tried.append('sent')
    except OSError:
        tried.append('refused')
print(' '.join(tried))
"""
    result = run_tests(code, [{"input": "", "output": "ok"}] * 2, FAST)
    # The harness (PID 1 of the namespace, root) survived the first case and ran the second one.
    assert result.statuses == ["wrong_answer", "wrong_answer"]
    for case in result.cases:
        # The parent is PID 1 and root; the test process and its group do not exist in the namespace; kill(-1)
        # reaches only the solution's own other processes, of which there are none.
        assert case.stdout.split() == ["refused"] * 5
    assert os.getpid() > 0  # still here


@needs_root
def test_solution_runs_unprivileged_without_seeing_host_processes(no_leftovers):
    case = one(
        "import os\nprint(os.getuid(), os.geteuid(), os.getgroups())\n"
        "print(sorted(p for p in os.listdir('/proc') if p.isdigit()))"
    )
    uid_line, procs = case.stdout.splitlines()
    uid, euid, groups = uid_line.split(" ", 2)
    assert UID_BASE <= int(uid) < UID_BASE + UID_COUNT and uid == euid and groups == "[]"
    assert str(os.getpid()) not in eval(procs)  # the test process is invisible
    assert len(eval(procs)) <= 3  # PID 1 (harness), the solution, maybe a reaping leftover


@needs_root
def test_hidden_paths_and_the_interpreter_still_works(no_leftovers):
    case = one(
        "import os, json, collections\n"
        "print(os.path.exists('/work'), os.listdir('/work') if os.path.isdir('/work') else None)"
    )
    assert case.status == "wrong_answer"
    assert case.stdout.strip() in ("True []", "False None")


# ------------------------------------------------------------------------------------------------ the pool


@needs_root
def test_pool_runs_sandboxes_in_parallel_with_distinct_users(no_leftovers):
    # Each solution holds its sandbox (and uid) for 0.4 s; with 4 workers, 4 run at once, each as its own uid.
    code = "import os, time\ntime.sleep(0.4)\nprint(os.getuid())"
    jobs = [(code, [{"input": "", "output": "x"}])] * 4 + [(DOUBLE, STDIO), ("print(1", STDIO)]
    results = run_many(jobs, FAST, max_workers=4)
    uids = {int(r.cases[0].stdout) for r in results[:4]}
    assert len(uids) == 4
    assert [r.fraction for r in results[4:]] == [1.0, 0.0]
    assert results[5].statuses == ["syntax_error"] * 3


def test_rlimits_fallback_still_limits():
    limits = SandboxLimits(**{**FAST.__dict__, "isolation": "rlimits"})
    result = run_tests(DOUBLE, STDIO, limits)
    assert (result.isolation, result.fraction) == ("rlimits", 1.0)
    assert one("while True:\n    pass", limits=limits).status == "timeout"
    assert one("x = bytearray(10 ** 10)", limits=limits).status == "memory"


def test_threads_do_not_share_sandboxes():
    # Many short solutions from several threads at once: every one gets its own, correct result.
    out: dict[int, float] = {}

    def work(k: int) -> None:
        out[k] = run_tests(f"print(int(input()) + {k})", [{"input": "1", "output": str(1 + k)}], FAST).fraction

    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == {k: 1.0 for k in range(6)}


def test_limits_validation():
    with pytest.raises(ValueError, match="isolation"):
        run_tests("print(1)", STDIO, SandboxLimits(isolation="docker"))
    with pytest.raises(ValueError, match="SandboxLimits.memory_mb must be positive, got 0"):
        SandboxLimits(memory_mb=0)
    with pytest.raises(ValueError, match="total_timeout_s"):
        SandboxLimits(total_timeout_s=-1)
    if ROOT:
        with pytest.raises(ValueError, match="non-zero uid, got '0'"):
            run_tests("print(1)", STDIO, SandboxLimits(user="0"))


@needs_root
def test_runs_as_nobody_when_asked(no_leftovers):
    limits = SandboxLimits(**{**FAST.__dict__, "user": "nobody"})
    assert one("import os\nprint(os.getuid(), os.getgid())", limits=limits).stdout.strip() == "65534 65534"


# ------------------------------------------------------------------------------------ processes around the sandbox


@needs_root
@pytest.mark.parametrize("fork_server", [True, False], ids=["fork-server", "fresh-interpreter"])
def test_both_launch_paths_give_the_same_outcomes(fork_server, no_leftovers):
    limits = SandboxLimits(**{**FAST.__dict__, "fork_server": fork_server})
    assert run_tests(DOUBLE, STDIO, limits).statuses == ["passed"] * 3
    result = run_tests("import os\nos.kill(os.getppid(), 9)\nprint(int(input()) * 2)", STDIO[:2], limits)
    assert result.statuses == ["error", "error"]  # refused, and the harness lived to run the second case
    assert one("while True:\n    pass", limits=limits).status == "timeout"


@needs_root
@pytest.mark.parametrize("fork_server", [True, False], ids=["fork-server", "fresh-interpreter"])
@pytest.mark.parametrize("isolation", ["namespaces", "rlimits"])
def test_backstop_kills_a_harness_that_overruns(fork_server, isolation, no_leftovers):
    # no_leftovers checks right after the return: the sandbox must be gone by then, not merely dying.
    limits = SandboxLimits(**{**FAST.__dict__, "total_timeout_s": 0.5, "fork_server": fork_server})
    limits.isolation = isolation
    result = run_tests("import time\ntime.sleep(30)", [{"input": "", "output": ""}] * 2, limits)
    assert result.statuses == ["error", "error"]
    assert result.cases[0].detail == "the sandbox died before this case finished"


@needs_root
def test_fork_server_is_restarted_when_it_dies(no_leftovers):
    assert run_tests(DOUBLE, STDIO, FAST).fraction == 1.0
    server = runner._ForkServer.get(FAST)
    server.proc.kill()
    server.proc.wait()
    assert run_tests(DOUBLE, STDIO, FAST).fraction == 1.0
    assert server.proc.poll() is None


@needs_root
@pytest.mark.parametrize("isolation", ["namespaces", "rlimits"])
def test_stop_after_the_first_failure_skips_the_rest(isolation, no_leftovers):
    limits = SandboxLimits(**{**FAST.__dict__, "isolation": isolation})
    loop = "n = int(input())\nwhile n == 5:\n    pass\nprint(n * 2)"
    tests = [{"input": "1", "output": "2"}, {"input": "5", "output": "10"}] + [{"input": "2", "output": "4"}] * 3
    result = run_tests(loop, tests, limits, stop_after_failures=1)
    assert result.statuses == ["passed", "timeout", "skipped", "skipped", "skipped"]
    assert result.cases[2].detail == "not run: 1 case(s) failed"
    full = run_tests(loop, tests, limits)
    assert full.statuses == ["passed", "timeout", "passed", "passed", "passed"]


@needs_root
def test_falls_back_to_rlimits_when_namespaces_cannot_be_made(monkeypatch, caplog, no_leftovers, tmp_path):
    call = "if unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS) != 0:"
    harness = runner.HARNESS_PATH.read_text()
    assert call in harness
    broken = tmp_path / "harness.py"
    broken.write_text(harness.replace(call, "if unshare(-1) != 0:"))  # EINVAL
    monkeypatch.setattr(runner, "HARNESS_PATH", broken)
    monkeypatch.setattr(runner, "_NAMESPACES_BROKEN", False)  # restored afterwards
    limits = SandboxLimits(**{**FAST.__dict__, "fork_server": False})  # the cached server has the real harness
    with caplog.at_level("WARNING", logger="rewards.sandbox"):
        result = run_tests(DOUBLE, STDIO, limits)
    assert (result.isolation, result.fraction) == ("rlimits", 1.0)
    assert "sandbox could not start: unshare: Invalid argument" in caplog.text
    explicit = SandboxLimits(**{**FAST.__dict__, "fork_server": False, "isolation": "namespaces"})
    failed = run_tests(DOUBLE, STDIO, explicit)  # namespaces asked for explicitly: no silent downgrade
    assert failed.statuses == ["error"] * 3
    assert failed.cases[0].detail == "the sandbox could not start: unshare: Invalid argument"


def test_the_harness_is_a_standard_library_module_that_starts_nothing_when_imported():
    # It runs isolated (python -I -S, by path): no project imports, and importing it must not start a server.
    import ast
    import importlib.util
    import sys

    tree = ast.parse(runner.HARNESS_PATH.read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported and imported <= set(sys.stdlib_module_names), imported - set(sys.stdlib_module_names)
    spec = importlib.util.spec_from_file_location("sandbox_harness", runner.HARNESS_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert callable(module.main) and module.spec is None  # defined, nothing run
