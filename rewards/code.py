"""The code reward: extract the program, check its syntax, run the tests in the sandbox, compare the outputs.

``code`` scores the fraction of test cases passed; ``code_binary`` scores 1.0 only when every case passes (and
stops a solution's run at its first failing case, the rest ``skipped``). The answer is read only after the closed
think block (an unclosed block has no answer: 0.0), and the program is its last fenced code block marked
``python`` (or ``py``/``python3``) or unmarked. No block, or a syntax error: 0.0 without running anything. Rows
whose ``tests`` are empty or missing, or whose ``task`` is not a code task, get ``None`` (the reward does not
apply); malformed ``tests`` give ``None`` with a warning naming the sample.

The ``tests`` column holds, per sample, a list of cases ``{"input": str, "output": str}`` (a stdin/stdout program;
outputs compared line by line, each line stripped) or ``{"assert": str}`` (a statement run after the solution, in
its namespace, with ``__name__`` set to ``"solution"`` so a ``__main__`` guard does not run); a JSON string of
that list is accepted. A batch runs ``max_workers`` sandboxes at once (see :mod:`rewards.sandbox`). What happened
to every case of the last batch is kept in ``reward.last_results`` (``reward.last_details()`` as JSON-able dicts)
for logging.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from typing import Any

from rewards.base import Reward, ThinkFormatNotSet, column
from rewards.registry import register
from rewards.sandbox import SandboxLimits, SandboxResult, normalize_tests, run_tests
from train.core.modes import ThinkFormat

logger = logging.getLogger("rewards.code")

#: ``task`` column values the code rewards apply to (compared case-insensitively).
CODE_TASKS = ("code",)
#: Fence labels read as Python; an unlabelled fence counts too.
PYTHON_LABELS = ("python", "py", "python3")

#: Longest answer text searched for code blocks; a longer one has no program (a completion is far shorter).
MAX_ANSWER_CHARS = 1_000_000


def _fence_run(line: str) -> tuple[str, int, int] | None:
    """``(char, start, length)`` of the run of three or more backticks or tildes opening ``line`` after blanks."""
    start = len(line) - len(line.lstrip(" \t"))
    char = line[start : start + 1]
    if char not in ("`", "~"):
        return None
    length = len(line) - start - len(line[start:].lstrip(char))
    return (char, start, length) if length >= 3 else None


def _fenced_blocks(text: str) -> Iterator[tuple[str, str]]:
    """``(label, body)`` of each fenced block in ``text``, in order, in linear time.

    A block opens with a line of three or more backticks or tildes after optional blanks, then an optional label
    (up to the first blank or backtick) and anything; it closes at the next line that is the same fence alone
    (blanks around it allowed). An opener never closed is no block, and the search goes on from its next line.
    This is exactly what the regex ``^[ \t]*(?P<fence>`{3,}|~{3,})[ \t]*(?P<label>[^\\s`]*)[^\n]*\n(?P<body>.*?)
    ^[ \t]*(?P=fence)[ \t]*$`` (MULTILINE, DOTALL) found with ``finditer``, including its backtracking to a
    shorter fence (an opener of four backticks closed by three), but that regex rescanned the rest of the text for
    every opener: 8,000 unclosed openers took ~85 s. Here each fence's closing lines are indexed once.
    """
    lines = text.split("\n")
    starts = list(itertools.accumulate((len(line) + 1 for line in lines), initial=0))
    closers: dict[tuple[str, int], list[int]] = {}  # (char, length) of a fence -> the lines that are it alone
    runs = [_fence_run(line) for line in lines]
    for j, (line, run) in enumerate(zip(lines, runs)):
        if run is not None and run[1] + run[2] == len(line.rstrip(" \t")):
            closers.setdefault((run[0], run[2]), []).append(j)
    sizes = {c: sorted(n for ch, n in closers if ch == c) for c in "`~"}  # the fence lengths that can close
    i = 0
    while i < len(lines) - 1:  # an opener needs the newline after it
        run = runs[i]
        if run is None:
            i += 1
            continue
        char, start, length = run
        # The regex backtracks to shorter fences, longest first; only lengths some line closes with are tried, so
        # an opener costs at most its own length.
        for size in reversed(sizes[char][: bisect.bisect_right(sizes[char], length)]):
            found = closers[(char, size)]
            k = bisect.bisect_right(found, i)
            if k < len(found):
                break
        else:
            i += 1  # never closed: no block; a later line may open one
            continue
        j = found[k]
        rest = lines[i][start + size :].lstrip(" \t")
        label = rest[: next((n for n, c in enumerate(rest) if c.isspace() or c == "`"), len(rest))]
        yield label, text[starts[i + 1] : starts[j]]
        i = j + 1


def extract_code(answer: str | None, labels: Iterable[str] = PYTHON_LABELS) -> str | None:
    """The body of the last closed fenced block labelled with one of ``labels`` or unlabelled; None if none.

    Linear in the text (see :func:`_fenced_blocks`); a text over ``MAX_ANSWER_CHARS`` has no program.
    """
    if not answer:
        return None
    if len(answer) > MAX_ANSWER_CHARS:
        logger.warning("answer of %d characters is over %d: no code block read", len(answer), MAX_ANSWER_CHARS)
        return None
    wanted = {label.lower() for label in labels}
    last = None
    for label, body in _fenced_blocks(answer):
        if not label or label.lower() in wanted:
            last = body
    return last


def applies_to_task(task: Any, tasks: Iterable[str] = CODE_TASKS) -> bool:
    """True when there is no task value, or it is one of ``tasks`` (case-insensitive)."""
    return task is None or str(task).strip().lower() in {t.lower() for t in tasks}


class _CodeRewardBase(Reward):
    """Shared by ``code`` and ``code_binary``.

    Args:
        limits: a :class:`SandboxLimits`, or a dict of its fields (as written in a YAML config).
        max_workers: sandboxes run at once for a batch (default: the CPU count).
        tasks: ``task`` column values this reward applies to; rows without a ``task`` value are scored.
        think: the run's think format (the program is read after the think block); None until the router sets it.
    """

    name = "code"
    binary = False

    def __init__(
        self,
        limits: SandboxLimits | dict[str, Any] | None = None,
        max_workers: int | None = None,
        tasks: Iterable[str] = CODE_TASKS,
        *,
        think: ThinkFormat | None = None,
    ) -> None:
        if isinstance(limits, dict):
            known = {f.name for f in fields(SandboxLimits)}
            unknown = sorted(set(limits) - known)
            if unknown:
                raise ValueError(f"{self.name}: unknown sandbox limits {unknown}; known: {sorted(known)}")
            limits = SandboxLimits(**limits)
        self.limits = limits or SandboxLimits()
        self.max_workers = max_workers
        self.tasks = tuple(tasks)
        self.think = think
        self._last_results: list[SandboxResult | None] = []

    @property
    def last_results(self) -> list[SandboxResult | None]:
        """Per-case outcomes of the last batch (None where the reward did not apply)."""
        return self._last_results

    def __getstate__(self) -> dict[str, Any]:  # the last batch's details stay with this copy
        state = dict(self.__dict__)
        state["_last_results"] = []
        return state

    # ------------------------------------------------------------------------------------------ per sample

    def details(self, completion: Any, tests: Any = None, task: Any = None) -> SandboxResult | None:
        """The sandbox's per-case outcome for one sample; None when the reward does not apply.

        No answer (unclosed think block) or no code block gives a result with no cases; a syntax error gives
        ``syntax_error`` for every case. Raises ``ValueError`` for malformed ``tests``.
        """
        if not applies_to_task(task, self.tasks) or tests is None or (isinstance(tests, str) and not tests.strip()):
            return None
        cases = normalize_tests(tests)
        if not cases:
            return None
        code = extract_code(self.answer(completion))
        if code is None:
            return SandboxResult([], "none", ["no answer or no python code block"])
        # All-or-nothing: the first failure decides, so the remaining cases are skipped (a looping solution
        # costs one timeout rather than one per case).
        return run_tests(code, cases, self.limits, stop_after_failures=1 if self.binary else None)

    def _value(self, result: SandboxResult | None) -> float | None:
        if result is None:
            return None
        if not result.cases:
            return 0.0
        return float(result.all_passed) if self.binary else result.fraction

    def score(self, completion: Any, tests: Any = None, task: Any = None, **_: Any) -> float | None:
        return self._value(self.details(completion, tests, task))

    # ---------------------------------------------------------------------------------------------- batch

    def __call__(self, completions: list[Any], **columns: Any) -> list[float | None]:
        n = len(completions)
        tests, tasks = column(columns, "tests", n), column(columns, "task", n)
        results: list[SandboxResult | None] = [None] * n
        workers = max(1, min(n, self.max_workers or os.cpu_count() or 1))

        def one(i: int) -> float | None:
            try:
                results[i] = self.details(completions[i], tests[i], tasks[i])
            except ThinkFormatNotSet:  # a configuration error: stop the run (as Reward.safe_score does)
                raise
            except Exception as exc:  # a reward never crashes training
                logger.warning("reward %s failed on sample %d: %s: %s", self.name, i, type(exc).__name__, exc)
                return None
            return self._value(results[i])

        if workers == 1:
            scores = [one(i) for i in range(n)]
        else:
            with ThreadPoolExecutor(workers, thread_name_prefix=self.name) as pool:
                scores = list(pool.map(one, range(n)))
        self._last_results = results
        return scores

    def last_details(self) -> list[dict[str, Any] | None]:
        """The last batch's per-case outcomes as JSON-able dicts (None where the reward did not apply)."""
        return [None if r is None else r.to_dict() for r in self.last_results]


@register("code")
class CodeReward(_CodeRewardBase):
    """Fraction of test cases passed (0.0 to 1.0); see the module docstring."""

    name = "code"
    binary = False


@register("code_binary")
class BinaryCodeReward(_CodeRewardBase):
    """1.0 when every test case passes, else 0.0; see the module docstring."""

    name = "code_binary"
    binary = True
