"""MARS as an OpenRLHF custom reward function (checked against OpenRLHF 0.11.2's ``openrlhf/utils/agent.py``).

OpenRLHF loads a Python file given as the remote reward URL (``--reward.remote_url`` in 0.11, ``--remote_rm_url`` in
older releases) and calls ``reward_func(queries, prompts, labels)`` (0.11: one query per call, from
``asyncio.to_thread``, so calls run concurrently): ``queries`` are the decoded prompt + response texts (special
tokens kept), ``prompts`` the prompts, ``labels`` the ``--data.label_key`` column. Its return value is a dict::

    {"rewards": Tensor[B],   # the MARS total, used for the advantages
     "scores": Tensor[B],    # correctness (the task's accuracy source, raw), used by dynamic filtering, which
                             # keeps groups whose mean lies inside --dynamic_filtering_reward_range (default 0..1)
     "extra_logs": {"mars/<source>": Tensor[B], "mars/acc": Tensor[B]}}   # logged

Releases before the dict convention take a bare ``Tensor[B]``: set ``FASTSLOW_OPENRLHF_RETURN=tensor``.

Labels: a JSON object ``{"task": ..., "answer": ..., "tests": ...}`` carries everything (what
``scripts/export.py --to openrlhf`` writes; ``tests`` may also be verl/PRIME's ``{"inputs", "outputs"}``); a plain
string is the reference answer of a ``$FASTSLOW_TASK`` task (default ``math``). The router config comes from
``$FASTSLOW_MARS_CONFIG`` (a MARSConfig YAML) or the defaults; the think format from its ``think_start``/``think_end``
keys, else from the policy tokenizer named by ``$FASTSLOW_TOKENIZER``, which also counts tokens for the length
sources (without it they are off). A sample no source applies to scores 0.0. The response is the query with its
prompt removed and its trailing end-of-turn tokens stripped (the named tokenizer's special tokens, else common ones
such as ``<|im_end|>``: OpenRLHF decodes queries with special tokens kept); when the decoded prompt is not a prefix
of the query (special tokens dropped in decoding) the whole query is scored, which is safe because answers are read
only after the closed think block.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import torch

from rewards.adapters import code_tests, get_router

logger = logging.getLogger("rewards.adapters.openrlhf")

TASK_ENV = "FASTSLOW_TASK"
RETURN_ENV = "FASTSLOW_OPENRLHF_RETURN"
#: End-of-turn and end-of-text tokens of common chat models, stripped from a response when no tokenizer is named.
END_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<|end|>", "</s>", "<eos>", "<|EOT|>")


def parse_label(label: Any, default_task: str) -> dict[str, Any]:
    """``{"task", "answer", "tests"}`` from a label: a JSON object (or dict), else a plain reference answer."""
    if isinstance(label, str) and label.lstrip().startswith("{"):
        try:
            label = json.loads(label)
        except ValueError:
            pass  # a reference that merely starts with a brace
    if isinstance(label, dict):
        tests = label.get("tests")
        return {
            "task": label.get("task") or default_task,
            "answer": label.get("answer"),
            "tests": None if tests is None else code_tests(tests),
        }
    return {"task": default_task, "answer": None if label is None else str(label), "tests": None}


def response_of(query: str, prompt: str, end_tokens: tuple[str, ...] = END_TOKENS) -> str:
    """The response in a query: after the prompt, without the end-of-turn tokens OpenRLHF leaves in (it decodes
    with ``skip_special_tokens=False``; ``Paris<|im_end|>`` is not the answer ``Paris``)."""
    if prompt and query.startswith(prompt):
        response = query[len(prompt) :]
    else:
        at = query.find(prompt) if prompt else -1
        response = query[at + len(prompt) :] if at >= 0 else query
    return strip_end_tokens(response, end_tokens)


def strip_end_tokens(text: str, end_tokens: tuple[str, ...] = END_TOKENS) -> str:
    """``text`` without trailing ``end_tokens`` (any number, whitespace between them)."""
    text = text.rstrip()
    while True:
        token = next((t for t in end_tokens if t and text.endswith(t)), None)
        if token is None:
            return text
        text = text[: -len(token)].rstrip()


def end_tokens_of(tokenizer: Any, think: Any) -> tuple[str, ...]:
    """The policy tokenizer's special tokens (its EOS and pad among them) but the think delimiters; the usual
    end-of-turn tokens when there is no tokenizer."""
    names = set(getattr(tokenizer, "all_special_tokens", None) or ())
    names |= {getattr(tokenizer, "eos_token", None), getattr(tokenizer, "pad_token", None)}
    names -= {None, ""}
    if think is not None:
        names -= {think.start, think.end}
    return tuple(sorted(names, key=len, reverse=True)) or END_TOKENS


def reward_func(queries: list[str], prompts: list[str], labels: list[Any], **kwargs: Any) -> Any:
    """MARS rewards for an OpenRLHF batch (see the module docstring for the return convention)."""
    router = get_router(kwargs.get("config"), kwargs.get("tokenizer"))
    default_task = os.environ.get(TASK_ENV, "math")
    parsed = [parse_label(label, default_task) for label in labels]
    ends = end_tokens_of(router.tokenizer, router.think) if router.tokenizer is not None else END_TOKENS
    completions = [response_of(q, p, ends) for q, p in zip(queries, prompts)]
    columns = {
        router.config.task_column: [p["task"] for p in parsed],
        "answer": [p["answer"] for p in parsed],
        "tests": [p["tests"] for p in parsed],
        "prompts": list(prompts),
    }
    rows = router.score_rows(completions, **columns)
    rewards = torch.tensor([row["score"] for row in rows], dtype=torch.float32)
    if os.environ.get(RETURN_ENV, "dict") == "tensor":
        return rewards
    scores = torch.tensor([row["acc"] for row in rows], dtype=torch.float32)
    names = [k for k in rows[0] if k not in ("score", "applicable")] if rows else []
    extra_logs = {f"mars/{name}": torch.tensor([row[name] for row in rows], dtype=torch.float32) for name in names}
    return {"rewards": rewards, "scores": scores, "extra_logs": extra_logs}
