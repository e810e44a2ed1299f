"""The dual-system recipe's stages: fusion labels, the SFT phases (each saved, skipped once done, resumed from its
last checkpoint), the phase-2 relabelling and the final save.

Data is labelled by every process at once: each samples its share of the prompts and the main process writes
(:func:`train.dual_system.fusion.build_fusion` with a :class:`~train.sampling.sharded.ShardedSampler`). The model
labelled with is the one in memory where that is a whole model on each process (one process, DDP), else (ZeRO-3,
FSDP, or a vLLM / endpoint backend) the saved folder, loaded outside the training's sharding. A LoRA run keeps one
adapter through every phase: the phase model stays a ``PeftModel``. The final model is copied from the last saved
phase (each saved by ``trainer.save_model``, which gathers sharded weights), never saved from rank 0's shard.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from accelerate import PartialState
from datasets import Dataset
from peft import PeftModel
from transformers.trainer_utils import get_last_checkpoint
from trl import ModelConfig

from train.core.configs import SFTConfig
from train.core.data import DataError, load_records, read_records
from train.core.modes import ThinkFormat
from train.core.sources import load_source_from
from train.dual_system.config import DualSystemConfig
from train.dual_system.data import PromptSplit, with_phase2_labels
from train.dual_system.fusion import build_fusion, merge_prompts, prompts_of_fusion
from train.merging.lora import is_adapter
from train.sampling.sharded import ShardedSampler, checkpoint_sampler, is_sharded_training
from train.sft import build_sft_trainer, load_for_training, merge_saved_adapter, save_trained

logger = logging.getLogger(__name__)

#: Written into a phase's folder once it is trained and saved: a re-run loads the phase instead of training it.
DONE = "phase_done.json"


# ------------------------------------------------------------------------------------------------ fusion data


def labelling_sampler(
    args: DualSystemConfig, source: str | Path, model: Any, tokenizer: Any, scratch: Path
) -> ShardedSampler:
    """The sampler that labels prompts with the model saved in ``source`` (``model`` is the same one in memory).

    The in-memory model serves when it is whole on every process (transformers backend, no ZeRO-3/FSDP): no second
    copy. Else the folder is loaded on each process outside the sharding (a LoRA folder is first merged into its
    base, streamed, by the main process, into ``scratch``) or handed to vLLM / the endpoint.
    """
    state = PartialState()
    think = ThinkFormat.from_tokenizer(tokenizer)
    config = args.sampler_for(source, batch_size=args.batch_size, self_repair=args.self_repair)
    if config.backend == "transformers" and model is not None and not is_sharded_training():
        model.to(state.device)
        return checkpoint_sampler(config, think, state, model=model, tokenizer=tokenizer)
    if is_adapter(source):
        merged = scratch / "labelling_model"
        if state.is_main_process and not (merged / "config.json").exists():
            merge_saved_adapter(source, merged)
        state.wait_for_everyone()
        config = dataclasses.replace(config, model=str(merged))
    return checkpoint_sampler(config, think, state)


def label(
    args: Any, source: str | Path, model: Any, tokenizer: Any, records: list[dict], out: Path, seed: int
) -> None:
    """Build the fusion data of ``records`` in ``out`` on every process (sharded), then free the sampler."""
    sampler = labelling_sampler(args, source, model, tokenizer, out)
    try:
        build_fusion(None, tokenizer, records, args, out, sampler=sampler, seed=seed, state=sampler.state)
    finally:
        sampler.close()


def fusion_rows(
    args: DualSystemConfig, training_args: SFTConfig, model: Any, tokenizer: Any, source: str | Path | None = None
) -> list[dict]:
    """The fusion records: read from ``fusion_file``, or built by every process from :func:`prompt_records` (the
    starting model's folder is ``source``, default ``model.name_or_path``)."""
    if args.fusion_file:
        return read_records(args.fusion_file, validate=False)
    out = Path(args.fusion_dir or Path(training_args.output_dir) / "fusion")
    if not args.train_files and not args.dataset_name:
        raise DataError("train_files: give prompt records to label, a dataset_name, or a prebuilt fusion_file")
    if not (out / "fusion.jsonl").exists():
        records = merge_prompts(prompt_records(args))
        records = records[: args.max_prompts] if args.max_prompts else records
        label(args, source or model.name_or_path, model, tokenizer, records, out, training_args.seed)
    PartialState().wait_for_everyone()
    return read_records(out / "fusion.jsonl", validate=False)


def prompt_records(args: DualSystemConfig) -> list[dict]:
    """The prompts to label: ``train_files``' records, then the ``dataset_name`` data set's (its preset and column
    mapping, :func:`train.core.sources.load_source`; only ``max_prompts`` rows read when it is the only source)."""
    records = [r for f in args.train_files for r in load_records(f).to_list()]
    if args.dataset_name:
        records += load_source_from(args, limit=None if args.train_files else args.max_prompts)
    return records


def relabel(
    args: DualSystemConfig, training_args: SFTConfig, model: Any, tokenizer: Any, split: PromptSplit,
    source: str | Path | None = None,
) -> list[dict]:  # fmt: skip
    """Fusion records labelled again by the current (phase-1) model, sampling with the mode tags it has learned.

    Labels ``split.labelled`` and the ``phase2_files`` prompts (``split.extra``), once, on every process (sharded);
    ``source`` is the phase-1 folder, loaded when the model in memory is sharded.
    """
    out = Path(training_args.output_dir) / "fusion_phase2"
    if not (out / "fusion.jsonl").exists():
        config = dataclasses.replace(args, sample_tags=True)
        prompts = prompts_of_fusion(split.labelled) + list(split.extra)
        label(config, source or Path(training_args.output_dir) / "phase1", model, tokenizer, prompts, out,
              training_args.seed + 1)  # fmt: skip
    PartialState().wait_for_everyone()
    return read_records(out / "fusion.jsonl", validate=False)


def phase2_rows(
    args: DualSystemConfig, training_args: SFTConfig, model: Any, tokenizer: Any, split: PromptSplit,
    source: str | Path | None = None,
) -> list[dict]:  # fmt: skip
    """The fusion rows phase 2 trains on: labelled by the phase-1 model (``relabel_before_phase2``), else phase 1's."""
    if not args.relabel_before_phase2:
        return split.phase1
    rows = relabel(args, training_args, model, tokenizer, split, source)
    rows = with_phase2_labels(rows, split.phase1, split.to_label)
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


def load_phase(
    path: Path, model_args: ModelConfig, args: DualSystemConfig, training_args: Any = None
) -> tuple[Any, Any]:
    """Reload a saved phase (full model, or base + adapter for LoRA) to resume after it; ``training_args`` carries
    the loading options trl keeps there (``trust_remote_code``, ``model_init_kwargs``)."""
    if model_args.use_peft:
        model, tokenizer = load_for_training(model_args, args.think_start, args.think_end, training_args=training_args)
        return PeftModel.from_pretrained(model, str(path), is_trainable=True), tokenizer
    return load_for_training(
        dataclasses.replace(model_args, model_name_or_path=str(path)),
        args.think_start,
        args.think_end,
        training_args=training_args,
    )


def save_final(source: str | Path, out: Path, merge_lora: bool) -> Path:
    """The final model where the next stage loads it: the files of the last saved phase (``source``; each phase was
    saved by ``trainer.save_model``, which gathers sharded weights) copied into ``out``; a LoRA run's adapter is
    copied there and, with ``merge_lora``, merged into its base under ``merged/`` (returned), streamed from disk."""
    state = PartialState()
    source, out = Path(source), Path(out)
    if state.is_main_process:
        copy_model_files(source, out)
        if is_adapter(out) and merge_lora:
            merge_saved_adapter(out, out / "merged")
        logger.info("dual-system model saved to %s (from %s)", out, source)
    state.wait_for_everyone()
    return out / "merged" if is_adapter(out) and merge_lora else out


def copy_model_files(source: Path, out: Path) -> None:
    """The files of a saved model folder (not its sub-folders: checkpoints, merged copies; not ``phase_done.json``)."""
    out.mkdir(parents=True, exist_ok=True)
    if source.resolve() == out.resolve():
        return
    for f in sorted(source.iterdir()):
        if f.is_file() and f.name != DONE:
            shutil.copy2(f, out / f.name)
