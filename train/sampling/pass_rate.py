"""Pass rates of the current model: sample N replies per prompt and verify each one.

Model-aware complexity (Stage 1) is ``1 - pass rate`` of the *current student*; the dual-system data builder
(Stage 2) compares pass rates in fast and slow mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from train.core.checks import Checker, exact_match
from train.core.modes import Mode, parse_response, think_delimiters
from train.sampling.generation import Generation, generate


@dataclass(frozen=True)
class PassRate:
    """The replies sampled for one prompt, which of them were correct, and the resulting rate."""

    generations: list[Generation]
    correct: list[bool]

    @property
    def rate(self) -> float:
        return sum(self.correct) / len(self.correct) if self.correct else 0.0

    @property
    def complexity(self) -> float:
        return 1.0 - self.rate


def pass_rates(
    model: Any,
    tokenizer: Any,
    records: Sequence[dict[str, Any]],
    num_samples: int = 8,
    mode: Mode | str | None = None,
    check: Checker = exact_match,
    temperature: float = 1.0,
    max_new_tokens: int = 256,
    batch_size: int = 64,
    **generate_kwargs: Any,
) -> list[PassRate]:
    """Sample ``num_samples`` replies per record (in ``mode``) and check each answer against the record."""
    gens = generate(
        model,
        tokenizer,
        [r["prompt"] for r in records],
        mode=mode,
        num_samples=num_samples,
        do_sample=num_samples > 1,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        **generate_kwargs,
    )
    ts, te = think_delimiters(tokenizer)  # e.g. openPangu's [unused16]/[unused17]
    return [
        PassRate(list(g), [bool(check(parse_response(x.text, ts, te).answer, r)) for x in g])
        for r, g in zip(records, gens)
    ]
