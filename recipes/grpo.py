"""Stage 1b: GRPO guided by MARS, the multi-source adaptive reward system.

    accelerate launch --config_file recipes/accelerate/cpu.yaml recipes/grpo.py --config recipes/configs/tiny/grpo.yaml

Records (JSONL, JSON, CSV, Parquet; see :mod:`train.core.data`) carry a ``prompt``, a ``task`` (math, code, general),
an ``answer`` and, for code, ``tests``. trl's ``GRPOTrainer`` samples ``num_generations`` completions per prompt
and the MARS router (:mod:`rewards.router`) scores each by its task: math by rule-based verification with the LLM
judge behind it, code by running the tests, general questions by the judge (or a rule match where the reference
is checkable), plus shared format, repetition and length terms. Per-task reward means are logged as
``mars/<task>/...`` next to trl's own metrics.

Every config key can be overridden on the command line (``--learning_rate 1e-6 --num_generations 16``); the
``mars`` key takes a mapping in YAML, or a YAML file path or a JSON object on the command line (a JSON object
updates the config file's mapping key by key: ``--mars '{"judge": {"base_url": "http://host:8000/v1"}}'``).
"""

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from datasets import Dataset
from transformers.trainer_utils import get_last_checkpoint
from trl import GRPOTrainer, ModelConfig, get_peft_config

from rewards.router import MARSConfig, MARSRouter
from train.core.args import DataArguments
from train.core.cli import check_config_file, parse_args, setup_logging
from train.core.configs import GRPOConfig
from train.core.data import DataError, load_records, mix, to_messages
from train.core.modes import apply_mode, detect_mode, think_delimiters
from train.sft import load_for_training, save_trained

logger = logging.getLogger("recipes.grpo")

# Columns the rewards read; everything else in a record (e.g. a target `response`) is dropped before training.
REWARD_COLUMNS = ("task", "answer", "tests", "id")


@dataclass
class GRPOScriptArguments(DataArguments):
    """Data, mode and reward options of the GRPO recipe (training options are trl's ``GRPOConfig``)."""

    mode: str | None = field(
        default=None,
        metadata={
            "help": "Mode tag for prompts without one: slow (/think), fast (/no_think), auto (/auto_think); "
            "None keeps prompts as they are (slow is the template's default)."
        },
    )
    system_prompt: str | None = field(default=None, metadata={"help": "System message added to prompts without one."})
    mars: dict | str | None = field(
        default=None,
        metadata={
            "help": "MARS router config (rewards.router.MARSConfig): a mapping, a YAML file path, or a JSON object. "
            "None: the defaults."
        },
    )
    reward_layout: str = field(
        default="combined",
        metadata={
            "help": "`combined`: the router is one reward function; `separate`: one function per (task, source) "
            "with their weights as trl's reward_weights (trl then logs each as rewards/mars/<task>/<source>)."
        },
    )
    auto_resume: bool = field(
        default=True, metadata={"help": "Resume from the last checkpoint in output_dir when there is one."}
    )


ARG_CLASSES = (GRPOScriptArguments, GRPOConfig, ModelConfig)


def validate_config(path: str | Path) -> MARSConfig:
    """Check a recipe YAML without training: known keys, parseable values, a valid ``mars`` mapping whose every
    reward name is registered. Returns the router config."""
    check_config_file(path, ARG_CLASSES)
    script_args, training_args, _ = parse_args(ARG_CLASSES, ["--config", str(path)])
    config = mars_config(script_args.mars, training_args)
    from rewards import REWARDS

    for task in config.tasks:
        for source in config.sources(task):
            missing = [r for r in source.rewards if r not in REWARDS]
            if missing:
                raise ValueError(f"{path}: mars source {task}/{source.name} names unknown reward(s) {missing}")
    return config


# ------------------------------------------------------------------------------------------------------- data


def to_grpo_example(record: dict[str, Any], mode: str | None, system_prompt: str | None) -> dict[str, Any]:
    """A record as a GRPO example: chat-message ``prompt`` (with the mode tag asked for) and the reward columns."""
    messages = to_messages(record["prompt"], system_prompt)
    if mode is not None and detect_mode(messages, default=None) is None:  # an explicit tag in the data wins
        messages = apply_mode(messages, mode)
    example = {"prompt": messages}
    example.update({k: record.get(k) for k in REWARD_COLUMNS})
    return example


def grpo_dataset(records: Dataset, args: GRPOScriptArguments) -> Dataset:
    return Dataset.from_list([to_grpo_example(r, args.mode, args.system_prompt) for r in records])


def load_grpo_data(args: GRPOScriptArguments, seed: int = 0) -> tuple[Dataset, Dataset | None]:
    if not args.train_files:
        raise DataError("train_files: give at least one record file")
    parts = [grpo_dataset(load_records(f), args) for f in args.train_files]
    if args.train_weights:
        if len(args.train_weights) != len(parts):
            raise DataError(f"train_weights: {len(args.train_weights)} weights for {len(parts)} train_files")
        train = mix(parts, args.train_weights, seed=seed)
    else:
        train = parts[0] if len(parts) == 1 else mix(parts, [len(p) for p in parts], seed=seed)
    if args.max_train_samples:
        train = train.select(range(min(args.max_train_samples, len(train))))
    evals = grpo_dataset(load_records(args.eval_file), args) if args.eval_file else None
    return train, evals


def mode_counts(dataset: Dataset) -> dict[str, int]:
    counts: dict[str, int] = {}
    for prompt in dataset["prompt"]:
        mode = detect_mode(prompt).value
        counts[mode] = counts.get(mode, 0) + 1
    return counts


# ---------------------------------------------------------------------------------------------------- rewards


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
        training_args.reward_weights = weights
    return funcs


def resume_point(training_args: GRPOConfig, auto_resume: bool) -> str | None:
    if training_args.resume_from_checkpoint:
        return training_args.resume_from_checkpoint
    if auto_resume and Path(training_args.output_dir).is_dir():
        return get_last_checkpoint(training_args.output_dir)
    return None


# ------------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> tuple[Path, GRPOTrainer]:
    argv = list(sys.argv[1:] if argv is None else argv)
    script_args, training_args, model_args = parse_args(ARG_CLASSES, argv)
    script_args.mars = merge_mars_override(script_args.mars, argv)
    setup_logging(training_args.get_process_log_level())

    # 1. Model, tokenizer (with the fastslow template) and chat-formatted prompts with their reward columns.
    model, tokenizer = load_for_training(model_args, script_args.think_start, script_args.think_end)
    train_dataset, eval_dataset = load_grpo_data(script_args, seed=training_args.seed)
    logger.info("GRPO on %d prompts; modes %s", len(train_dataset), mode_counts(train_dataset))

    # 2. The MARS router; refuse data whose tasks the config does not route before spending any compute.
    router = MARSRouter(mars_config(script_args.mars, training_args))
    if not (router.config.think_start or router.config.think_end):  # rewards read answers the way the model writes
        router.set_think_delimiters(*think_delimiters(tokenizer))
    router.check_tasks(train_dataset["task"], where=", ".join(script_args.train_files))
    if eval_dataset is not None:
        router.check_tasks(eval_dataset["task"], where=str(script_args.eval_file))
    reward_funcs = build_rewards(router, script_args, training_args)
    resume = resume_point(training_args, script_args.auto_resume)
    if resume:
        router.load_state(resume)
        logger.info("resuming from %s", resume)

    # 3. Train.
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
        callbacks=[router.state_callback()],
    )
    trainer.train(resume_from_checkpoint=resume)

    # 4. Save a folder the next stage can load, with the router's statistics beside it.
    out = save_trained(trainer, training_args.output_dir, script_args.merge_lora)
    if trainer.accelerator.is_main_process:
        router.save_state(training_args.output_dir)
        logger.info("model saved to %s", out)
    return out, trainer


if __name__ == "__main__":
    main()
