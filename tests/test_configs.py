"""Every YAML under recipes/configs/ loads and validates against its recipe's dataclasses."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from train.core.cli import ConfigError, check_config_file, parse_args

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "recipes" / "configs").rglob("*.yaml"))
RECIPES = {p.stem: p for p in (ROOT / "recipes").glob("*.py")}


def recipe_for(config: Path):
    """The recipe a config belongs to: the longest recipe name its file name starts with."""
    names = [n for n in RECIPES if config.stem == n or config.stem.startswith(n + "_")]
    assert names, f"{config}: no recipe in recipes/ matches this config's name"
    name = max(names, key=len)
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", RECIPES[name])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve postponed annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_there_are_configs_for_both_scales():
    assert any(p.parent.name == "tiny" for p in CONFIGS)
    assert any(p.parent.name == "embedded-7b" for p in CONFIGS)


@pytest.mark.parametrize("config", CONFIGS, ids=[str(p.relative_to(ROOT)) for p in CONFIGS])
def test_config_loads_and_validates(config):
    text = config.read_text()
    assert text.startswith("#"), f"{config}: start with a header comment saying how to run it"
    module = recipe_for(config)
    if hasattr(module, "validate_config"):
        module.validate_config(config)
    else:
        assert hasattr(module, "ARG_CLASSES"), f"{module.__file__}: expose ARG_CLASSES or validate_config"
        check_config_file(config, module.ARG_CLASSES)
        parsed = parse_args(module.ARG_CLASSES, ["--config", str(config)])
        assert len(parsed) == len(module.ARG_CLASSES)


def test_unknown_key_suggests_the_right_one(tmp_path):
    from trl import ModelConfig

    from train.core.configs import SFTConfig
    from train.sft import SFTScriptArguments

    bad = tmp_path / "x.yaml"
    bad.write_text("per_device_train_batchsize: 8\n")
    with pytest.raises(ConfigError, match=r"x.yaml: unknown config key 'per_device_train_batchsize'; did you mean"):
        check_config_file(bad, (SFTScriptArguments, SFTConfig, ModelConfig))
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        check_config_file(bad, (SFTScriptArguments,))
