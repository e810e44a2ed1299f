"""The math reward: the final answer, verified against the reference with math-verify.

The answer is read only after the closed think block (``rewards.base.extract_answer``): ``\\boxed{}`` first, then
the last answer-like expression (math-verify's LaTeX and plain-expression extraction, boxed given top priority).
It is checked with ``math_verify.verify(gold, answer)`` in that order: verify is asymmetric (a gold ``1<x<2`` accepts
the answer ``(1,2)``, a gold ``(1,2)`` does not accept ``1<x<2``), and open-r1 passes the two the other way round in
its length rewards.

Each reference is parsed once per process (an LRU cache keyed on the reference string), short answer texts are
cached too, and integer answers skip math-verify's LaTeX parser (they parse alike, see ``_integer_answer``).
math-verify's own time limits use ``signal.alarm``, which fails off the main thread, so they are switched off and
replaced by ``run_with_time_limit``: a watchdog thread that raises ``VerifyTimeout`` in the verifying thread when
the limit passes. That works on any thread and in worker processes (the watchdog restarts after a fork). It
interrupts Python code (all of sympy's simplification); a single long C call (a huge integer power) finishes first.

Scores: 1.0 correct, 0.0 wrong or missing answer (an unclosed think block has no answer), ``None`` when the sample
is not a math task, has no reference, or the reference cannot be parsed, and ``None`` on a time-out or an error.
"""

from __future__ import annotations

import ctypes
import functools
import heapq
import itertools
import logging
import os
import re
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
    if match is None and answer.count("boxed") == 1 and "fbox" not in answer:
        match = _BOXED_INT.search(answer)
    if match is None:
        return None
    return [Integer(int(match[1])), match[1]]


@functools.lru_cache(maxsize=ANSWER_CACHE_SIZE)
def _parse_answer_cached(answer: str) -> tuple[Any, ...]:
    return tuple(_parse(answer))


def clear_cache(math_verify_caches: bool = False) -> None:
    """Forget the parsed references and answers; ``math_verify_caches=True`` also empties math-verify's own small
    LaTeX caches. Benchmarks call it with ``True`` to time a truly fresh parse.
    """
    parse_reference.cache_clear()
    _parse_answer_cached.cache_clear()
    if math_verify_caches:
        _clear_math_verify_caches()


def _clear_math_verify_caches() -> None:
    for name in ("parse_latex_cached", "parse_expr_cached", "extract_latex"):
        getattr(_mv_parser, name).cache_clear()


def _verify(gold: str, answer: str | None, strict: bool, use_cache: bool) -> bool | None:
    reference = parse_reference(gold) if use_cache else parse_reference.__wrapped__(gold)
    if not reference:
        return None  # checked before the answer: an unparseable reference is None whatever the completion
    if answer is None or not answer.strip():
        return False
    parsed = parse_answer(answer)
    if not parsed:
        return False
    # Order matters: verify(gold, target). timeout_seconds=None for the same reason as parsing_timeout=None.
    return bool(verify(list(reference), parsed, strict=strict, timeout_seconds=None))


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
    verifying took longer than ``timeout_s`` seconds (logged). A missing or empty answer is False. Thread- and
    process-safe. ``use_cache=False`` parses the reference afresh (for benchmarks).
    """
    if gold is None or str(gold).strip() == "":
        return None
    try:
        return run_with_time_limit(_verify, timeout_s, str(gold), answer, strict, use_cache)
    except VerifyTimeout:
        logger.warning("math verification timed out after %ss (reference %.80r)", timeout_s, str(gold))
        return None


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
