"""Stage 2: the dual-system recipe. One model, three modes: /no_think, /think (the default) and /auto_think.

    accelerate launch --config_file recipes/accelerate/cpu.yaml recipes/dual_system.py \\
        --config recipes/configs/tiny/dual_system.yaml

1. **Fusion data** (:mod:`train.dual_system.fusion`): the starting model's pass rates in fast and slow mode label
   every prompt fast or slow; targets are the shortest correct replies; each prompt gives ``/no_think``,
   ``/think``, untagged and ``/auto_think`` records. Built once, resumable, or read from ``fusion_file``; under
   ``accelerate launch`` every process samples its share of the prompts (``sampler_*`` keys: transformers, vLLM
   per process, or an endpoint) and the main process writes.
2. **Phase 1, explicit tags**: ``/no_think``, ``/think`` and untagged records, with a ``phase1_slow_replay`` share of
   slow-mode replay rows (``replay_files``, e.g. the Stage-1 SFT data) so slow reasoning is not forgotten, and a
   ``phase1_fast_share`` of fast-pool rows (``fast_files``). Prompts held out for phase-2 labelling
   (``phase2_holdout``, ``phase2_files``) are kept out of it (:mod:`train.dual_system.data`).
3. **Phase 2, auto mode**: with ``relabel_before_phase2`` the phase-1 model, which now knows the tags, labels the
   prompts again (its own fast answers become fast targets where correct); ``/auto_think`` records make up
   ``phase2_auto_share`` of the rows, the rest are explicit tags and fast-pool rows; the ``/auto_think`` rows are
   mixed across difficulty buckets with weights from the measured pass rates
   (:func:`train.dual_system.fusion.difficulty_mix`: buckets the model still gets wrong in their labelled mode get
   more rows).
4. **Optional RL for the mode choice** (``rl_steps > 0``, :mod:`train.dual_system.rl`): GRPO on ``/auto_think``
   prompts, half fast-labelled and half slow-labelled, with the AdaptThink-style ``mode_choice`` reward
   (:mod:`rewards.mode_choice`).

Assistant-only loss, full fine-tuning or LoRA (``use_peft``). Each phase saves its model under
``<output_dir>/phase1``, ``phase2`` (and ``rl``); a re-run skips the phases already saved and resumes an
interrupted phase from its last checkpoint (with ``save_strategy: steps``; :mod:`train.dual_system.phases`). The
final model is saved to ``output_dir`` (merged, for LoRA, under ``output_dir/merged``).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from accelerate import PartialState
from trl import ModelConfig

from train.core.cli import parse_args, setup_logging
from train.core.configs import SFTConfig
from train.core.device import close_distributed
from train.core.fingerprint import check_recipe_config
from train.core.modes import ThinkFormat
from train.dual_system.config import DualSystemConfig
from train.dual_system.data import phase1_dataset, phase2_dataset, rows_per_phase, split_prompts
from train.dual_system.phases import (
    fusion_rows,
    load_phase,
    phase2_rows,
    phase_args,
    phase_done,
    run_sft_phase,
    save_final,
    saved_phase2_rows,
)
from train.dual_system.rl import run_rl
from train.sft import load_for_training

logger = logging.getLogger("recipes.dual_system")

# The config dataclasses, in the order TrlParser fills them (also read by the config-validation test).
ARG_CLASSES = (DualSystemConfig, SFTConfig, ModelConfig)
RL_KEYS = ("dual_system.rl_*",)


def main(argv: list[str] | None = None) -> Path:
    args, training_args, model_args = parse_args(ARG_CLASSES, argv)
    # The sampling phases load the same checkpoints as training: remote code trusted for one is trusted for both.
    args = dataclasses.replace(
        args, sampler_trust_remote_code=args.sampler_trust_remote_code or training_args.trust_remote_code
    )
    setup_logging(training_args.get_process_log_level())
    _ = training_args.device  # the process group is created here, with the config's ddp_timeout
    logger.info("%d process(es), device %s", PartialState().num_processes, PartialState().device)
    # Resume only under the recorded configuration (delete output_dir to start over under another). The RL phase is
    # never resumed, only run after the saved phases, so its keys may change between runs.
    record = dict(stage="dual_system", config=args, training_args=training_args, model_args=model_args, ignore=RL_KEYS)
    if PartialState().is_main_process:
        check_recipe_config(training_args.output_dir, **record)
    PartialState().wait_for_everyone()
    check_recipe_config(training_args.output_dir, **record, write=False)

    # 1. Setup: the starting model labels the prompts (fusion data, built once, on the main process).
    model, tokenizer = load_for_training(model_args, args.think_start, args.think_end, training_args=training_args)
    think = ThinkFormat.from_tokenizer(tokenizer)
    source = Path(model_args.model_name_or_path)  # the folder of the latest model: the final save copies it
    rows = fusion_rows(args, training_args, model, tokenizer, source)
    logger.info("fusion data: %d records", len(rows))
    split = split_prompts(rows, args)  # phase-1 rows; prompts held out for the phase-2 labels
    later_args = dataclasses.replace(model_args, use_peft=False)  # a PeftModel is not wrapped twice

    # 2. Phase 1: explicit tags with slow replay and the fast pool (held-out prompts wait for phase 2).
    p1 = phase_args(training_args, "phase1", args.phase1_steps)
    if args.phase1_steps and phase_done(Path(p1.output_dir)):
        logger.info("phase 1 already done: loading %s", p1.output_dir)
        model, tokenizer = load_phase(Path(p1.output_dir), model_args, args, training_args)
        model_args, source = later_args, Path(p1.output_dir)
    elif args.phase1_steps:
        size = rows_per_phase(args, training_args, args.phase1_steps)
        data = phase1_dataset(split.phase1, args, size, training_args.seed, think=think, held=split.held)
        model = run_sft_phase("phase 1", model, tokenizer, data, p1, model_args, {"phase": 1})
        model_args, source = later_args, Path(p1.output_dir)

    # 3. Phase 2: /auto_think emphasis, labelled again by the phase-1 model, difficulty mix from its pass rates.
    rows = split.phase1
    p2 = phase_args(training_args, "phase2", args.phase2_steps, args.phase2_learning_rate)
    if args.phase2_steps and phase_done(Path(p2.output_dir)):
        logger.info("phase 2 already done: loading %s", p2.output_dir)
        model, tokenizer = load_phase(Path(p2.output_dir), model_args, args, training_args)
        rows = saved_phase2_rows(args, training_args, split)  # the RL phase uses the phase-2 labels too
        source = Path(p2.output_dir)
    elif args.phase2_steps:
        rows = phase2_rows(args, training_args, model, tokenizer, split, source)
        size = rows_per_phase(args, training_args, args.phase2_steps)
        data, weights = phase2_dataset(rows, args, size, training_args.seed + 1, think=think)
        logger.info("phase 2 difficulty mix: %s", weights)
        info = {"phase": 2, "difficulty_mix": weights}
        model = run_sft_phase("phase 2", model, tokenizer, data, p2, model_args, info)
        source = Path(p2.output_dir)

    # 4. Optional RL for the mode choice.
    if args.rl_steps:
        model = run_rl(model, tokenizer, rows, args, training_args)
        source = Path(training_args.output_dir) / "rl"

    # 5. The final model where the next stage (or scripts/evaluate.py) loads it: the last phase's saved files (each
    # phase saves through trainer.save_model, which gathers ZeRO-3/FSDP shards).
    return save_final(source, Path(training_args.output_dir), args.merge_lora)


if __name__ == "__main__":
    main()
    close_distributed()
