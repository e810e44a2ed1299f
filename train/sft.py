"""Supervised fine-tuning set-up shared by the SFT, distillation and dual-system recipes.

The recipes stay top-to-bottom scripts; what they share (turning records into chat examples, building trl's
``SFTTrainer`` with or without LoRA, saving a loadable model) lives here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from trl import ModelConfig, SFTTrainer, get_peft_config

from train.core.args import DataArguments
from train.core.configs import SFTConfig
from train.core.data import DataError, load_records, mix, to_messages
from train.core.guards import FiniteTrainingGuard, check_finite_model
from train.core.loading import load_model, load_tokenizer

logger = logging.getLogger(__name__)


@dataclass
class SFTScriptArguments(DataArguments):
    """Data and format options of the SFT recipe (training options are trl's ``SFTConfig``)."""


def to_sft_example(record: dict[str, Any], source: str = "<records>", index: int | None = None) -> dict[str, Any]:
    """A record with a ``response`` as trl's conversational example: ``{"messages": [..., assistant]}``."""
    if not record.get("response"):
        where = source if index is None else f"{source}, row {index}"
        raise DataError(f"{where}, key 'response': SFT needs a target response")
    messages = to_messages(record["prompt"])
    return {"messages": messages + [{"role": "assistant", "content": record["response"]}]}


def sft_dataset(records: Dataset, source: str = "<records>") -> Dataset:
    """Records with a ``response`` as trl conversations; a missing response is an error naming its row."""
    rows = [to_sft_example(r, source, i) for i, r in enumerate(records, 1)]
    return Dataset.from_list(rows)


def load_training_data(
    args: DataArguments, to_examples: Callable[[Dataset, str], Dataset], seed: int = 0
) -> tuple[Dataset, Dataset | None]:
    """The training and held-out examples of a recipe's ``train_files``/``train_weights``/``eval_file``.

    Each file's records become examples with ``to_examples(records, source)`` (SFT conversations, GRPO prompts),
    then the files are mixed: by ``train_weights``, else in proportion to their sizes. ``max_train_samples`` cuts
    the mixture; ``max_record_bytes`` refuses larger records. The one loader of the SFT and GRPO recipes, so both
    read these keys the same way.
    """
    if not args.train_files:
        raise DataError("train_files: give at least one record file")
    limit = args.max_record_bytes
    parts = [to_examples(load_records(f, max_record_bytes=limit), f) for f in args.train_files]
    if args.train_weights:
        if len(args.train_weights) != len(parts):
            raise DataError(f"train_weights: {len(args.train_weights)} weights for {len(parts)} train_files")
        train = mix(parts, args.train_weights, seed=seed)
    else:
        train = parts[0] if len(parts) == 1 else mix(parts, [len(p) for p in parts], seed=seed)
    if args.max_train_samples:
        train = train.select(range(min(args.max_train_samples, len(train))))
    evals = None
    if args.eval_file:
        evals = to_examples(load_records(args.eval_file, max_record_bytes=limit), args.eval_file)
    return train, evals


def load_sft_data(args: SFTScriptArguments, seed: int = 0) -> tuple[Dataset, Dataset | None]:
    """Chat-formatted training and held-out conversations (:func:`load_training_data` with :func:`sft_dataset`)."""
    return load_training_data(args, sft_dataset, seed)


def load_for_training(
    model_args: ModelConfig,
    think_start: str | None = None,
    think_end: str | None = None,
    allow_nonfinite_weights: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model and tokenizer from ``model_args`` (local paths stay offline; embeddings follow the tokenizer).

    ``think_start``/``think_end`` are the config's override of the think delimiters; the tokenizer loader resolves
    them, and the run's format is then ``ThinkFormat.from_tokenizer(tokenizer)``. A checkpoint with NaN/inf weights
    is refused unless ``allow_nonfinite_weights``.
    """
    tokenizer = load_tokenizer(
        model_args.model_name_or_path, revision=model_args.model_revision, think_start=think_start, think_end=think_end
    )
    tokenizer.padding_side = "right"  # training pads on the right; generation switches to left
    dtype = model_args.dtype if model_args.dtype not in (None, "auto") else "float32"
    model = load_model(
        model_args.model_name_or_path,
        dtype=dtype,
        tokenizer=tokenizer,
        revision=model_args.model_revision,
        attn_implementation=model_args.attn_implementation,
        allow_nonfinite_weights=allow_nonfinite_weights,
    )
    return model, tokenizer


def build_sft_trainer(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    training_args: SFTConfig,
    model_args: ModelConfig,
    train_dataset: Dataset,
    eval_dataset: Dataset | None = None,
    callbacks: list | None = None,
) -> SFTTrainer:
    """trl's SFTTrainer, with a LoRA adapter when ``model_args.use_peft`` is set.

    Training stops with an error on a non-finite loss or gradient (:class:`train.core.guards.FiniteTrainingGuard`)
    instead of training on to NaN weights.
    """
    return SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
        callbacks=[*(callbacks or []), FiniteTrainingGuard()],
    )


def save_trained(trainer: SFTTrainer, output_dir: str | Path, merge_lora: bool = True) -> Path:
    """Save the trained model and tokenizer; a LoRA run also gets ``merged/``, a full loadable model.

    Returns the folder downstream stages should load (the merged one for LoRA). A model with NaN/inf weights is
    refused (:class:`train.core.guards.NonFiniteError`): nothing is saved.
    """
    output_dir = Path(output_dir)
    check_finite_model(trainer.model, str(output_dir))
    trainer.save_model(str(output_dir))
    model = trainer.model
    if hasattr(model, "merge_and_unload") and merge_lora:
        merged_dir = output_dir / "merged"
        if trainer.accelerator.is_main_process:
            merged = trainer.accelerator.unwrap_model(model).merge_and_unload()
            merged.save_pretrained(merged_dir)
            trainer.processing_class.save_pretrained(merged_dir)
            logger.info("saved the LoRA-merged model to %s", merged_dir)
        trainer.accelerator.wait_for_everyone()
        return merged_dir
    return output_dir
