"""The MARS router's config for a GRPO run: the ``mars`` key, a command-line override merged into it, checks.

The ``mars`` key takes a mapping in YAML, or a YAML file path or a JSON object on the command line; a JSON object
updates the config file's mapping key by key (:func:`merge_mars_override`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

import rewards
from rewards.router import MARSConfig, MARSRouter
from train.core.cli import check_config_file, parse_args
from train.core.configs import GRPOConfig
from train.rl.config import ARG_CLASSES, GRPOScriptArguments


def mars_config(value: dict | str | None, training_args: GRPOConfig) -> MARSConfig:
    """The router config from the ``mars`` key; ``overlong.max_length`` defaults to ``max_completion_length``."""
    if value is None:
        config = MARSConfig()
    elif isinstance(value, dict):
        config = MARSConfig.from_dict(value, "config key 'mars'")
    elif value.lstrip().startswith("{"):
        try:
            config = MARSConfig.from_dict(json.loads(value), "--mars")
        except json.JSONDecodeError as exc:
            raise ValueError(f"--mars: not a valid JSON object: {exc}") from None
    else:
        config = MARSConfig.from_yaml(value)
    params = config.reward_params.setdefault("overlong", {})
    if "max_length" not in params and training_args.max_completion_length:
        # A completion cut at max_completion_length is the overlong one; soft punishment starts a quarter before.
        params["max_length"] = training_args.max_completion_length
        params.setdefault("cache", max(1, training_args.max_completion_length // 4))
    return config


def merge_mars_override(value: dict | str | None, argv: list[str]) -> dict | str | None:
    """A ``--mars`` JSON object on the command line updates the config file's ``mars`` mapping key by key.

    trl's parser would replace the whole mapping; merging lets ``--mars '{"judge": {"base_url": ...}}'`` change one
    setting and keep the rest of the file's router config.
    """
    if not (isinstance(value, str) and value.lstrip().startswith("{") and "--config" in argv):
        return value
    i = argv.index("--config")
    base = (yaml.safe_load(Path(argv[i + 1]).read_text(encoding="utf-8")) or {}).get("mars")
    if not isinstance(base, dict):
        return value
    try:
        override = json.loads(value)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--mars: not a valid JSON object: {exc}") from None
    return _deep_merge(base, override)


def _deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _deep_merge(out[key], value) if both else value
    return out


def validate_config(path: str | Path) -> MARSConfig:
    """Check a GRPO recipe YAML without training: known keys, parseable values, a valid ``mars`` mapping whose every
    reward name is registered. Returns the router config."""
    check_config_file(path, ARG_CLASSES)
    script_args, training_args, _ = parse_args(ARG_CLASSES, ["--config", str(path)])
    config = mars_config(script_args.mars, training_args)
    known = rewards.REWARDS  # importing every reward module: only a check needs them all
    for task in config.tasks:
        for source in config.sources(task):
            missing = [r for r in source.rewards if r not in known]
            if missing:
                raise ValueError(f"{path}: mars source {task}/{source.name} names unknown reward(s) {missing}")
    return config


def build_rewards(router: MARSRouter, args: GRPOScriptArguments, training_args: GRPOConfig) -> list[Any]:
    """The reward functions for trl, setting ``reward_weights`` for the separate layout."""
    if args.reward_layout == "combined":
        return [router]
    if args.reward_layout != "separate":
        raise ValueError(f"reward_layout={args.reward_layout!r}; expected 'combined' or 'separate'")
    funcs, weights = router.as_reward_functions()
    if training_args.reward_weights is not None and len(training_args.reward_weights) != len(funcs):
        names = [f.__name__ for f in funcs]
        raise ValueError(f"reward_weights has {len(training_args.reward_weights)} values for {len(funcs)}: {names}")
    if training_args.reward_weights is None:
        training_args.reward_weights = weights  # trl reads the weights from its config
    return funcs
