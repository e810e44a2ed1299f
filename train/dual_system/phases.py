"""The dual-system recipe's stages: fusion labels, the SFT phases (each saved, skipped once done, resumed from its
last checkpoint), the phase-2 relabelling and the final save.

Data is labelled on the main process while the others wait (``main_process_first``), so a multi-process run builds
each fusion data set once. A LoRA run keeps one adapter through every phase: the phase model stays a ``PeftModel``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from accelerate import PartialState
from datasets import Dataset
from peft import PeftModel
from transformers.trainer_utils import get_last_checkpoint
from trl import ModelConfig

from train.core.configs import SFTConfig
from train.core.data import DataError, load_records, read_records
from train.dual_system.config import DualSystemConfig
from train.dual_system.data import PromptSplit, with_phase2_labels
from train.dual_system.fusion import build_fusion, merge_prompts, prompts_of_fusion
from train.sft import build_sft_trainer, load_for_training, save_trained

logger = logging.getLogger(__name__)

#: Written into a phase's folder once it is trained and saved: a re-run loads the phase instead of training it.
DONE = "phase_done.json"


# ------------------------------------------------------------------------------------------------ fusion data


def fusion_rows(args: DualSystemConfig, training_args: SFTConfig, model: Any, tokenizer: Any) -> list[dict]:
    """The fusion records: read from ``fusion_file``, or built on the main process while the others wait."""
    if args.fusion_file:
        return read_records(args.fusion_file, validate=False)
    out = Path(args.fusion_dir or Path(training_args.output_dir) / "fusion")
    if not args.train_files:
        raise DataError("train_files: give prompt records to label (or a prebuilt fusion_file)")
    with training_args.main_process_first(desc="fusion data", local=False):
        if not (out / "fusion.jsonl").exists():
            records = merge_prompts([r for f in args.train_files for r in load_records(f).to_list()])
            records = records[: args.max_prompts] if args.max_prompts else records
            model.to(PartialState().device)
            build_fusion(model, tokenizer, records, args, out, seed=training_args.seed)
    return read_records(out / "fusion.jsonl", validate=False)


def relabel(
    args: DualSystemConfig, training_args: SFTConfig, model: Any, tokenizer: Any, split: PromptSplit
) -> list[dict]:
    """Fusion records labelled again by the current (phase-1) model, sampling with the mode tags it has learned.

    Labels ``split.labelled`` and the ``phase2_files`` prompts (``split.extra``), once, on the main process.
    """
    out = Path(training_args.output_dir) / "fusion_phase2"
    with training_args.main_process_first(desc="phase-2 fusion data", local=False):
        if not (out / "fusion.jsonl").exists():
            config = dataclasses.replace(args, sample_tags=True)
            prompts = prompts_of_fusion(split.labelled) + list(split.extra)
            build_fusion(model, tokenizer, prompts, config, out, seed=training_args.seed + 1)
    return read_records(out / "fusion.jsonl", validate=False)


def phase2_rows(
    args: DualSystemConfig, training_args: SFTConfig, model: Any, tokenizer: Any, split: PromptSplit
) -> list[dict]:
    """The fusion rows phase 2 trains on: labelled by the phase-1 model (``relabel_before_phase2``), else phase 1's."""
    if not args.relabel_before_phase2:
        return split.phase1
    rows = with_phase2_labels(relabel(args, training_args, model, tokenizer, split), split.phase1, split.to_label)
    logger.info("phase-2 fusion data (labelled by the phase-1 model): %d records", len(rows))
    return rows


def saved_phase2_rows(args: DualSystemConfig, training_args: SFTConfig, split: PromptSplit) -> list[dict]:
    """The fusion rows a finished phase 2 trained on, for the RL phase after it (the phase-2 labels when saved)."""
    labelled = Path(training_args.output_dir) / "fusion_phase2" / "fusion.jsonl"
    if args.relabel_before_phase2 and labelled.exists():
        return with_phase2_labels(read_records(labelled, validate=False), split.phase1, split.to_label)
    return split.phase1


# ----------------------------------------------------------------------------------------------------- phases


def phase_args(training_args: SFTConfig, name: str, steps: int, learning_rate: float | None = None) -> SFTConfig:
    """A copy of the training arguments for one phase: its own output folder, step count and learning rate."""
    out = copy.copy(training_args)
    out.output_dir = str(Path(training_args.output_dir) / name)
    out.max_steps = steps
    # Each phase resumes from its own last checkpoint (see run_sft_phase), never from another phase's.
    out.resume_from_checkpoint = None
    if learning_rate is not None:
        out.learning_rate = learning_rate
    return out


def phase_done(path: Path) -> bool:
    """Whether the phase saved under ``path`` finished (a re-run loads it instead of training it)."""
    return (Path(path) / DONE).exists()


def run_sft_phase(
    name: str,
    model: Any,
    tokenizer: Any,
    dataset: Dataset,
    training_args: SFTConfig,
    model_args: ModelConfig,
    info: dict,
) -> Any:
    """Train one phase and save it; returns the trained model (a PeftModel stays one, for the next phase)."""
    logger.info("%s: %d rows, %d steps", name, len(dataset), training_args.max_steps)
    trainer = build_sft_trainer(model, tokenizer, training_args, model_args, dataset)
    out = Path(training_args.output_dir)
    resume = get_last_checkpoint(str(out)) if out.is_dir() else None
    if resume:
        logger.info("%s: resuming from %s", name, resume)
    trainer.train(resume_from_checkpoint=resume)
    # The adapter alone: the next phase trains it further, and save_final merges the last one.
    saved = save_trained(trainer, training_args.output_dir, merge_lora=False)
    if trainer.accelerator.is_main_process:
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        info = {**info, "rows": len(dataset), "steps": trainer.state.global_step, "losses": losses}
        info["model"] = str(saved)
        (out / DONE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return trainer.model


def load_phase(path: Path, model_args: ModelConfig, args: DualSystemConfig) -> tuple[Any, Any]:
    """Reload a saved phase (full model, or base + adapter for LoRA) to resume after it."""
    if model_args.use_peft:
        model, tokenizer = load_for_training(model_args, args.think_start, args.think_end)
        return PeftModel.from_pretrained(model, str(path), is_trainable=True), tokenizer
    return load_for_training(
        dataclasses.replace(model_args, model_name_or_path=str(path)), args.think_start, args.think_end
    )


def save_final(model: Any, tokenizer: Any, out: Path, merge_lora: bool) -> Path:
    """Save the final model where the next stage loads it; a LoRA run saves its adapter there and, with
    ``merge_lora``, the merged model under ``merged/`` (returned)."""
    state = PartialState()
    target = out
    if hasattr(model, "merge_and_unload"):
        if state.is_main_process:
            model.save_pretrained(out)
            tokenizer.save_pretrained(out)
        if merge_lora:
            target = out / "merged"
            model = model.merge_and_unload()
    if state.is_main_process:
        model.save_pretrained(target)
        tokenizer.save_pretrained(target)
        logger.info("dual-system model saved to %s", target)
    state.wait_for_everyone()
    return target
