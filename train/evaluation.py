"""Mode-aware evaluation: accuracy, output tokens and tag compliance per mode (fast, slow, auto)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from train.generation import Generation, generate
from train.modes import Mode, parse_response

logger = logging.getLogger(__name__)

Checker = Callable[[str | None, dict[str, Any]], bool]


def exact_match(answer: str | None, record: dict[str, Any]) -> bool:
    """The answer equals the reference after stripping whitespace (enough for the arithmetic world)."""
    if answer is None or record.get("answer") is None:
        return False
    return "".join(answer.split()) == "".join(str(record["answer"]).split())


def complies(mode: Mode, parsed_mode: str) -> bool:
    """Whether a reply's think block matches the mode that was asked for."""
    if parsed_mode in ("unclosed", "none"):
        return False
    return mode == Mode.AUTO or (parsed_mode == "fast") == (mode == Mode.FAST)


def score_generations(
    records: Sequence[dict[str, Any]], generations: Sequence[Sequence[Generation]], mode: Mode, check: Checker
) -> dict[str, float]:
    """Accuracy, mean tokens, compliance and fast-choice rate of sampled replies (one list per record)."""
    n = correct = tokens = compliant = fast = 0
    for record, gens in zip(records, generations):
        for g in gens:
            parsed = parse_response(g.text)
            n += 1
            correct += check(parsed.answer, record)
            tokens += g.num_tokens
            compliant += complies(mode, parsed.mode)
            fast += parsed.mode == "fast"
    n = max(n, 1)
    return {"accuracy": correct / n, "mean_tokens": tokens / n, "compliance": compliant / n, "fast_rate": fast / n}


def evaluate_modes(
    model: Any,
    tokenizer: Any,
    records: Sequence[dict[str, Any]],
    modes: Sequence[Mode | str] = (Mode.SLOW, Mode.FAST),
    check: Checker = exact_match,
    max_new_tokens: int = 256,
    batch_size: int = 64,
) -> dict[str, dict[str, float]]:
    """Greedy accuracy per mode on ``records`` (prompts get the mode's tag)."""
    results = {}
    for mode in map(Mode.parse, modes):
        gens = generate(
            model, tokenizer, [r["prompt"] for r in records], mode=mode, max_new_tokens=max_new_tokens,
            batch_size=batch_size,
        )
        results[mode.value] = score_generations(records, gens, mode, check)
        logger.info("%s: %s", mode.value, results[mode.value])
    return results
