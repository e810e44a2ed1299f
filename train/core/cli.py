"""Command-line parsing shared by the recipes: trl's ``TrlParser`` with errors that name the config key."""

from __future__ import annotations

import difflib
import enum
import logging
import subprocess
import sys
import types
import typing
from collections.abc import Sequence
from dataclasses import MISSING, Field, fields
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from trl import TrlParser

logger = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A config file or argument that does not match the recipe's dataclasses."""


def known_keys(dataclass_types: Sequence[type]) -> set[str]:
    return {f.name for dc in dataclass_types for f in fields(dc)}


# What argparse's bool conversion (transformers' string_to_bool) accepts as text.
_BOOL_TEXT = {"true", "false", "yes", "no", "t", "f", "y", "n", "1", "0"}


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(dict.fromkeys(_describe(a) for a in args))
    if hint is type(None):
        return "null"
    if origin is Literal:
        return f"one of {list(args)}"
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return f"one of {[e.value for e in hint]}"
    if origin in (list, tuple) or hint in (list, tuple):
        return f"a list, each {_describe(args[0])}" if args and args[0] is not Ellipsis else "a list"
    if origin is dict or hint is dict:
        return "a mapping"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _parses(convert: type, text: str) -> bool:
    try:
        convert(text)
    except ValueError:
        return False
    return True


def type_problem(value: Any, hint: Any) -> str | None:
    """Why a YAML ``value`` does not fit a dataclass field typed ``hint`` (None when it fits).

    Text is accepted where argparse would convert it (``1e-3`` for a float, ``"true"`` for a bool), as TrlParser
    hands YAML values to argparse as defaults. Types it does not know (callables, classes) accept anything.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is object:
        return None
    if origin in (Union, types.UnionType):
        problems = [type_problem(value, a) for a in args]
        if any(p is None for p in problems):
            return None
        # A list for a list-or-null key: say which item is wrong rather than that it is not null.
        lists = [p for a, p in zip(args, problems) if typing.get_origin(a) in (list, tuple)]
        listy = lists if isinstance(value, list) else []
        return listy[0] if listy else f"expected {_describe(hint)}, got {value!r:.80}"
    ok: bool
    if hint is type(None):
        ok = value is None
    elif origin is Literal:
        ok = value in args
    elif isinstance(hint, type) and issubclass(hint, enum.Enum):
        ok = isinstance(value, hint) or value in {e.value for e in hint}
    elif hint is bool:
        ok = isinstance(value, bool) or (isinstance(value, str) and value.strip().lower() in _BOOL_TEXT)
    elif hint is int:
        integer = isinstance(value, int) and not isinstance(value, bool)
        ok = integer or (isinstance(value, str) and _parses(int, value))
    elif hint is float:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = number or (isinstance(value, str) and _parses(float, value))
    elif hint is str:
        ok = isinstance(value, str)
    elif origin in (list, tuple) or hint in (list, tuple):
        if not isinstance(value, list):
            example = f" (write [{value}])" if isinstance(value, (str, int, float)) else ""
            return f"expected {_describe(hint)}, got a {type(value).__name__}: {value!r:.80}{example}"
        item = args[0] if args and args[0] is not Ellipsis else Any
        for i, v in enumerate(value):
            if problem := type_problem(v, item):
                return f"item {i}: {problem}"
        return None
    elif origin is dict or hint is dict:
        ok = isinstance(value, dict)
    else:
        return None
    return None if ok else f"expected {_describe(hint)}, got {value!r:.80}"


def _field_hints(dc: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(dc)
    except Exception:  # an annotation that cannot be resolved: check only the fields with real types
        return {f.name: f.type for f in fields(dc) if not isinstance(f.type, str)}


def _is_third_party(dc: type, name: str) -> bool:
    """Whether field ``name`` of ``dc`` is declared by a library's class (trl, transformers), not fastslow's."""
    owner = next((c for c in dc.__mro__ if name in vars(c).get("__annotations__", {})), dc)
    return owner.__module__.split(".")[0] in ("trl", "transformers", "peft", "accelerate")


def _without_none(hint: Any) -> Any:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if typing.get_origin(hint) in (Union, types.UnionType) and len(args) == 1 else hint


def check_value_types(config: dict[str, Any], dataclass_types: Sequence[type], source: str) -> None:
    """Refuse a config value whose type does not fit its dataclass field, naming ``source`` and the key.

    Without this, ``max_steps: 2.5`` or a scalar ``train_files`` (then read one character at a time) fails deep in
    training, or not at all. The fields a dataclass names in its ``yaml_fields`` attribute take any YAML value (a
    recipe that parses them itself); ``null`` is accepted where the field's default is None.
    """
    by_name: dict[str, list[tuple[Field, Any, bool, Any]]] = {}
    for dc in dataclass_types:
        hints = _field_hints(dc)
        for f in fields(dc):
            if f.name in hints:
                checks = (f, hints[f.name], _is_third_party(dc, f.name), getattr(dc, "yaml_fields", ()))
                by_name.setdefault(f.name, []).append(checks)
    for key, value in config.items():
        for f, hint, third_party, yaml_fields in by_name.get(key, ()):
            if key in yaml_fields or (value is None and f.default is None and f.default_factory is MISSING):
                continue
            # A library's list key may take one string too (peft's `lora_target_modules: all-linear`); fastslow's
            # list keys never do (a scalar `train_files` would be read one character at a time).
            if third_party and isinstance(value, str) and typing.get_origin(_without_none(hint)) in (list, tuple):
                continue
            if problem := type_problem(value, hint):
                raise ConfigError(f"{source}: key {key!r}: {problem}")


def read_yaml_mapping(path: str | Path, error: type[Exception] = ConfigError, what: str = "config") -> dict[str, Any]:
    """The YAML mapping in ``path``; a missing file, invalid YAML or a non-mapping raises ``error`` naming the file
    (``what`` names the kind of file in the message)."""
    path = Path(path)
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{path}: no such {what} file") from None
    except yaml.YAMLError as exc:
        raise error(f"{path}: invalid YAML: {exc}") from None
    if not isinstance(config, dict):
        raise error(f"{path}: a {what} must be a YAML mapping of keys to values")
    return config


def check_config_file(path: str | Path, dataclass_types: Sequence[type]) -> dict[str, Any]:
    """Load a YAML config and refuse unknown keys (naming the file, the key and the closest known key) and values
    whose type does not fit the key's field (:func:`check_value_types`)."""
    path = Path(path)
    config = read_yaml_mapping(path)
    known = known_keys(dataclass_types) | {"env"}
    for key in config:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{path}: unknown config key {key!r}{hint}")
    check_value_types(config, dataclass_types, str(path))
    return config


def parse_args(dataclass_types: Sequence[type], args: Sequence[str] | None = None) -> tuple[Any, ...]:
    """Parse ``--config FILE`` plus command-line overrides into instances of ``dataclass_types``.

    The file is checked first (:func:`check_config_file`), so a bad key or value fails before any dataclass (and
    any output folder) is made; command-line values are converted and checked by argparse.
    """
    argv = list(sys.argv[1:] if args is None else args)
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise ConfigError("--config needs a file path")
        check_config_file(argv[i + 1], dataclass_types)
    parser = TrlParser(list(dataclass_types))
    return tuple(parser.parse_args_and_config(args=argv))


def setup_logging(level: str | int | Any = "INFO") -> None:
    """Log to stderr. Given a trl/transformers config: INFO on the main process, WARNING on the others, unless
    the config sets ``log_level``/``log_level_replica`` itself."""
    if hasattr(level, "get_process_log_level"):
        args = level
        explicit = args.log_level != "passive" if args.should_log else args.log_level_replica != "warning"
        level = args.get_process_log_level() if explicit else (logging.INFO if args.should_log else logging.WARNING)
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", force=True
    )


def run_script(path: str | Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run a recipe or script file in a fresh Python process (the way benchmarks and the demo chain stages).

    Recipes and scripts are programs, never imported: running one in its own process keeps the library free of
    them and gives each stage a clean interpreter, as ``accelerate launch`` would.
    """
    return subprocess.run([sys.executable, str(path), *map(str, args)], check=check)
