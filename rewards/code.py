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

import logging
import os
import re
from collections.abc import Iterable
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

# A fenced block: ``` or ~~~ (three or more), an optional label, the body, the same fence closing it.
_FENCE = re.compile(
    r"^[ \t]*(?P<fence>`{3,}|~{3,})[ \t]*(?P<label>[^\s`]*)[^\n]*\n(?P<body>.*?)^[ \t]*(?P=fence)[ \t]*$",
    re.MULTILINE | re.DOTALL,
)


def extract_code(answer: str | None, labels: Iterable[str] = PYTHON_LABELS) -> str | None:
    """The body of the last closed fenced block labelled with one of ``labels`` or unlabelled; None if none."""
    if not answer:
        return None
    wanted = {label.lower() for label in labels}
    last = None
    for match in _FENCE.finditer(answer):
        label = match["label"].lower()
        if not label or label in wanted:
            last = match["body"]
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
