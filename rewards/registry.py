"""The reward registry: every reward is registered under a stable name, and built by name with parameters."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_REGISTRY: dict[str, Callable[..., Any]] = {}


def register(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Class or factory decorator: ``@register("math")`` makes ``get_reward("math", **params)`` build it."""

    def wrap(factory: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"reward {name!r} is registered twice")
        _REGISTRY[name] = factory
        return factory

    return wrap


def registered() -> dict[str, Callable[..., Any]]:
    return dict(_REGISTRY)
