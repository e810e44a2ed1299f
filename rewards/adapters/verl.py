"""MARS as a verl custom reward function (verl 0.9; see ``docs/verl.md`` for the keys and a command line).

verl 0.9's ``main_ppo`` reads the function from ``reward.custom_reward_function`` (``path``, ``name`` and
``reward_kwargs``); the top-level ``custom_reward_function`` block is a legacy slot it no longer reads, so a path set
there silently leaves verl's default scorer in charge. With Hydra overrides::

    reward.custom_reward_function.path=<fastslow>/rewards/adapters/verl.py
    reward.custom_reward_function.name=compute_score
    +reward.custom_reward_function.reward_kwargs.config=<a MARS config YAML>
    +reward.custom_reward_function.reward_kwargs.tokenizer=<the policy's tokenizer: think format, token counts>

verl's reward managers (``naive``, ``dapo``, ``rate_limited``, ``gdpo``, ``remote``) call, per sample and from
worker threads, ``compute_score(data_source=, solution_str=, ground_truth=, extra_info=, **reward_kwargs)``:
``data_source`` may be a ``numpy.str_``, ``solution_str`` is the decoded reply (special tokens skipped),
``ground_truth`` is ``reward_model.ground_truth`` (the reference answer; for code, the tests: fastslow's case list
or verl/PRIME's ``{"inputs": [...], "outputs": [...]}``, as JSON text or parsed) and ``extra_info`` the row's
``extra_info`` plus keys verl adds (``num_turns``, ``rollout_reward_scores``), which are ignored. The task is
``extra_info["task"]`` when present, else read from ``data_source`` (:func:`rewards.adapters.task_of`);
``extra_info["tests"]`` and ``extra_info["prompt"]`` (or ``question``) are used when present.

The result is a dict, which every verl 0.9 reward manager unpacks: ``score`` (the MARS total, the reward; 0.0 when
no source applies), ``acc`` (correctness: the raw value of the task's accuracy source, 0/1 for math, the share of
tests passed for code; what ``algorithm.filter_groups.metric=acc`` filters DAPO groups on), ``applicable``, and one
key per MARS source (its weighted-in value; 0.0 where it does not apply), all floats, the same keys on every
sample. ``return_dict=False`` gives the bare total, for verl's legacy ``prime`` manager, which takes numbers only
(verl would then log that total as ``acc``).
"""

from __future__ import annotations

import os
from typing import Any

from rewards.adapters import code_tests, get_router, plain, task_of


def _columns(data_sources, ground_truths, extra_infos, router) -> dict[str, list[Any]]:
    tasks, answers, tests, prompts = [], [], [], []
    for source, truth, extra in zip(data_sources, ground_truths, extra_infos):
        extra = plain(dict(extra or {}))
        truth = plain(truth)
        task = extra.get("task") or task_of(source, router)
        tasks.append(task)
        is_code = task == "code"
        case_list = extra.get("tests") if extra.get("tests") is not None else (truth if is_code else None)
        tests.append(None if case_list is None else code_tests(case_list))
        answers.append(extra.get("answer") if is_code else truth)
        prompts.append(extra.get("prompt") or extra.get("question"))
    return {router.config.task_column: tasks, "answer": answers, "tests": tests, "prompts": prompts}


def compute_score_batch(
    data_sources: list[str],
    solution_strs: list[str],
    ground_truths: list[Any],
    extra_infos: list[dict | None] | None = None,
    config: str | os.PathLike | None = None,
    return_dict: bool = True,
    tokenizer: Any = None,
    **_: Any,
) -> list[float] | list[dict[str, float]]:
    """Scores for a batch (the signature of verl's legacy ``batch`` reward manager); one dict or float each."""
    router = get_router(config, tokenizer)
    extra_infos = extra_infos if extra_infos is not None else [None] * len(solution_strs)
    columns = _columns(list(data_sources), list(ground_truths), list(extra_infos), router)
    rows = router.score_rows([str(s) for s in solution_strs], **columns)
    return rows if return_dict else [row["score"] for row in rows]


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: dict | None = None,
    config: str | os.PathLike | None = None,
    return_dict: bool = True,
    **kwargs: Any,
) -> float | dict[str, float]:
    """The MARS score of one response (verl's per-sample ``compute_score`` signature; see the module docstring)."""
    return compute_score_batch(
        [data_source], [solution_str], [ground_truth], [extra_info], config=config, return_dict=return_dict, **kwargs
    )[0]
