"""Verification of teacher replies and rejection sampling: keep the shortest reply that passes.

Two layers, as in the Pangu Embedded recipe:

* the **rule layer** uses the MARS rule rewards: ``math`` (math-verify against the reference answer) and ``code``
  (the sandboxed test runner) give a definite verdict where they apply;
* the **model layer** uses the MARS judge (``judge_equivalence`` against a reference, ``judge`` rubric without one)
  for what the rules cannot check: general tasks, and math whose reference math-verify cannot parse.

A reply the rules call wrong is never sent to the judge. A reply neither layer can decide is not kept. Of the
verified replies of a prompt the shortest (in tokens) is kept; ties go to the earliest sample.

:func:`check` is the same rule layer shaped as a :data:`train.eval.evaluation.Checker`, for
:func:`train.sampling.pass_rate.pass_rates` (model-aware complexity).
"""

from __future__ import annotations

import importlib
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from rewards.registry import registered
from train.core.checks import exact_match
from train.core.modes import QWEN3_THINK, ThinkFormat

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verdict:
    """Whether a reply is correct (None: undecided) and which layer decided: ``rule``, ``model`` or ``none``."""

    correct: bool | None
    layer: str


def _reward(name: str, **params: Any) -> Any:
    """A MARS reward by name, importing only its own module (the others may be missing on a slim install)."""
    module = {"math": "math", "code": "code", "judge": "judge", "judge_equivalence": "judge"}.get(name, name)
    importlib.import_module(f"rewards.{module}")
    table = registered()
    if name not in table:
        raise KeyError(f"reward {name!r} is not registered by rewards.{module}")
    return table[name](**params)


def _score(reward: Any, text: str, record: dict[str, Any]) -> float | None:
    """One sample through a reward's trl batch contract."""
    columns = {"prompt": [record.get("prompt")], "answer": [record.get("answer")], "task": [record.get("task")]}
    if record.get("tests") is not None:
        columns["tests"] = [record["tests"]]
    return reward([text], **columns)[0]


@dataclass
class Verifier:
    """The rule layer and (optionally) the model layer.

    ``think`` is the think format the replies are written in (the rule rewards read the answer after it);
    ``judge`` is a :class:`rewards.judge.Judge` (or any reward with the trl call contract), None to skip the model
    layer; ``judge_threshold`` is the lowest judge score that counts as correct.
    """

    think: ThinkFormat = field(kw_only=True)
    judge: Any = None
    judge_threshold: float = 0.5
    code_threshold: float = 1.0
    timeout_s: float | None = 5.0
    _rewards: dict[str, Any] = field(default_factory=dict, repr=False)

    def _rule(self, task: str) -> Any | None:
        if task not in ("math", "code"):
            return None
        if task not in self._rewards:
            params: dict[str, Any] = {"think": self.think}
            if task == "math":
                params["timeout_s"] = self.timeout_s
            try:
                self._rewards[task] = _reward(task, **params)
            except (ImportError, KeyError) as exc:
                logger.warning("no %s rule reward (%s): those replies go to the model layer", task, exc)
                self._rewards[task] = None
        return self._rewards[task]

    def rule(self, text: str, record: dict[str, Any]) -> bool | None:
        """The rule layer's verdict on one reply: True, False, or None when no rule applies."""
        task = str(record.get("task") or "").lower()
        reward = self._rule(task)
        if reward is None:
            return None
        score = _score(reward, text, record)
        if score is None:
            return None
        return score >= (self.code_threshold if task == "code" else 1.0)

    def verify(self, records: Sequence[dict[str, Any]], texts: Sequence[Sequence[str]]) -> list[list[Verdict]]:
        """Verdicts for every reply of every record; the undecided ones go to the judge in one batch."""
        verdicts: list[list[Verdict]] = []
        pending: list[tuple[int, int]] = []
        for i, (record, replies) in enumerate(zip(records, texts)):
            row = []
            for j, text in enumerate(replies):
                ok = self.rule(text, record)
                row.append(Verdict(ok, "rule" if ok is not None else "none"))
                if ok is None:
                    pending.append((i, j))
            verdicts.append(row)
        if pending and self.judge is not None:
            scores = self.judge(
                [texts[i][j] for i, j in pending],
                prompt=[records[i].get("prompt") for i, _ in pending],
                answer=[records[i].get("answer") for i, _ in pending],
                task=[records[i].get("task") for i, _ in pending],
            )
            for (i, j), s in zip(pending, scores):
                if s is not None:
                    verdicts[i][j] = Verdict(s >= self.judge_threshold, "model")
        return verdicts


def shortest_correct(samples: Sequence[dict[str, Any]], verdicts: Sequence[Verdict]) -> int | None:
    """Index of the shortest verified sample (fewest ``num_tokens``; the earliest on a tie), None if none passed."""
    best = None
    for i, (s, v) in enumerate(zip(samples, verdicts)):
        if v.correct and (best is None or s["num_tokens"] < samples[best]["num_tokens"]):
            best = i
    return best


@dataclass
class TaskReport:
    """Per-task counts of a rejection-sampling pass."""

    prompts: int = 0
    kept: int = 0
    samples: int = 0
    correct: int = 0
    by_rule: int = 0
    by_model: int = 0
    undecided: int = 0
    kept_tokens: int = 0

    def as_dict(self) -> dict[str, Any]:
        d = dict(vars(self))
        d["kept_rate"] = self.kept / self.prompts if self.prompts else 0.0
        d["mean_kept_tokens"] = self.kept_tokens / self.kept if self.kept else 0.0
        return d


def rejection_sample(
    rows: Sequence[dict[str, Any]], verifier: Verifier, batch_size: int = 256, progress: bool = True
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Keep, per teacher row, the shortest verified sample as the record's ``response``.

    Returns the kept records (the row without ``samples``, plus ``response``, ``num_tokens``, ``num_correct`` and
    ``num_samples``) and a per-task report (prompts, kept, samples, correct, decided by rule/model, undecided).
    """
    kept: list[dict[str, Any]] = []
    reports: dict[str, TaskReport] = defaultdict(TaskReport)
    for lo in tqdm(range(0, len(rows), batch_size), desc="verify", disable=not progress, leave=False):
        chunk = rows[lo : lo + batch_size]
        verdicts = verifier.verify(chunk, [[s["text"] for s in r["samples"]] for r in chunk])
        for row, vs in zip(chunk, verdicts):
            rep = reports[str(row.get("task"))]
            rep.prompts += 1
            rep.samples += len(vs)
            rep.correct += sum(bool(v.correct) for v in vs)
            rep.by_rule += sum(v.layer == "rule" for v in vs)
            rep.by_model += sum(v.layer == "model" for v in vs)
            rep.undecided += sum(v.layer == "none" for v in vs)
            best = shortest_correct(row["samples"], vs)
            if best is None:
                continue
            sample = row["samples"][best]
            rec = {k: v for k, v in row.items() if k not in ("samples", "response")}
            rec.update(
                response=sample["text"], num_tokens=sample["num_tokens"], num_correct=sum(bool(v.correct) for v in vs)
            )
            rec["num_samples"] = len(vs)
            kept.append(rec)
            rep.kept += 1
            rep.kept_tokens += sample["num_tokens"]
    report = {task: r.as_dict() for task, r in sorted(reports.items())}
    for task, r in report.items():
        logger.info("verify %s: kept %d of %d prompts (%d of %d samples correct)", task, r["kept"], r["prompts"],
                    r["correct"], r["samples"])  # fmt: skip
    return kept, report


# --------------------------------------------------------------------------------------- checker for pass rates

# check() is given an answer, already outside any think block. The rule rewards read replies, so the answer goes
# to them as the fast reply that carries it: an empty think block in this format, then the answer.
_ANSWER_FORMAT = QWEN3_THINK
_CHECK_VERIFIER = Verifier(think=_ANSWER_FORMAT)


def check(answer: str | None, record: dict[str, Any]) -> bool:
    """MARS rule-layer checker for :func:`train.sampling.pass_rate.pass_rates`: is this *answer* (after the think
    block) right?

    Math uses math-verify, code runs the record's tests; a task no rule covers falls back to exact match.
    """
    if answer is None:
        return False
    ok = _CHECK_VERIFIER.rule(_ANSWER_FORMAT.format(answer), record)
    return exact_match(answer, record) if ok is None else ok


def reply_correct(text: str, record: dict[str, Any], think: ThinkFormat) -> bool:
    """:func:`check` on a whole reply: the answer is read after its think block, written in ``think``'s tags."""
    return check(think.parse(text).answer, record)
