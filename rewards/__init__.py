"""MARS, the multi-source adaptive reward system: rewards for GRPO and for verifying data.

``get_reward(name, **params)`` builds a reward by name; ``REWARDS`` lists the names.
"""

from __future__ import annotations

import importlib
from typing import Any

from rewards.registry import registered

# Modules that register rewards when imported.
_MODULES = ("math", "format", "repetition", "length", "code", "judge", "router", "mode_choice")


def _load_all() -> dict[str, Any]:
    for module in _MODULES:
        importlib.import_module(f"rewards.{module}")
    return registered()


def get_reward(name: str, **params: Any) -> Any:
    """The reward registered as ``name``, built with ``params``."""
    table = _load_all()
    if name not in table:
        raise KeyError(f"unknown reward {name!r}; known rewards: {sorted(table)}")
    return table[name](**params)


def __getattr__(attr: str) -> Any:
    if attr == "REWARDS":
        return sorted(_load_all())
    raise AttributeError(attr)
