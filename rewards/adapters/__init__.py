"""Adapters that let other RL engines call the MARS router: verl (:mod:`rewards.adapters.verl`) and OpenRLHF
(:mod:`rewards.adapters.openrlhf`).

Both read the router's configuration from a YAML file (a :class:`rewards.router.MARSConfig`) named by an argument
or by the ``FASTSLOW_MARS_CONFIG`` environment variable, and keep one router per configuration in the process,
so its running normalisation statistics persist from call to call. Those statistics are per process (no
cross-rank reduction): engines call reward functions outside trl's lock-step, where a collective could hang.

The think format the rewards read replies with comes from the config's ``think_start``/``think_end`` keys; a
config without them takes the policy tokenizer's (``tokenizer=`` in the engine's reward kwargs, or the
``FASTSLOW_TOKENIZER`` environment variable: a tokenizer object, or a name or path loaded with
:func:`train.core.loading.load_tokenizer`). With neither, building the router fails: the format is never guessed.

The engines load the adapter files by path, so ``fastslow`` must be installed in their environment
(``pip install -e .``): the adapters import ``rewards`` like any other package.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

from rewards.router import MARSRouter
from train.core.loading import load_tokenizer
from train.core.modes import ThinkFormat

logger = logging.getLogger("rewards.adapters")

CONFIG_ENV = "FASTSLOW_MARS_CONFIG"
TOKENIZER_ENV = "FASTSLOW_TOKENIZER"

_ROUTERS: dict[str, MARSRouter] = {}
_LOCK = threading.Lock()

# Substrings of a data source name that say which task it is (the first match wins; checked in order).
DATA_SOURCE_TASKS = (
    ("code", ("code", "apps", "taco", "humaneval", "mbpp", "leetcode", "codeforces", "primeintellect")),
    ("math", ("math", "gsm8k", "aime", "amc", "numina", "dapo", "olympiad", "deepscaler")),
)


def get_router(config: str | os.PathLike | None = None, tokenizer: Any = None) -> MARSRouter:
    """The process-wide router for ``config`` (a YAML path; default: ``$FASTSLOW_MARS_CONFIG``, else defaults).

    ``tokenizer`` (default: ``$FASTSLOW_TOKENIZER``) gives the think format when the config sets none; it is read
    only when the router is built. Raises ``ValueError`` when neither gives a format.
    """
    path = config or os.environ.get(CONFIG_ENV)
    key = str(Path(path).resolve()) if path else "<defaults>"
    with _LOCK:
        if key not in _ROUTERS:
            router = MARSRouter(path) if path else MARSRouter()
            if router.think is None:
                router.set_think_format(think_format(tokenizer or os.environ.get(TOKENIZER_ENV), key))
            # Engines call rewards from driver or worker processes in no fixed lock-step: a collective here could
            # deadlock, so statistics stay per process.
            router.config.sync_stats = False
            _ROUTERS[key] = router
            logger.info("MARS router for %s: tasks %s", key, sorted(_ROUTERS[key].config.tasks))
        return _ROUTERS[key]


def think_format(tokenizer: Any, where: str = "the MARS config") -> ThinkFormat:
    """The think format of ``tokenizer`` (an object, or a name or path to load); ``ValueError`` when there is none."""
    if tokenizer is None:
        raise ValueError(
            f"{where} sets no think format and no tokenizer was given: add think_start/think_end to the MARS config "
            "(<think> and </think> for Qwen3, [unused16] and [unused17] for openPangu), or name the policy's "
            f"tokenizer (tokenizer=... in the engine's reward kwargs, or ${TOKENIZER_ENV})"
        )
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = load_tokenizer(tokenizer)
    return ThinkFormat.from_tokenizer(tokenizer)


def task_of(data_source: str | None, router: MARSRouter, fallback: str = "general") -> str:
    """The task a data source name belongs to: a configured task of the same name, a known keyword, or
    ``fallback`` (the config's ``default_task`` when it has one)."""
    name = (data_source or "").lower()
    if name in router.config.tasks:
        return name
    for task, words in DATA_SOURCE_TASKS:
        if task in router.config.tasks and any(w in name for w in words):
            return task
    return router.config.default_task or fallback


def reset() -> None:
    """Forget every cached router (tests, or a config file changed on disk)."""
    with _LOCK:
        _ROUTERS.clear()
