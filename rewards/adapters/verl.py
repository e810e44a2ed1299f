"""MARS as a verl custom reward function.

verl loads a file and calls a function from it (``custom_reward_function.path`` / ``.name`` in its config), with
``reward_kwargs`` passed as extra keyword arguments::

    custom_reward_function:
      path: <fastslow>/rewards/adapters/verl.py
      name: compute_score            # per sample (verl's naive/prime reward managers)
      # name: compute_score_batch    # whole batch (verl's batch reward manager)
      reward_kwargs:
        config: recipes/configs/mars.yaml   # optional; else $FASTSLOW_MARS_CONFIG, else the default MARSConfig
        tokenizer: Qwen/Qwen3-0.6B           # the policy's, for its think format, unless the config sets think_start/
                                             # think_end (the default MARSConfig does not: one of the two is needed)

Per sample verl gives ``data_source``, the decoded response ``solution_str``, ``ground_truth`` (the reference
answer; for code, the test cases as a list or JSON string) and ``extra_info``. The task is ``extra_info["task"]``
when present, else read from ``data_source`` (:func:`rewards.adapters.task_of`); ``extra_info["tests"]`` and
``extra_info["prompt"]`` (or ``question``) are used when present. verl needs a float: a sample no source applies
to scores 0.0. With ``return_dict=True`` the result is ``{"score": float, "applicable": 0.0 | 1.0, <source>:
value...}`` (verl logs the extra keys; every sample carries the same keys, 0.0 where a source does not apply).
"""

from __future__ import annotations

import os
from typing import Any

from rewards.adapters import get_router, task_of


def _columns(data_sources, ground_truths, extra_infos, router) -> dict[str, list[Any]]:
    tasks, answers, tests, prompts = [], [], [], []
    for source, truth, extra in zip(data_sources, ground_truths, extra_infos):
        extra = dict(extra or {})
        task = extra.get("task") or task_of(source, router)
        tasks.append(task)
        is_code = task == "code"
        tests.append(extra.get("tests") if extra.get("tests") is not None else (truth if is_code else None))
        answers.append(extra.get("answer") if is_code else truth)
        prompts.append(extra.get("prompt") or extra.get("question"))
    return {router.config.task_column: tasks, "answer": answers, "tests": tests, "prompts": prompts}


def compute_score_batch(
    data_sources: list[str],
    solution_strs: list[str],
    ground_truths: list[Any],
    extra_infos: list[dict | None] | None = None,
    config: str | os.PathLike | None = None,
    return_dict: bool = False,
    tokenizer: Any = None,
    **_: Any,
) -> list[float] | list[dict[str, float]]:
    """Scores for a batch (verl's ``BatchRewardManager`` signature)."""
    router = get_router(config, tokenizer)
    extra_infos = extra_infos if extra_infos is not None else [None] * len(solution_strs)
    columns = _columns(data_sources, ground_truths, extra_infos, router)
    totals, aligned, metrics = router.score_batch(list(solution_strs), **columns)
    router.emit(metrics, None)
    scores = [0.0 if t is None else float(t) for t in totals]
    if not return_dict:
        return scores
    names = sorted({name for (_, name) in aligned})
    out = []
    for i, score in enumerate(scores):
        row = {"score": score, "applicable": float(totals[i] is not None)}
        for name in names:
            values = [v[i] for (task, n), v in aligned.items() if n == name and v[i] is not None]
            row[name] = values[0] if values else 0.0
        out.append(row)
    return out


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: dict | None = None,
    config: str | os.PathLike | None = None,
    return_dict: bool = False,
    **kwargs: Any,
) -> float | dict[str, float]:
    """The MARS score of one response (verl's per-sample ``compute_score`` signature)."""
    return compute_score_batch(
        [data_source], [solution_str], [ground_truth], [extra_info], config=config, return_dict=return_dict, **kwargs
    )[0]
