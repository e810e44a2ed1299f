"""MARS as an OpenRLHF custom reward function.

OpenRLHF loads a Python file given as the remote reward URL (``--remote_rm_url`` in older releases,
``--reward.remote_url`` in newer ones) and calls ``reward_func(queries, prompts, labels, **kwargs)`` once per
batch: ``queries`` are the decoded prompt + response texts, ``prompts`` the decoded prompts, ``labels`` the
``--label_key`` column. Its return value is a dict (current OpenRLHF)::

    {"rewards": Tensor[B],   # used for the advantages
     "scores": Tensor[B],    # used by dynamic filtering
     "extra_logs": {name: Tensor[B]}}   # logged (e.g. to wandb)

Releases before the dict convention take a bare ``Tensor[B]``: set ``FASTSLOW_OPENRLHF_RETURN=tensor``.

Labels: a JSON object ``{"task": ..., "answer": ..., "tests": ...}`` carries everything; a plain string is the
reference answer of a ``$FASTSLOW_TASK`` task (default ``math``). The router config comes from
``$FASTSLOW_MARS_CONFIG`` (a MARSConfig YAML) or the defaults; the think format from its ``think_start``/``think_end``
keys, else from the policy tokenizer named by ``$FASTSLOW_TOKENIZER``. A sample no source applies to scores 0.0. The
response is the query with its prompt removed; when the decoded prompt is not a prefix of the query (special
tokens dropped in decoding) the whole query is scored, which is safe because answers are read only after the
closed think block.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import torch

from rewards.adapters import get_router

logger = logging.getLogger("rewards.adapters.openrlhf")

TASK_ENV = "FASTSLOW_TASK"
RETURN_ENV = "FASTSLOW_OPENRLHF_RETURN"


def parse_label(label: Any, default_task: str) -> dict[str, Any]:
    """``{"task", "answer", "tests"}`` from a label: a JSON object (or dict), else a plain reference answer."""
    if isinstance(label, str) and label.lstrip().startswith("{"):
        try:
            label = json.loads(label)
        except ValueError:
            pass  # a reference that merely starts with a brace
    if isinstance(label, dict):
        return {"task": label.get("task") or default_task, "answer": label.get("answer"), "tests": label.get("tests")}
    return {"task": default_task, "answer": None if label is None else str(label), "tests": None}


def response_of(query: str, prompt: str) -> str:
    if prompt and query.startswith(prompt):
        return query[len(prompt) :]
    at = query.find(prompt) if prompt else -1
    if at >= 0:
        return query[at + len(prompt) :]
    return query


def reward_func(queries: list[str], prompts: list[str], labels: list[Any], **kwargs: Any) -> Any:
    """MARS rewards for an OpenRLHF batch (see the module docstring for the return convention)."""
    router = get_router(kwargs.get("config"), kwargs.get("tokenizer"))
    default_task = os.environ.get(TASK_ENV, "math")
    parsed = [parse_label(label, default_task) for label in labels]
    completions = [response_of(q, p) for q, p in zip(queries, prompts)]
    columns = {
        router.config.task_column: [p["task"] for p in parsed],
        "answer": [p["answer"] for p in parsed],
        "tests": [p["tests"] for p in parsed],
        "prompts": list(prompts),
    }
    totals, aligned, metrics = router.score_batch(completions, **columns)
    router.emit(metrics, None)
    rewards = torch.tensor([0.0 if t is None else t for t in totals], dtype=torch.float32)
    if os.environ.get(RETURN_ENV, "dict") == "tensor":
        return rewards
    extra_logs = {}
    for name in sorted({name for (_, name) in aligned}):
        values = [0.0] * len(totals)
        for (_, n), column in aligned.items():
            if n == name:
                for i, v in enumerate(column):
                    if v is not None:
                        values[i] = v
        extra_logs[f"mars/{name}"] = torch.tensor(values, dtype=torch.float32)
    return {"rewards": rewards, "scores": rewards.clone(), "extra_logs": extra_logs}
