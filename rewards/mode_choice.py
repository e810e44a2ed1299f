"""The mode-choice reward for RL on ``/auto_think`` (AdaptThink-style, constrained by the slow-mode reference).

AdaptThink (Zhang et al. 2025) trains a model to skip thinking with ``r = delta * 1[no think] + R(y) - R_ref(x)``:
a bonus for not thinking, and accuracy measured against the reference model's accuracy on the prompt, so the
bonus is only worth taking where it costs no accuracy. Here, for an ``/auto_think`` prompt:

``reward = correct - slow_ref + bonus``, with ``bonus = delta`` for a fast reply that is correct, granted only while
the fast replies of the same prompt (its GRPO group, identified by the prompt) are on average at least as accurate
as the slow-mode reference minus ``margin``. ``slow_ref`` is the prompt's slow-mode pass rate from the fusion data
(column ``slow_rate``, 0 when missing). With ``delta < 1`` a wrong fast reply never outscores a correct slow one:
accuracy comes first, speed second, and a prompt where fast replies fall below the slow-mode reference earns no
speed bonus at all.

Prompts asking for ``/think`` or ``/no_think`` get plain correctness, plus ``-1`` when the reply ignores the tag
(``mode_penalty``), so a mixed batch keeps the explicit tags obeyed while auto learns to choose.

Correctness uses :func:`rewards.verify.check` (MARS rule layer: math-verify, code tests, exact match otherwise).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

from rewards.base import Reward, column
from rewards.registry import register
from rewards.verify import check as rule_check
from train.core.modes import Mode, ThinkFormat, completion_text, detect_mode


def _default_check(answer: str | None, record: dict[str, Any]) -> bool:
    return bool(rule_check(answer, record))


@register("mode_choice")
class ModeChoiceReward(Reward):
    """Correctness relative to the slow-mode reference, plus a bonus for correct fast replies under ``/auto_think``.

    Args:
        delta: the bonus of a correct fast reply (< 1, so accuracy always wins).
        margin: fast replies of a prompt may be this much less accurate than the slow reference and keep the bonus.
        mode_penalty: added when a ``/think`` or ``/no_think`` prompt is not obeyed (<= 0).
        reference_column: the column with the prompt's slow-mode reference accuracy.
        check: ``check(answer, row) -> bool``; default: the MARS rule layer.
        think: the run's think format (``ThinkFormat.from_tokenizer(tokenizer)``); required before scoring.
    """

    name = "mode_choice"

    def __init__(
        self,
        delta: float = 0.5,
        margin: float = 0.0,
        mode_penalty: float = -1.0,
        reference_column: str = "slow_rate",
        check: Callable[[str | None, dict[str, Any]], bool] | None = None,
        *,
        think: ThinkFormat | None = None,
    ) -> None:
        if not 0.0 <= delta < 1.0:
            raise ValueError(f"delta={delta} must be in [0, 1): a fast reply must never beat a correct one")
        if mode_penalty > 0:
            raise ValueError(f"mode_penalty={mode_penalty} must be <= 0")
        self.delta, self.margin, self.mode_penalty = delta, margin, mode_penalty
        self.reference_column = reference_column
        self.check = check or _default_check
        self.think = think

    def __call__(self, completions: list[Any], **columns: Any) -> list[float | None]:
        n = len(completions)
        prompts = column(columns, "prompts", n) if "prompts" in columns else column(columns, "prompt", n)
        refs = column(columns, self.reference_column, n)
        keys = [k for k, v in columns.items() if isinstance(v, (list, tuple)) and len(v) == n]
        rows = [{k: columns[k][i] for k in keys} for i in range(n)]
        think = self.think_format()
        parsed = [think.parse(completion_text(c)) for c in completions]
        correct = [
            p.mode in ("fast", "slow") and p.well_formed and bool(self.check(p.answer, row))
            for p, row in zip(parsed, rows)
        ]
        # Fast accuracy per prompt (its group): the bonus is withheld where fast replies fall below the reference.
        fast_hits: dict[str, list[bool]] = defaultdict(list)
        for prompt, p, ok in zip(prompts, parsed, correct):
            if p.mode == "fast":
                fast_hits[repr(prompt)].append(ok)
        out: list[float | None] = []
        for prompt, p, ok, ref in zip(prompts, parsed, correct, refs):
            if prompt is None:
                out.append(float(ok))
                continue
            wanted = detect_mode(prompt)
            if wanted is not Mode.AUTO:
                obeyed = p.mode == ("fast" if wanted is Mode.FAST else "slow")
                out.append(float(ok) + (0.0 if obeyed else self.mode_penalty))
                continue
            ref = 0.0 if ref is None else float(ref)
            hits = fast_hits.get(repr(prompt), [])
            allowed = bool(hits) and sum(hits) / len(hits) >= ref - self.margin - 1e-9
            bonus = self.delta if (p.mode == "fast" and ok and allowed) else 0.0
            out.append(float(ok) - ref + bonus)
        return out
