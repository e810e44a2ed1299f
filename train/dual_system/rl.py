"""The optional RL phase of the dual-system recipe: GRPO on the mode choice of ``/auto_think`` prompts, with the
AdaptThink-style ``mode_choice`` reward (:mod:`rewards.mode_choice`)."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

from datasets import Dataset
from trl import GRPOTrainer

from rewards.mode_choice import ModeChoiceReward
from train.core.configs import GRPOConfig, SFTConfig
from train.core.data import to_messages
from train.core.modes import ThinkFormat
from train.dual_system.config import DualSystemConfig
from train.dual_system.phases import DONE

logger = logging.getLogger(__name__)

#: The record keys the reward reads (``slow_rate``: the slow-mode reference a fast reply is measured against).
REWARD_KEYS = ("task", "answer", "tests", "slow_rate", "label")


def rl_dataset(rows: list[dict], seed: int = 0) -> Dataset:
    """``/auto_think`` prompts, as many fast-labelled as slow-labelled (groups balanced between modes)."""
    auto = [r for r in rows if r.get("fusion_tag") == "auto_think"]
    by_label = {lab: [r for r in auto if r.get("label") == lab] for lab in ("fast", "slow")}
    n = min(len(v) for v in by_label.values())
    if n == 0:
        logger.warning(
            "RL: one label has no prompts (%s); using all auto prompts unbalanced",
            {k: len(v) for k, v in by_label.items()},
        )
        chosen = auto
    else:
        rng = random.Random(seed)
        chosen = [r for v in by_label.values() for r in rng.sample(v, n)]
    return Dataset.from_list(
        [{"prompt": to_messages(r["prompt"]), **{k: r.get(k) for k in REWARD_KEYS}} for r in chosen]
    ).shuffle(seed=seed)


def grpo_args(args: DualSystemConfig, training_args: SFTConfig) -> GRPOConfig:
    """The GRPO options of the RL phase: the ``rl_*`` keys, and the run's device, precision and logging."""
    return GRPOConfig(
        output_dir=str(Path(training_args.output_dir) / "rl"),
        max_steps=args.rl_steps,
        learning_rate=args.rl_learning_rate,
        per_device_train_batch_size=args.rl_batch_size,
        num_generations=args.rl_num_generations,
        max_completion_length=args.rl_max_completion_length,
        temperature=args.rl_temperature,
        logging_steps=max(1, min(10, args.rl_steps)),
        save_strategy="no",
        report_to=training_args.report_to,
        seed=training_args.seed,
        use_cpu=training_args.use_cpu,
        bf16=training_args.bf16,
        gradient_checkpointing=training_args.gradient_checkpointing,
        disable_tqdm=training_args.disable_tqdm,
    )


def run_rl(model: Any, tokenizer: Any, rows: list[dict], args: DualSystemConfig, training_args: SFTConfig) -> Any:
    """GRPO on the mode choice with the ``mode_choice`` reward; returns the trained model."""
    think = ThinkFormat.from_tokenizer(tokenizer)
    reward = ModeChoiceReward(delta=args.rl_delta, margin=args.rl_margin, think=think)
    config = grpo_args(args, training_args)
    trainer = GRPOTrainer(
        model=model, reward_funcs=[reward], args=config, train_dataset=rl_dataset(rows), processing_class=tokenizer
    )
    trainer.train()
    trainer.save_model(config.output_dir)
    if trainer.accelerator.is_main_process:
        info = {"steps": trainer.state.global_step, "log": trainer.state.log_history}
        (Path(config.output_dir) / DONE).write_text(json.dumps(info, indent=2, default=str) + "\n")
    return trainer.model
