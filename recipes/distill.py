"""Stage 1: iterative distillation with model-aware complexity selection and merging between iterations.

    accelerate launch --config_file recipes/accelerate/cpu.yaml recipes/distill.py \
        --config recipes/configs/tiny/distill.yaml

Each of ``iterations`` rounds:

1. measure the complexity of candidate prompts for the current student (``1 - pass rate`` of ``complexity_samples``
   sampled replies, verified with the MARS rule rewards) and select a training set favouring medium complexity
   (Gaussian or band weights, optional replay of mastered prompts, a target size; iteration ``t`` draws with the
   seed ``selection_seed + t``);
2. train the student on the teacher's verified (shortest-correct) responses to the selected prompts, full or LoRA,
   with the SFT recipe's trainer set-up;
3. merge the trained student with the previous iteration's model (``merge_method``);
4. evaluate the merged model on held-out prompts (and on the first iteration's data, to see forgetting) and write
   ``iteration_<t>/`` with the data statistics, checkpoint, metrics and a manifest (see ``train/distill/loop.py``).

A rerun resumes after the last complete iteration, and only under the configuration recorded in
``<output_dir>/run_config.json`` (another is refused, naming the keys; delete ``output_dir`` to start over).
Under ``accelerate launch`` every process samples its share of the prompts for the pass rates and the evaluation,
from its own copy of the checkpoint folder loaded outside the training's ZeRO-3/FSDP context, with the backend the
``sampler_*`` keys choose (transformers on the process's device, vLLM per process, or an endpoint); the replies are
gathered in order (:mod:`train.sampling.sharded`). Training runs on all of them; the main process merges (streamed,
from the saved folders) and writes the files. Every key can be overridden on the command line.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import asdict
from pathlib import Path

from accelerate import PartialState
from trl import ModelConfig

from train.core.cli import parse_args, setup_logging
from train.core.configs import SFTConfig
from train.core.data import read_records
from train.core.device import close_distributed
from train.core.fingerprint import fault_point
from train.core.loading import load_tokenizer
from train.core.modes import ThinkFormat
from train.distill.config import DistillConfig
from train.distill.loop import (
    check_distill_config,
    iteration_dir,
    merge_models,
    resume_point,
    write_json,
    write_manifest,
)
from train.distill.stage import eval_records, evaluate_checkpoint, read_pool, select_iteration, train_student

logger = logging.getLogger("recipes.distill")

# The config dataclasses, in the order TrlParser fills them (also read by the config-validation test).
ARG_CLASSES = (DistillConfig, SFTConfig, ModelConfig)


def main(argv: list[str] | None = None) -> Path:
    cfg, training_args, model_args = parse_args(ARG_CLASSES, argv)
    # The sampling phases load the same checkpoints as training: remote code trusted for one is trusted for both.
    cfg = dataclasses.replace(
        cfg, sampler_trust_remote_code=cfg.sampler_trust_remote_code or training_args.trust_remote_code
    )
    # The process group comes from the training arguments so that it gets their `ddp_timeout`: the other ranks wait
    # at a barrier while the main process merges and writes.
    _ = training_args.device
    state = PartialState()
    # trl's default log level is "passive" (warnings only); the loop's progress is worth seeing on the main process.
    passive = training_args.log_level == "passive"
    setup_logging(training_args.get_process_log_level() if not passive or not state.is_main_process else logging.INFO)
    logger.info("%d process(es), device %s", state.num_processes, state.device)  # sampling is split over them
    output_dir, seed = Path(training_args.output_dir), training_args.seed

    # 1. The pool of verified teacher data, the held-out records and the run's think format.
    pool = read_pool(cfg)  # refused here, naming the file, when empty or without responses
    held_out = eval_records(cfg)
    initial = Path(model_args.model_name_or_path)
    tokenizer = load_tokenizer(initial, think_start=cfg.think_start, think_end=cfg.think_end,
                               trust_remote_code=training_args.trust_remote_code)  # fmt: skip
    think = ThinkFormat.from_tokenizer(tokenizer)

    # 2. Resume after the last complete iteration, under the recorded configuration only (delete output_dir to start
    # over under another); evaluate the starting model once.
    if state.is_main_process:
        check_distill_config(output_dir, cfg, training_args, model_args)
    state.wait_for_everyone()
    check_distill_config(output_dir, cfg, training_args, model_args, write=False)
    start = resume_point(output_dir, cfg.iterations)
    current = initial if start == 0 else iteration_dir(output_dir, start - 1) / "model"
    if start:
        logger.info("resuming after iteration %d (%s)", start - 1, current)
    initial_metrics = output_dir / "initial_metrics.json"
    if start == 0 and cfg.eval_initial and not initial_metrics.exists():
        metrics = evaluate_checkpoint(initial, {"held_out": held_out}, cfg, think, state)  # every process: sharded
        if state.is_main_process:
            write_json(initial_metrics, metrics)

    for t in range(start, cfg.iterations):
        it_dir = iteration_dir(output_dir, t)
        began = time.time()
        # 3. Complexity and selection: every process samples its share of the candidates; the main one writes.
        if not (it_dir / "selected.jsonl").exists():
            select_iteration(current, pool, cfg, it_dir, t, seed, think, state)
            if state.is_main_process:
                fault_point("selection")  # FASTSLOW_FAULT (train/core/fingerprint.py): the reliability tests' kill
        state.wait_for_everyone()
        # 4. Training (all processes).
        student = train_student(current, it_dir, training_args, model_args, cfg)
        state.wait_for_everyone()
        # 5. Merge (main process, streamed from the saved folders), then evaluate (every process, sharded).
        method = cfg.merge_method if t > 0 else "none"  # nothing earlier to merge with in the first round
        if state.is_main_process:
            merge_models(method, current, student, it_dir / "model", base=initial, weights=cfg.merge_weights,
                         parameters=cfg.merge_parameters())  # fmt: skip
        state.wait_for_everyone()
        record_sets = {"held_out": held_out}
        if cfg.track_first_iteration:
            first = read_records(iteration_dir(output_dir, 0) / "selected.jsonl")[: cfg.track_first_iteration]
            record_sets["first_iteration_data"] = first
        metrics = {"iteration": t, **evaluate_checkpoint(it_dir / "model", record_sets, cfg, think, state)}
        if state.is_main_process:
            write_json(it_dir / "metrics.json", metrics)
            fault_point("evaluation")
            write_manifest(it_dir, iteration=t, started_from=str(current), student=str(student), merge_method=method,
                           seconds=round(time.time() - began, 1), config=asdict(cfg))  # fmt: skip
            logger.info("iteration %d done: %s", t, metrics["held_out"])
        state.wait_for_everyone()
        current = it_dir / "model"
    if state.is_main_process:
        write_json(output_dir / "final.json", {"model": str(current), "iterations": cfg.iterations})
    return current


if __name__ == "__main__":
    main()
    close_distributed()
