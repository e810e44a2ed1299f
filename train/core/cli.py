"""Command-line parsing shared by the recipes: trl's ``TrlParser`` with errors that name the config key."""

from __future__ import annotations

import difflib
import logging
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml
from trl import TrlParser

logger = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A config file or argument that does not match the recipe's dataclasses."""


def known_keys(dataclass_types: Sequence[type]) -> set[str]:
    return {f.name for dc in dataclass_types for f in fields(dc)}


def check_config_file(path: str | Path, dataclass_types: Sequence[type]) -> dict[str, Any]:
    """Load a YAML config and refuse unknown keys, naming the file, the key and the closest known key."""
    path = Path(path)
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: a config must be a YAML mapping of keys to values")
    known = known_keys(dataclass_types) | {"env"}
    for key in config:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{path}: unknown config key {key!r}{hint}")
    return config


def parse_args(dataclass_types: Sequence[type], args: Sequence[str] | None = None) -> tuple[Any, ...]:
    """Parse ``--config FILE`` plus command-line overrides into instances of ``dataclass_types``."""
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
