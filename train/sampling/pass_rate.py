"""Pass rates: sample k replies per prompt and verify each one -- the one "sample and check" loop.

Model-aware complexity (Stage 1) is ``1 - pass rate`` of the *current student*; the dual-system data builder
(Stage 2) compares pass rates in fast and slow mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from train.core.checks import Checker, exact_match
from train.core.modes import Mode
from train.sampling.params import Sampler, SamplingParams
from train.sampling.reply import Reply


@dataclass(frozen=True)
class PassRate:
    """The replies sampled for one prompt, which of them were correct, and the resulting rate."""

    replies: list[Reply]
    correct: list[bool]

    @property
    def rate(self) -> float:
        return sum(self.correct) / len(self.correct) if self.correct else 0.0

    @property
    def complexity(self) -> float:
        return 1.0 - self.rate


def pass_rates(
    sampler: Sampler,
    records: Sequence[dict[str, Any]],
    k: int = 8,
    check: Checker = exact_match,
    mode: Mode | str | None = None,
    temperature: float = 1.0,
    max_new_tokens: int = 256,
    seed: int | None = None,
) -> list[PassRate]:
    """Sample ``k`` replies per record (in ``mode``) and check each reply's answer (parsed with ``sampler.think``).

    ``k == 1`` decodes greedily; more replies are sampled at ``temperature``. Build the sampler with
    :func:`train.sampling.make_sampler` (or wrap a loaded model in a
    :class:`~train.sampling.transformers.TransformersSampler`).
    """
    if not isinstance(sampler, Sampler):
        raise TypeError(
            f"pass_rates takes a Sampler (train.sampling.make_sampler), not {type(sampler).__name__}; "
            "wrap a loaded model in TransformersSampler(model, tokenizer)"
        )
    params = SamplingParams(n=k, temperature=temperature if k > 1 else 0.0, max_new_tokens=max_new_tokens, seed=seed)
    replies = sampler.sample([r["prompt"] for r in records], params, mode)
    think = sampler.think
    return [
        PassRate(list(rs), [bool(check(think.parse(x.text).answer, r)) for x in rs]) for r, rs in zip(records, replies)
    ]
