"""The math reward: the final answer, verified against the reference with math-verify.

The answer is read only after the closed think block (``rewards.base.extract_answer``): ``\\boxed{}`` first, then
the last answer-like expression (math-verify's LaTeX and plain-expression extraction, boxed given top priority).
It is checked with ``math_verify.verify(gold, answer)`` in that order: verify is asymmetric (a gold ``1<x<2`` accepts
the answer ``(1,2)``, a gold ``(1,2)`` does not accept ``1<x<2``), and open-r1 passes the two the other way round in
its length rewards.

Each reference is parsed once per process (an LRU cache keyed on the reference string), short answer texts are
cached too, and integer answers skip math-verify's LaTeX parser (they parse alike, see ``_integer_answer``).

Nothing a completion holds can stall the caller (issue #15). sympy evaluates integer powers and factorials in
single C calls that no Python-level time limit interrupts (``\\boxed{2^{2^{64}}}`` ran for minutes, eating GBs), so:

* a number too large to compute (a power tower or an exponent over ``MAX_EXPONENT``, a factorial over
  ``MAX_FACTORIAL``, a digit run over ``MAX_DIGITS``; see ``_too_large``) in the answer makes it wrong (0.0)
  before sympy sees it; in the reference, the reference is unparseable (None);
* parsing and verifying run in worker processes (``ISOLATE``): persistent (their caches are the per-process caches
  above), at most ``MAX_WORKERS`` at once, each with its address space capped (``WORKER_MEMORY_MB``). A worker
  still busy ``KILL_GRACE_S`` after the time limit is killed, its sample gets None, and a fresh worker starts at
  once. Integer answers to integer references are compared in the caller (no round trip). Log records of a worker
  are re-emitted in the caller.

Inside a worker (and in the caller when ``ISOLATE`` is off), math-verify's own time limits, which use
``signal.alarm`` and fail off the main thread, are switched off and replaced by ``run_with_time_limit``: a watchdog
thread that raises ``VerifyTimeout`` in the verifying thread when the limit passes. That works on any thread (the
watchdog restarts after a fork) and interrupts Python code (all of sympy's simplification), so a slow simplification
costs the worker nothing; only a single long C call gets it killed.

Scores: 1.0 correct, 0.0 wrong or missing answer (an unclosed think block has no answer), ``None`` when the sample
is not a math task, has no reference, or the reference cannot be parsed, and ``None`` on a time-out or an error.
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import heapq
import itertools
import json
import logging
import math
import os
import re
import resource
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
from math_verify import parser as _mv_parser
from sympy import Integer

from rewards.base import Reward, logger
from rewards.registry import register
from train.core.modes import ThinkFormat

T = TypeVar("T")

#: How many parsed references each process keeps.
REFERENCE_CACHE_SIZE = 8192
#: How many parsed answers each process keeps, and the longest answer text that is cached.
ANSWER_CACHE_SIZE = 8192
ANSWER_CACHE_MAX_CHARS = 2000
#: Default wall-clock limit, in seconds, for parsing and verifying one sample.
DEFAULT_TIMEOUT_S = 5.0
#: Task-column values the math rewards apply to (compared case-insensitively).
MATH_TASKS = ("math",)
#: Numbers too large to compute: an exponent (or power tower) over this is refused before sympy sees it...
MAX_EXPONENT = 10**5
#: ...and so are a factorial of more than this, and a run of more digits than this.
MAX_FACTORIAL = 1000
MAX_DIGITS = 1000
#: Verify in worker processes (killed at the time limit, memory capped); False verifies in the calling thread,
#: where only Python code is interrupted at the limit (the tests that spy on the functions below use that).
ISOLATE = True
#: Address-space limit of one verification worker, in MiB (0: none).
WORKER_MEMORY_MB = 2048
#: Most verification workers per process; more concurrent callers wait for one.
MAX_WORKERS = max(1, min(4, os.cpu_count() or 1))
#: Seconds a worker may take to start (importing sympy and math-verify); not part of a call's time limit.
WORKER_START_TIMEOUT_S = 120.0
#: Seconds past the time limit to wait for a worker's own time-out reply before killing it.
KILL_GRACE_S = 0.25

# Boxed answers win over anything else; otherwise math-verify takes the last expression it can parse.
_CONFIG = (LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig())
# A reference with one of these is already delimited; a bare one ("\frac{1}{2}", "(1,2)") is wrapped in $...$.
_DELIMITED = re.compile(r"\$|\\boxed|\\\(|\\\[")
# ...unless it is prose: wrapped, "no answer" would parse as the product of symbols n*o*a*n*s*w*e*r.
_LATEX_TEXT = re.compile(r"\\(?:text|mathrm|textbf|mbox)\s*\{[^{}]*\}|\\[A-Za-z]+")
_WORD = re.compile(r"[A-Za-z]{3,}")
# Integer answers (the commonest kind) skip math-verify's LaTeX parser: a reply that is just an integer, or that
# has exactly one \boxed{} holding an integer. math-verify reads both as [Integer(n), "n"] whatever surrounds the
# box (tests/test_rewards_math.py checks the two agree on generated texts), in a fraction of the time.
_INT = r"(-?(?:0|[1-9][0-9]*))"  # no leading zeros: math-verify rewrites "00" as "0" in some places
_PLAIN_INT = re.compile(rf"\s*{_INT}\s*", re.ASCII)
_BOXED_INT = re.compile(rf"\\boxed\{{\s*{_INT}\s*\}}", re.ASCII)


class _TimeoutWarningFilter(logging.Filter):
    """Drop math-verify's "timeout is disabled" warning: we always switch it off and apply ``run_with_time_limit``."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_TimeoutWarningFilter())


# ------------------------------------------------------------------------------------------------- time limits


class VerifyTimeout(BaseException):
    """Raised inside a thread whose ``run_with_time_limit`` limit has passed.

    A ``BaseException`` so that math-verify's and sympy's ``except Exception`` handlers do not swallow it.
    """


class _Watchdog:
    """One daemon thread per process that interrupts threads whose deadline has passed."""

    def __init__(self) -> None:
        # disarm() takes the raw lock with a C-level __enter__: a VerifyTimeout landing as it is taken cannot leave
        # it held (Condition.__enter__ is Python code, so the exception could fall between acquire and the with).
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.heap: list[tuple[float, int]] = []  # (deadline, token)
        self.armed: dict[int, int] = {}  # token -> thread ident
        self.tokens = itertools.count()
        self.thread: threading.Thread | None = None

    def arm(self, seconds: float) -> int:
        with self.cond:
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="rewards-math-watchdog", daemon=True)
                self.thread.start()
            token = next(self.tokens)
            self.armed[token] = threading.get_ident()
            heapq.heappush(self.heap, (time.monotonic() + seconds, token))
            self.cond.notify()
            return token

    def disarm(self, token: int) -> bool:
        """Cancel ``token``; True when the watchdog already fired it (an exception is pending or raised)."""
        with self.lock:
            return self.armed.pop(token, None) is None

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.heap:
                    self.cond.wait()
                deadline, token = self.heap[0]
                now = time.monotonic()
                if deadline > now:
                    self.cond.wait(deadline - now)
                    continue
                heapq.heappop(self.heap)
                ident = self.armed.pop(token, None)
                if ident is not None:  # still running: interrupt it at its next bytecode
                    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(VerifyTimeout))


_WATCHDOG = _Watchdog()


def _reset_watchdog() -> None:
    # A forked child has none of the parent's threads, and the lock may have been held at the fork.
    global _WATCHDOG
    _WATCHDOG = _Watchdog()


os.register_at_fork(after_in_child=_reset_watchdog)


def run_with_time_limit(fn: Callable[..., T], seconds: float | None, *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``, interrupted with ``VerifyTimeout`` after ``seconds`` (None or <= 0: no limit).

    Safe on any thread. The exception is raised inside ``fn`` at its next Python bytecode, and never escapes
    after this function returns.
    """
    if seconds is None or seconds <= 0:
        return fn(*args, **kwargs)
    watchdog = _WATCHDOG
    token = watchdog.arm(seconds)
    delivered = False
    try:
        return fn(*args, **kwargs)
    except VerifyTimeout:
        delivered = True
        raise
    finally:
        if watchdog.disarm(token) and not delivered:
            # The watchdog fired just as fn returned: take the pending exception here, not in the caller.
            _absorb_pending()


def _absorb_pending() -> None:
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        time.sleep(1e-4)  # the pending VerifyTimeout is raised at one of these bytecodes
    # Not delivered (should not happen): clear it so it cannot surface in unrelated code.
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(threading.get_ident()), ctypes.py_object())
    raise VerifyTimeout


# ------------------------------------------------------------------------------------- numbers too large

# A power operator whose exponent starts with a number ("^{64", "** 2", "^{-1000"), and whether that number is
# raised again (a tower). A lookahead, so that a tower's next operator is matched too.
_POWER_NUMBER = re.compile(r"(?:\^|\*\*)(?=[\s{(+\-]*(\d+)(?:\.\d+)?(\s*(?:\^|\*\*))?)")
_FACTORIAL = re.compile(r"(?<!\d)(\d+)[\s}]*!")  # "100000!", "{100000}!"; the lookbehind keeps it linear
_DIGIT_RUN = re.compile(r"\d+")
_BRACE = re.compile(r"[{}]")


def _too_large(text: str) -> str | None:
    """Why ``text`` holds a number too large to compute, or None. Linear in the text; literal numbers only.

    Refused: a power whose exponent is a number or a numeric tower (``2^{2^{64}}``, ``2**2**64``) over
    ``MAX_EXPONENT``, whatever the base; a factorial of a literal number over ``MAX_FACTORIAL``; a run of more than
    ``MAX_DIGITS`` digits. Symbolic exponents (``e^{-x^2}``) and computed operands (``(2^{64})!``) are not read:
    the worker's time limit is the guarantee, this filter only spares it the known bombs.
    """
    runs = _DIGIT_RUN.findall(text)
    if runs and max(map(len, runs)) > MAX_DIGITS:
        return f"a number of more than {MAX_DIGITS} digits"
    for match in _FACTORIAL.finditer(text):
        if int(match[1]) > MAX_FACTORIAL:
            return f"the factorial {match[0]!r}"
    logs: dict[int, float] = {}  # operator end -> log10 of its exponent, when that is a number or numeric tower
    limit = math.log10(MAX_EXPONENT)
    for op in reversed(list(_POWER_NUMBER.finditer(text))):  # right to left: a tower's upper exponents come first
        digits = op[1].lstrip("0")
        log = len(digits) - 1 + math.log10(int(digits[:15]) / 10 ** (min(len(digits), 15) - 1)) if digits else 0.0
        if op[2] is not None:  # raised again: the tower above was read already (absent: not a number)
            upper = logs.get(op.start(2) + len(op[2]))
            if upper is None:
                continue
            log = 0.0 if log <= 0 else math.inf if upper > 300 else 10**upper * log  # 0 or 1 to any power is small
        if log > limit:
            return f"the power {text[max(0, op.start() - 10) : op.end() + 20]!r}"
        logs[op.end()] = log
    return None


def _boxed_contents(text: str) -> list[str]:
    """The contents of the outermost ``\\boxed{...}`` groups of ``text`` (an unclosed one runs to the end)."""
    out, pos = [], 0
    while (start := text.find("\\boxed", pos)) != -1:
        i = start + len("\\boxed")
        while i < len(text) and text[i] in " \t":
            i += 1
        if i >= len(text) or text[i] != "{":
            pos = i
            continue
        depth = 0
        for brace in _BRACE.finditer(text, i):
            depth += 1 if brace[0] == "{" else -1
            if depth == 0:
                out.append(text[i + 1 : brace.start()])
                pos = brace.end()
                break
        else:
            out.append(text[i + 1 :])
            break
    return out


def _too_large_answer(answer: str) -> str | None:
    """:func:`_too_large` on what math-verify reads first: the boxed parts when there are any, else the text."""
    for part in _boxed_contents(answer) or [answer]:
        reason = _too_large(part)
        if reason is not None:
            return reason
    return None


# ----------------------------------------------------------------------------------------- parse and verify


def _parse(text: str) -> list[Any]:
    # parsing_timeout=None: math-verify's signal-based limit fails off the main thread; run_with_time_limit applies.
    return parse(text, extraction_config=_CONFIG, parsing_timeout=None)


@functools.lru_cache(maxsize=REFERENCE_CACHE_SIZE)
def parse_reference(gold: str) -> tuple[Any, ...]:
    """The parsed reference answer (empty when it cannot be parsed), cached per process.

    A bare reference (``\\frac{1}{2}``, ``(1,2)``, ``x=2``) is read as LaTeX math, as if written ``$...$``: parsed
    raw, math-verify would read ``(1,2)`` as nothing and ``x=2`` as ``2``; one with words in it is parsed raw.
    A reference that yields no mathematical object (only math-verify's fallback string) counts as unparseable.
    A time-out raises and is not cached.
    """
    gold = gold.strip()
    reason = _too_large(gold)
    if reason is not None:
        logger.warning("math reference %.80r holds %s: the math rewards give None for its samples", gold, reason)
        return ()
    bare = not _DELIMITED.search(gold) and not _WORD.search(_LATEX_TEXT.sub(" ", gold))
    for candidate in [f"${gold}$", gold] if bare else [gold]:
        parsed = _parse(candidate)
        # Only strings back means math-verify fell back to the raw text: nothing was understood.
        if any(not isinstance(p, str) for p in parsed):
            return tuple(parsed)
    # Logged once per reference and process (the result is cached): its samples score None.
    logger.warning("unparseable math reference %.80r: the math rewards give None for its samples", gold)
    return ()


def parse_answer(answer: str) -> list[Any]:
    """The parsed final answer of an answer text: ``\\boxed{}`` first, then the last answer-like expression.

    Answer texts up to ``ANSWER_CACHE_MAX_CHARS`` long are cached: within a GRPO group the text after the think
    block ("The answer is \\boxed{42}.") often repeats word for word.
    """
    fast = _integer_answer(answer)
    if fast is not None:
        return fast
    if len(answer) > ANSWER_CACHE_MAX_CHARS:
        return _parse(answer)
    return list(_parse_answer_cached(answer))


def _integer_answer(answer: str) -> list[Any] | None:
    """math-verify's parse of an integer answer, without its LaTeX parser; None for any other answer."""
    match = _PLAIN_INT.fullmatch(answer)
    # A percent after the box can make math-verify read n/100 ("$\\boxed{5}$\\%"): its parser decides those.
    percent = "%" in answer or "percent" in answer.lower()
    if match is None and answer.count("boxed") == 1 and "fbox" not in answer and not percent:
        match = _BOXED_INT.search(answer)
    if match is None or len(match[1]) > MAX_DIGITS:
        return None
    return [Integer(int(match[1])), match[1]]


@functools.lru_cache(maxsize=ANSWER_CACHE_SIZE)
def _parse_answer_cached(answer: str) -> tuple[Any, ...]:
    return tuple(_parse(answer))


def clear_cache(math_verify_caches: bool = False, *, references: bool = True, answers: bool = True) -> None:
    """Forget the parsed references and answers, here and in the idle verification workers.

    ``math_verify_caches=True`` also empties math-verify's own small LaTeX caches; benchmarks call it to time a
    truly fresh parse (``references=False`` keeps the parsed references, for the GRPO case).
    """
    if references:
        parse_reference.cache_clear()
    if answers:
        _parse_answer_cached.cache_clear()
    if math_verify_caches:
        _clear_math_verify_caches()
    _POOL.broadcast(
        {"op": "clear", "math_verify_caches": math_verify_caches, "references": references, "answers": answers}
    )


def _clear_math_verify_caches() -> None:
    for name in ("parse_latex_cached", "parse_expr_cached", "extract_latex"):
        getattr(_mv_parser, name).cache_clear()


def _verify(gold: str, answer: str | None, strict: bool, use_cache: bool) -> bool | None:
    reference = parse_reference(gold) if use_cache else parse_reference.__wrapped__(gold)
    if not reference:
        return None  # checked before the answer: an unparseable reference is None whatever the completion
    if answer is None or not answer.strip():
        return False
    reason = _too_large_answer(answer)
    if reason is not None:
        logger.info("math answer holds %s: wrong without parsing it", reason)
        return False
    parsed = parse_answer(answer)
    if not parsed:
        return False
    # Order matters: verify(gold, target). timeout_seconds=None for the same reason as parsing_timeout=None.
    return bool(verify(list(reference), parsed, strict=strict, timeout_seconds=None))


def _integer_verdict(gold: str, answer: str | None) -> bool | None:
    """The verdict for an integer reference and an integer (or missing) answer, as math-verify gives it; None for
    anything else. Saves the round trip to a worker for the commonest case."""
    gold = gold.strip()
    if _PLAIN_INT.fullmatch(gold) is None or len(gold) > MAX_DIGITS:
        return None
    if answer is None or not answer.strip():
        return False
    parsed = _integer_answer(answer)
    return None if parsed is None else bool(parsed[0] == Integer(int(gold)))


def verify_answer(
    gold: Any,
    answer: str | None,
    *,
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
    strict: bool = True,
    use_cache: bool = True,
) -> bool | None:
    """Whether ``answer`` (an answer text, already outside any think block) matches the reference ``gold``.

    Returns True or False, or ``None`` when the reference is missing or cannot be parsed, or when parsing and
    verifying took longer than ``timeout_s`` seconds (logged; None or <= 0: no limit). A missing or empty answer,
    or one holding a number too large to compute, is False. Runs in a verification worker (``ISOLATE``), so the
    call returns within ``timeout_s + KILL_GRACE_S`` (plus a worker's start-up, once) and the caller's memory stays
    flat whatever the answer. Thread- and process-safe. ``use_cache=False`` parses the reference afresh.
    """
    if gold is None or str(gold).strip() == "":
        return None
    gold = str(gold)
    limit = timeout_s if timeout_s is not None and timeout_s > 0 else None
    if not ISOLATE:
        try:
            return run_with_time_limit(_verify, limit, gold, answer, strict, use_cache)
        except VerifyTimeout:
            logger.warning("math verification timed out after %ss (reference %.80r)", timeout_s, gold)
            return None
    verdict = _integer_verdict(gold, answer)
    if verdict is not None:
        return verdict
    message = {"op": "verify", "gold": gold, "answer": answer, "strict": strict, "use_cache": use_cache}
    try:
        reply = _POOL.run({**message, "timeout": limit}, None if limit is None else limit + KILL_GRACE_S)
    except _WorkerDied as exc:
        logger.warning("math verification worker died (%s) (reference %.80r): the sample gets None", exc, gold)
        return None
    if reply is None or reply.get("timeout"):
        logger.warning("math verification timed out after %ss (reference %.80r)", timeout_s, gold)
        return None
    if "error" in reply:
        raise RuntimeError(f"math verification failed in its worker: {reply['error']}")
    return reply["ok"]


# ---------------------------------------------------------------------------------------- worker processes


class _WorkerDied(RuntimeError):
    """A verification worker exited (killed by its memory limit, say) or stopped answering before it started."""


class _Worker:
    """One verification process (:func:`_serve`): a JSON request per line in, a JSON reply per line out."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from rewards.math import _serve; _serve()", str(WORKER_MEMORY_MB)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
            start_new_session=True,  # a Ctrl-C meant for the trainer is not delivered mid-request
        )
        self.buffer = b""
        self.ready = False

    def _line(self, deadline: float) -> bytes | None:
        """The worker's next line, or None when ``deadline`` (monotonic) passes first."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise _WorkerDied(f"exit status {self.proc.wait()}")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line

    def call(self, message: dict[str, Any], timeout: float | None) -> dict[str, Any] | None:
        """The reply to ``message``, or None when ``timeout`` seconds passed first (the worker is then useless)."""
        assert self.proc.stdin is not None
        if not self.ready:
            if self._line(time.monotonic() + WORKER_START_TIMEOUT_S) is None:
                raise _WorkerDied(f"not started after {WORKER_START_TIMEOUT_S}s")
            self.ready = True
        try:
            self.proc.stdin.write(json.dumps(message).encode() + b"\n")
            self.proc.stdin.flush()
        except OSError as exc:  # it exited while idle
            raise _WorkerDied(f"{type(exc).__name__}: {exc}") from exc
        line = self._line(math.inf if timeout is None else time.monotonic() + timeout)
        if line is None:
            return None
        reply = json.loads(line)
        for level, name, text in reply.pop("logs", []):
            logging.getLogger(name).log(level, "%s", text)
        return reply

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


class _Pool:
    """The verification workers of this process: started on first use, reused, replaced when killed."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.idle: list[_Worker] = []
        self.size = 0  # workers alive, idle or busy

    def run(self, message: dict[str, Any], timeout: float | None) -> dict[str, Any] | None:
        """A worker's reply to ``message``; None when it did not come within ``timeout`` (that worker is killed)."""
        worker = self._take()
        reply = None
        try:
            reply = worker.call(message, timeout)
        finally:
            self._give(worker, healthy=reply is not None)
        return reply

    def broadcast(self, message: dict[str, Any]) -> None:
        """Send ``message`` to every idle worker (busy ones miss it); none is started for it."""
        with self.cond:
            workers, self.idle = self.idle, []
        for worker in workers:
            reply = None
            try:
                reply = worker.call(message, WORKER_START_TIMEOUT_S)
            except _WorkerDied:
                pass
            finally:
                self._give(worker, healthy=reply is not None)

    def _take(self) -> _Worker:
        with self.cond:
            while not self.idle and self.size >= MAX_WORKERS:
                self.cond.wait()
            worker = self.idle.pop() if self.idle else None
            if worker is None:
                self.size += 1
        if worker is not None and worker.alive():
            return worker
        if worker is not None:
            worker.kill()  # exited while idle: replaced
        try:
            return _Worker()
        except BaseException:
            with self.cond:
                self.size -= 1
                self.cond.notify()
            raise

    def _give(self, worker: _Worker, healthy: bool) -> None:
        replacement: _Worker | None = worker
        if not healthy:
            worker.kill()
            try:
                replacement = _Worker()  # starts importing now, ready by the time it is needed
            except OSError:
                replacement = None
        with self.cond:
            if replacement is None:
                self.size -= 1
            else:
                self.idle.append(replacement)
            self.cond.notify()

    def close(self) -> None:
        with self.cond:
            workers, self.idle = self.idle, []
            self.size -= len(workers)
        for worker in workers:
            worker.kill()


_POOL = _Pool()
atexit.register(lambda: _POOL.close())


class _LogRecords(logging.Handler):
    """Keeps a worker's log records for the caller, which re-emits them with its own handlers."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[tuple[int, str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.levelno, record.name, record.getMessage()))


def _serve() -> None:
    """A verification worker's main loop (``python -c "from rewards.math import _serve; _serve()" MEMORY_MB``)."""
    memory = int(sys.argv[1]) << 20
    if memory > 0:
        hard = resource.getrlimit(resource.RLIMIT_AS)[1]
        resource.setrlimit(resource.RLIMIT_AS, (memory if hard < 0 else min(memory, hard), hard))
    # SIGALRM's default action ends the process, even mid C call: a worker whose caller died stops on its own.
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a stray print goes to stderr, not into the replies
    handler = _LogRecords()
    for name in ("rewards", "math_verify"):
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).propagate = False
    logger.setLevel(logging.INFO)
    out.write(b'{"ready": true}\n')
    out.flush()
    for line in sys.stdin.buffer:
        reply = _handle(json.loads(line))
        reply["logs"], handler.records = handler.records, []
        out.write(json.dumps(reply).encode() + b"\n")
        out.flush()


def _handle(message: dict[str, Any]) -> dict[str, Any]:
    if message["op"] == "clear":
        clear_cache(message["math_verify_caches"], references=message["references"], answers=message["answers"])
        return {}
    limit = message["timeout"]
    if limit is not None:  # the caller kills this process KILL_GRACE_S after the limit; if it is gone, this does
        signal.setitimer(signal.ITIMER_REAL, limit + 10 * KILL_GRACE_S + 5.0)
    try:
        ok = run_with_time_limit(
            _verify, limit, message["gold"], message["answer"], message["strict"], message["use_cache"]
        )
        return {"ok": ok}
    except VerifyTimeout:
        return {"timeout": True}
    except Exception as exc:  # MemoryError included: the caller logs it, the sample gets None
        return {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def applies_to_task(task: Any, tasks: Iterable[str]) -> bool:
    """True when there is no task value (None or blank), or it is one of ``tasks`` (case-insensitive)."""
    value = "" if task is None else str(task).strip().lower()
    return not value or value in {t.lower() for t in tasks}


# ------------------------------------------------------------------------------------------------------ reward


@register("math")
class MathReward(Reward):
    """1.0 when the final answer matches the ``answer`` column, 0.0 when wrong or missing, None when not math.

    Args:
        timeout_s: wall-clock limit for parsing and verifying one sample (None: no limit); a time-out gives None.
        tasks: ``task`` column values this reward applies to; rows of other tasks get None. Rows without a
            ``task`` value (None or blank) are scored.
        strict: math-verify's ``strict`` (variables must match, sets are not tuples).
        think: the run's think format (the answer is read after the think block); None until the router sets it.
    """

    name = "math"

    def __init__(
        self,
        timeout_s: float | None = DEFAULT_TIMEOUT_S,
        tasks: Iterable[str] = MATH_TASKS,
        strict: bool = True,
        *,
        think: ThinkFormat | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        self.tasks = tuple(tasks)
        self.strict = strict
        self.think = think

    def correct(self, completion: Any, answer: Any = None, task: Any = None) -> bool | None:
        """True/False for a math row, None when the reward does not apply (also used by the length rewards)."""
        if not applies_to_task(task, self.tasks):
            return None
        return verify_answer(answer, self.answer(completion), timeout_s=self.timeout_s, strict=self.strict)

    def score(self, completion: Any, answer: Any = None, task: Any = None, **_: Any) -> float | None:
        ok = self.correct(completion, answer, task)
        return None if ok is None else float(ok)


#: Pools of parents this process was forked from: kept, never closed (see _after_fork_in_child).
_FORKED_AWAY: list[_Pool] = []


def _after_fork_in_child() -> None:
    # A forked child starts its own workers. The parent's stay referenced and untouched: closing the child's copies
    # of their pipes could flush a request another thread of the parent was writing at the fork into the parent's
    # worker. A worker whose parent exits still stops: at the end of its input once the child exits too, or at its
    # own alarm when busy.
    global _POOL
    _FORKED_AWAY.append(_POOL)
    _POOL = _Pool()


os.register_at_fork(after_in_child=_after_fork_in_child)
