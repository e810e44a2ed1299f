"""Format and mode rewards: is the reply shaped right, and does it think the way the prompt asked?

``format``: 1.0 for exactly one leading think block, closed, followed by a non-empty answer; else 0.0.
``mode``: 1.0 when the reply obeys the mode the prompt asks for (``train.core.modes.detect_mode`` on the ``prompts``
column): ``/no_think`` wants an empty think block, ``/think`` (or no tag) a non-empty one, ``/auto_think`` either;
in every mode a well-formed block and a non-empty answer must follow. 0.0 otherwise, None without a prompt.

A reply with no think block at all is 0.0 for both, unless the prompt itself ends with the block (a template that
prefills it, e.g. Qwen3's ``enable_thinking=False`` prefills an empty block): then the prefilled block counts.
Prefilling is only visible in string prompts; trl passes conversational prompts as messages, rendered later, so
when a conversational run prefills the empty block (``chat_template_kwargs={"enable_thinking": False}``) pass
``allow_no_block=True``: a reply with no block then counts as a fast reply.
"""

from __future__ import annotations

from typing import Any

from rewards.base import Reward
from rewards.registry import register
from train.core.modes import Mode, ParsedResponse, ThinkFormat, completion_text, detect_mode


def _prefilled_block(prompt: Any, think: ThinkFormat) -> str | None:
    """The closed think block a string prompt ends with (prefilled by the template), if any."""
    if not isinstance(prompt, str):
        return None
    tail = prompt.rstrip()
    if not tail.endswith(think.end):
        return None
    start = tail.rfind(think.start)
    return None if start == -1 else prompt[start:]


def parse_reply(completion: Any, prompt: Any, think: ThinkFormat, allow_no_block: bool = False) -> ParsedResponse:
    """The reply parsed, with a think block prefilled by a string prompt taken as the start of the reply.

    ``allow_no_block``: a reply with no think block at all is read as a fast reply (its block was prefilled
    where the reward cannot see it).
    """
    text = completion_text(completion)
    block = _prefilled_block(prompt, think)
    parsed = think.parse(text if block is None else block + text)
    if allow_no_block and parsed.mode == "none":
        return ParsedResponse("", parsed.answer, "fast", True)
    return parsed


def _has_answer(parsed: ParsedResponse) -> bool:
    return parsed.well_formed and parsed.mode in ("fast", "slow") and bool(parsed.answer)


@register("format")
class FormatReward(Reward):
    """1.0 for a single well-formed think block followed by a non-empty answer, else 0.0.

    Args:
        allow_no_block: read a reply without any think block as a fast reply (the template prefilled the block
            in a conversational prompt the reward cannot see).
        think: the run's think format (``PANGU_THINK`` for openPangu); None until the router sets it.
    """

    name = "format"

    def __init__(self, allow_no_block: bool = False, *, think: ThinkFormat | None = None) -> None:
        self.think = think
        self.allow_no_block = allow_no_block

    def score(self, completion: Any, prompts: Any = None, prompt: Any = None, **_: Any) -> float:
        prompt = prompts if prompts is not None else prompt
        parsed = parse_reply(completion, prompt, self.think_format(), self.allow_no_block)
        return 1.0 if _has_answer(parsed) else 0.0


@register("mode")
class ModeReward(Reward):
    """1.0 when the reply follows the mode its prompt asks for, 0.0 when not, None when there is no prompt.

    Args:
        default_mode: the mode of a prompt with no tag (slow, as in openPangu-Embedded and Qwen3).
        allow_no_block: read a reply without any think block as a fast reply (see ``format``).
        think: the run's think format; None until the router sets it.
    """

    name = "mode"

    def __init__(
        self, default_mode: str = Mode.SLOW.value, allow_no_block: bool = False, *, think: ThinkFormat | None = None
    ) -> None:
        self.think = think
        self.default_mode = Mode.parse(default_mode).value
        self.allow_no_block = allow_no_block

    def score(self, completion: Any, prompts: Any = None, prompt: Any = None, **_: Any) -> float | None:
        prompt = prompts if prompts is not None else prompt
        if prompt is None:
            return None
        wanted = detect_mode(prompt, default=Mode.parse(self.default_mode))
        parsed = parse_reply(completion, prompt, self.think_format(), self.allow_no_block)
        if not _has_answer(parsed):
            return 0.0
        if wanted is Mode.AUTO:
            return 1.0
        return 1.0 if parsed.mode == ("fast" if wanted is Mode.FAST else "slow") else 0.0
