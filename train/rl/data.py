"""GRPO prompts: records as chat prompts with their mode tag and the columns the MARS rewards read."""

from __future__ import annotations

from typing import Any

from datasets import Dataset

from train.core.data import to_messages
from train.core.modes import apply_mode, detect_mode
from train.rl.config import GRPOScriptArguments
from train.sft import load_training_data

# Columns the rewards read; everything else in a record (e.g. a target `response`) is dropped before training.
REWARD_COLUMNS = ("task", "answer", "tests", "id")


def to_grpo_example(record: dict[str, Any], mode: str | None, system_prompt: str | None) -> dict[str, Any]:
    """A record as a GRPO example: chat-message ``prompt`` (with the mode tag asked for) and the reward columns."""
    messages = to_messages(record["prompt"], system_prompt)
    if mode is not None and detect_mode(messages, default=None) is None:  # an explicit tag in the data wins
        messages = apply_mode(messages, mode)
    example = {"prompt": messages}
    example.update({k: record.get(k) for k in REWARD_COLUMNS})
    return example


def grpo_dataset(records: Dataset, args: GRPOScriptArguments) -> Dataset:
    """Every record as a GRPO example (:func:`to_grpo_example` with the recipe's mode and system prompt)."""
    return Dataset.from_list([to_grpo_example(r, args.mode, args.system_prompt) for r in records])


def load_grpo_data(args: GRPOScriptArguments, seed: int = 0) -> tuple[Dataset, Dataset | None]:
    """Training and held-out prompts, read the way SFT reads its data (:func:`train.sft.load_training_data`)."""
    return load_training_data(args, lambda records, source: grpo_dataset(records, args), seed)


def mode_counts(dataset: Dataset) -> dict[str, int]:
    """How many prompts ask for each mode (slow when a prompt has no tag)."""
    counts: dict[str, int] = {}
    for prompt in dataset["prompt"]:
        mode = detect_mode(prompt).value
        counts[mode] = counts.get(mode, 0) + 1
    return counts
