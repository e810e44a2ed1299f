"""Supervised fine-tuning on records with target responses (full or LoRA, assistant-only loss).

    accelerate launch --config_file recipes/accelerate/cpu.yaml recipes/sft.py --config recipes/configs/tiny/sft.yaml

Every config key can be overridden on the command line, e.g. ``--learning_rate 1e-3 --use_peft true``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from trl import ModelConfig

from train.core.cli import parse_args, setup_logging
from train.core.configs import SFTConfig
from train.core.device import close_distributed
from train.sft import (
    SFTScriptArguments,
    build_sft_trainer,
    load_for_training,
    load_sft_data,
    save_trained,
)

logger = logging.getLogger("recipes.sft")

# The config dataclasses, in the order TrlParser fills them (also read by the config-validation test).
ARG_CLASSES = (SFTScriptArguments, SFTConfig, ModelConfig)


def main(argv: list[str] | None = None) -> Path:
    script_args, training_args, model_args = parse_args(ARG_CLASSES, argv)
    setup_logging(training_args)

    # 1. Setup: model, tokenizer (with the fastslow template) and chat-formatted data.
    model, tokenizer = load_for_training(
        model_args,
        script_args.think_start,
        script_args.think_end,
        script_args.allow_nonfinite_weights,
        training_args=training_args,
    )
    train_dataset, eval_dataset = load_sft_data(script_args, seed=training_args.seed)
    logger.info("training on %d examples", len(train_dataset))

    # 2. Train.
    trainer = build_sft_trainer(model, tokenizer, training_args, model_args, train_dataset, eval_dataset)
    logger.info("device %s, %d process(es)", trainer.accelerator.device, trainer.accelerator.num_processes)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)

    # 3. Save a folder the next stage can load.
    out = save_trained(trainer, training_args.output_dir, script_args.merge_lora)
    if trainer.accelerator.is_main_process:
        logger.info("model saved to %s", out)
    return out


if __name__ == "__main__":
    main()
    close_distributed()
