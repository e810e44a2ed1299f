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

import logging
import sys
from pathlib import Path

from trl import GRPOTrainer, get_peft_config

from rewards.router import MARSRouter
from train.core.cli import parse_args, setup_logging
from train.core.device import close_distributed
from train.core.guards import FiniteTrainingGuard
from train.core.modes import ThinkFormat
from train.rl.async_trl import async_grpo_config, build_async_trainer
from train.rl.config import ARG_CLASSES, resume_checkpoint
from train.rl.data import load_grpo_data, mode_counts
from train.rl.mars import build_rewards, mars_config, merge_mars_override, validate_config
from train.rl.queue import prepare_prompts
from train.rl.trainer import FastslowGRPOTrainer
from train.sft import load_for_training, save_trained

logger = logging.getLogger("recipes.grpo")

__all__ = ["ARG_CLASSES", "main", "validate_config"]  # validate_config: read by the config-validation test


def main(argv: list[str] | None = None) -> tuple[Path, GRPOTrainer]:
    argv = list(sys.argv[1:] if argv is None else argv)
    script_args, training_args, model_args = parse_args(ARG_CLASSES, argv)
    setup_logging(training_args.get_process_log_level())

    # 1. Model, tokenizer (with the fastslow template and the run's think format) and chat-formatted prompts with
    #    their reward columns.
    model, tokenizer = load_for_training(
        model_args,
        script_args.think_start,
        script_args.think_end,
        script_args.allow_nonfinite_weights,
        training_args=training_args,
    )
    think = ThinkFormat.from_tokenizer(tokenizer)
    train_dataset, eval_dataset = load_grpo_data(script_args, seed=training_args.seed)
    # The pass-rate band and the prioritized prompt queue (when asked for): train/rl/queue.py.
    queue_config = script_args.queue_config(training_args.seed)
    train_dataset, queue = prepare_prompts(
        train_dataset, script_args.pass_rate_file, script_args.pass_rate_range, script_args.prompt_queue, queue_config
    )
    logger.info("GRPO on %d prompts; modes %s", len(train_dataset), mode_counts(train_dataset))

    # 2. The MARS router; refuse data whose tasks the config does not route before spending any compute.
    mars = mars_config(merge_mars_override(script_args.mars, argv), training_args)
    router = MARSRouter(mars, think=mars.think or think)  # rewards read answers the way the model writes them
    sources = [*script_args.train_files, script_args.dataset_name]
    router.check_tasks(train_dataset["task"], where=", ".join(s for s in sources if s))
    if eval_dataset is not None:
        router.check_tasks(eval_dataset["task"], where=str(script_args.eval_file))
    reward_funcs = build_rewards(router, script_args, training_args)
    resume = resume_checkpoint(training_args, script_args.auto_resume)
    if resume:
        router.load_state(resume)
        logger.info("resuming from %s", resume)

    # 3. Train: trl's GRPOTrainer with dynamic sampling, the prompt queue and bounded-staleness rollouts
    #    (train/rl/trainer.py); ssp with vLLM is trl's AsyncGRPOTrainer (train/rl/async_trl.py; needs a GPU).
    callbacks = [router.state_callback(), FiniteTrainingGuard()]  # a NaN loss or gradient stops the run
    if script_args.rollout_mode == "ssp" and training_args.use_vllm:
        config = async_grpo_config(script_args, training_args)
        path = model_args.model_name_or_path
        sampling = dict(dynamic_sampling=script_args.dynamic_sampling, prompt_queue=queue,
                        success_threshold=script_args.queue_success_threshold, resume=resume)  # fmt: skip
        trainer = build_async_trainer(path, reward_funcs, config, train_dataset, tokenizer, callbacks, **sampling)
    else:
        trainer = FastslowGRPOTrainer(
            model=model,
            reward_funcs=reward_funcs,
            args=training_args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=tokenizer,
            peft_config=get_peft_config(model_args),
            dynamic_sampling=script_args.dynamic_sampling,
            max_resample_rounds=script_args.max_resample_rounds,
            prompt_queue=queue,
            success_threshold=script_args.queue_success_threshold,
            rollout_mode=script_args.rollout_mode,
            max_staleness=script_args.max_staleness,
            importance_cap=script_args.importance_cap,
            actor=script_args.rollout_actor,
            heartbeat_timeout=script_args.actor_heartbeat_timeout,
            callbacks=callbacks,
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
    close_distributed()
