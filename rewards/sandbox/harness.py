"""The sandbox harness: the program the sandbox process runs, in a child interpreter (``python -I -S harness.py``).

It is run by path, never imported, and it stays self-contained (standard library only, no project imports): it
runs isolated, before and after the namespaces are made, with nothing of the project on its path.

Started either as the fork server (``harness.py fork-server <control fd>``: one per caller process, forking a fresh
harness per solution) or for one solution (spec on stdin, records on stdout). For each solution it reads the spec
(from its job socket, or stdin), sets up the namespaces, then runs each case in a fresh fork that drops privileges
and sets the limits, and writes one record per case (to the socket, or stdout). It never sees expected outputs.

Start-up time is most of the sandbox's overhead, so it imports only built-in C modules: ``posix`` rather than
``os``, ``marshal`` rather than ``json`` (records are framed by a 4-byte length), ``_signal`` rather than
``signal``, ``_ctypes`` rather than ``ctypes``, and formats tracebacks itself; ``json``, ``signal``, ``ctypes`` and
``traceback`` would triple its start-up time.
"""

import _signal
import builtins
import io
import marshal
import posix
import resource
import select
import sys
import time

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
        data = data[posix.write(result_fd, data) :]


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
        def enc(s):
            return None if s is None else s.encode()

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
        data = data[posix.write(in_fd, data) :]
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
    emit(
        {
            "status": status,
            "returncode": code if sig is None else -sig,
            "wall_s": wall,
            "cpu_s": cpu,
            "stdout": out.decode("utf-8", "replace"),
            "stderr": err.decode("utf-8", "replace"),
        }
    )


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


def main(argv):
    if argv[1:2] == ["fork-server"]:
        posix.dup2(posix.open("/dev/null", posix.O_RDWR), 0)
        fork_server(int(argv[2]))
    else:  # one solution: spec on stdin, records on stdout
        spec_fd = posix.dup(0)
        posix.dup2(posix.open("/dev/null", posix.O_RDONLY), 0)
        serve(spec_fd, posix.dup(1))


if __name__ == "__main__":  # run by path only: importing this file starts nothing
    main(sys.argv)
