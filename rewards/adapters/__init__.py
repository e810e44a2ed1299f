"""Adapters that let other RL engines call the MARS router: verl (:mod:`rewards.adapters.verl`) and OpenRLHF
(:mod:`rewards.adapters.openrlhf`).

Both read the router's configuration from a YAML file (a :class:`rewards.router.MARSConfig`) named by an argument
or by the ``FASTSLOW_MARS_CONFIG`` environment variable, and keep one router per configuration in the process,
so its running normalisation statistics persist from call to call. Those statistics are per process (no
cross-rank reduction): engines call reward functions outside trl's lock-step, where a collective could hang.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from rewards.router import MARSRouter

logger = logging.getLogger("rewards.adapters")

CONFIG_ENV = "FASTSLOW_MARS_CONFIG"

_ROUTERS: dict[str, MARSRouter] = {}
_LOCK = threading.Lock()

# Substrings of a data source name that say which task it is (the first match wins; checked in order).
DATA_SOURCE_TASKS = (
    ("code", ("code", "apps", "taco", "humaneval", "mbpp", "leetcode", "codeforces", "primeintellect")),
    ("math", ("math", "gsm8k", "aime", "amc", "numina", "dapo", "olympiad", "deepscaler")),
)


def get_router(config: str | os.PathLike | None = None) -> MARSRouter:
    """The process-wide router for ``config`` (a YAML path; default: ``$FASTSLOW_MARS_CONFIG``, else defaults)."""
    path = config or os.environ.get(CONFIG_ENV)
    key = str(Path(path).resolve()) if path else "<defaults>"
    with _LOCK:
        if key not in _ROUTERS:
            router = MARSRouter(path) if path else MARSRouter()
            # Engines call rewards from driver or worker processes in no fixed lock-step: a collective here could
            # deadlock, so statistics stay per process.
            router.config.sync_stats = False
            _ROUTERS[key] = router
            logger.info("MARS router for %s: tasks %s", key, sorted(_ROUTERS[key].config.tasks))
        return _ROUTERS[key]


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
