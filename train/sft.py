"""Supervised fine-tuning set-up shared by the SFT, distillation and dual-system recipes.

The recipes stay top-to-bottom scripts; what they share (turning records into chat examples, building trl's
``SFTTrainer`` with or without LoRA, saving a loadable model) lives here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import DistributedType
from datasets import Dataset
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from trl import ModelConfig, SFTTrainer, get_peft_config

from train.core.args import DataArguments
from train.core.configs import SFTConfig
from train.core.data import DataError, load_records, mix, records_to_dataset, to_messages
from train.core.guards import FiniteTrainingGuard, check_finite_model
from train.core.loading import LoadOptions, load_model_and_tokenizer
from train.core.micro_batches import length_micro_batches, unsplittable
from train.core.sources import load_source_from
from train.core.unique_rows import dataset_rows, expand, unique_rows
from train.merging import merge_lora
from train.merging.lora import is_adapter, resolve_adapter_base

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
    """The training and held-out examples of a recipe's ``train_files``/``dataset_name``/``eval_file``.

    The sources are the ``train_files`` (fastslow records) and the ``dataset_name`` data set, converted by its
    ``dataset_preset`` and ``column_mapping`` (:func:`train.core.sources.load_source`). Each source's records become
    examples with ``to_examples(records, source)`` (SFT conversations, GRPO prompts), then the sources are mixed:
    by ``train_weights`` (one per train file, then one for the data set), else in proportion to their sizes.
    ``max_train_samples`` cuts the mixture; ``max_record_bytes`` refuses larger records. The held-out examples are
    ``eval_file``'s or the data set's ``dataset_eval_split``. The one loader of the SFT and GRPO recipes, so both
    read these keys the same way.
    """
    if not args.train_files and not args.dataset_name:
        raise DataError("train_files / dataset_name: give at least one record file or a data set")
    limit = args.max_record_bytes
    parts = [to_examples(load_records(f, max_record_bytes=limit), f) for f in args.train_files]
    if args.dataset_name:
        # With the data set the only source, read only the rows max_train_samples keeps (hub sets are large).
        rows = args.max_train_samples if not args.train_files else None
        records = load_source_from(args, limit=rows, max_record_bytes=limit)
        parts.append(to_examples(records_to_dataset(records), args.dataset_name))
    if args.train_weights:
        if len(args.train_weights) != len(parts):
            raise DataError(
                f"train_weights: {len(args.train_weights)} weights for {len(parts)} sources (train_files, then "
                "dataset_name)"
            )
        train = mix(parts, args.train_weights, seed=seed)
    else:
        train = parts[0] if len(parts) == 1 else mix(parts, [len(p) for p in parts], seed=seed)
    if args.max_train_samples:
        train = train.select(range(min(args.max_train_samples, len(train))))
    evals = None
    if args.eval_file and args.dataset_eval_split:
        raise DataError("eval_file and dataset_eval_split: give one held-out source, not both")
    if args.eval_file:
        evals = to_examples(load_records(args.eval_file, max_record_bytes=limit), args.eval_file)
    elif args.dataset_eval_split:
        records = load_source_from(args, split=args.dataset_eval_split, max_record_bytes=limit)
        evals = to_examples(records_to_dataset(records), f"{args.dataset_name} [{args.dataset_eval_split}]")
    return train, evals


def load_sft_data(args: SFTScriptArguments, seed: int = 0) -> tuple[Dataset, Dataset | None]:
    """Chat-formatted training and held-out conversations (:func:`load_training_data` with :func:`sft_dataset`)."""
    return load_training_data(args, sft_dataset, seed)


def load_for_training(
    model_args: ModelConfig,
    think_start: str | None = None,
    think_end: str | None = None,
    allow_nonfinite_weights: bool = False,
    *,
    training_args: Any = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model and tokenizer from ``model_args`` (local paths stay offline; embeddings follow the tokenizer).

    Every loading option of ``model_args`` reaches ``from_pretrained`` (:class:`train.core.loading.LoadOptions`):
    ``dtype``, ``attn_implementation``, the revision, and ``load_in_4bit``/``load_in_8bit`` (QLoRA: the base is
    quantized with bitsandbytes on this process's accelerator and prepared with peft; ``use_peft`` is required).
    ``training_args`` (the recipe's trl config) adds ``trust_remote_code`` (openPangu needs it),
    ``model_init_kwargs`` and its gradient checkpointing settings; without it remote code is not trusted.

    ``think_start``/``think_end`` are the config's override of the think delimiters; the tokenizer loader resolves
    them, and the run's format is then ``ThinkFormat.from_tokenizer(tokenizer)``. A checkpoint with NaN/inf weights
    is refused unless ``allow_nonfinite_weights``.
    """
    options = LoadOptions.from_model_config(model_args, training_args)
    if options.dtype in (None, "auto") and not options.quantized:
        # Trained weights stay float32; mixed precision comes from the trainer's bf16/fp16.
        options = dataclasses.replace(options, dtype="float32")
    return load_model_and_tokenizer(
        model_args.model_name_or_path,
        options=options,
        think_start=think_start,
        think_end=think_end,
        training=True,
        allow_nonfinite_weights=allow_nonfinite_weights,
    )


class FastslowSFTTrainer(SFTTrainer):
    """trl's ``SFTTrainer``; with ``length_micro_batches`` > 1 each device batch trains as length-sorted micro-batches.

    The micro-batches of one batch accumulate their gradients (DDP synchronises only after the last) and share the
    batch's ``num_items_in_batch``, so the update is the one of the whole batch (:mod:`train.core.micro_batches`).
    Every process runs the same number of them (``length_micro_batches``, or fewer where a process has fewer rows).
    The logged entropy and token accuracy are the batch's, weighted by each micro-batch's reply tokens.

    A data set with repeated rows (a sampled mixture) is tokenised once per distinct row and expanded back in order:
    the same prepared rows, for less work (:mod:`train.core.unique_rows`).
    """

    #: The column that carries each distinct row's index through trl's preparation.
    ROW_COLUMN = "_fastslow_unique_row"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._micro_batches = getattr(self.args, "length_micro_batches", 1)
        self._unsplit_warned = False
        if self._micro_batches > 1 and self.accelerator.distributed_type == DistributedType.DEEPSPEED:
            raise ValueError(
                "length_micro_batches: DeepSpeed counts every backward as a gradient-accumulation micro-step; "
                "set it to 1 (on GPUs, padding_free with flash attention removes the padding instead)"
            )

    def _prepare_dataset(
        self, dataset: Any, processing_class: Any, args: Any, packing: bool, *more: Any, **kw: Any
    ) -> Any:
        # Packing joins neighbouring rows, and a streamed or tokenised data set has nothing to save: trl's way.
        if packing or not isinstance(dataset, Dataset) or "input_ids" in dataset.column_names:
            return super()._prepare_dataset(dataset, processing_class, args, packing, *more, **kw)
        first, inverse = unique_rows(dataset_rows(dataset))
        if len(first) == len(dataset):
            return super()._prepare_dataset(dataset, processing_class, args, packing, *more, **kw)
        logger.info("preparing %d distinct rows of %d", len(first), len(dataset))
        unique = dataset.select(first).add_column(self.ROW_COLUMN, range(len(first)))
        prepared = super()._prepare_dataset(unique, processing_class, args, packing, *more, **kw)
        rows = expand(inverse, prepared[self.ROW_COLUMN])
        out = prepared.select(rows).remove_columns(self.ROW_COLUMN)
        # trl shuffled the distinct rows last; expanding restored the given order, so shuffle as trl would have
        # (the same seed over the same number of rows: trl's permutation).
        return out.shuffle(seed=args.seed) if getattr(args, "shuffle_dataset", False) else out

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        if self._micro_batches <= 1:
            return super().training_step(model, inputs, num_items_in_batch)
        # Without the batch's token count each micro-batch would be averaged on its own: another update.
        reason = "no num_items_in_batch from the trainer" if num_items_in_batch is None else unsplittable(inputs)
        if reason is not None:
            if not self._unsplit_warned:
                logger.warning("length_micro_batches: training whole batches: %s", reason)
                self._unsplit_warned = True
            return super().training_step(model, inputs, num_items_in_batch)
        parts = length_micro_batches(inputs, self._parts_on_every_process(inputs))
        loss = None
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            with contextlib.nullcontext() if last else self.accelerator.no_sync(model):
                step = super().training_step(model, part, num_items_in_batch)
            loss = step if loss is None else loss + step
        self._merge_micro_batch_metrics(parts)
        return loss

    def _parts_on_every_process(self, inputs: dict[str, Any]) -> int:
        """The number of micro-batches, the same on every process: each forward gathers metrics across them."""
        rows = int(inputs["attention_mask"].shape[0])
        if self.accelerator.num_processes > 1:
            rows = int(self.accelerator.gather(torch.tensor([rows], device=self.accelerator.device)).min())
        return min(self._micro_batches, rows)

    def _merge_micro_batch_metrics(self, parts: list[dict[str, Any]]) -> None:
        """trl logs entropy and token accuracy once per forward: one batch's value, weighted by reply tokens."""
        metrics = self._metrics["train"]
        keys = [k for k in ("entropy", "mean_token_accuracy") if len(metrics.get(k, [])) >= len(parts)]
        if not keys or any("labels" not in p for p in parts):
            return
        counts = torch.stack([(p["labels"][:, 1:] != -100).sum() for p in parts]).to(self.accelerator.device)
        counts = self.accelerator.gather(counts[None]).sum(0).double()
        if counts.sum() == 0:
            return
        for key in keys:
            values = torch.tensor(metrics[key][-len(parts) :], dtype=torch.float64, device=counts.device)
            del metrics[key][-len(parts) :]
            metrics[key].append(float((values * counts).sum() / counts.sum()))


def build_sft_trainer(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    training_args: SFTConfig,
    model_args: ModelConfig,
    train_dataset: Dataset,
    eval_dataset: Dataset | None = None,
    callbacks: list | None = None,
) -> SFTTrainer:
    """:class:`FastslowSFTTrainer` (trl's SFTTrainer), with a LoRA adapter when ``model_args.use_peft`` is set.

    Training stops with an error on a non-finite loss or gradient (:class:`train.core.guards.FiniteTrainingGuard`)
    instead of training on to NaN weights.
    """
    return FastslowSFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
        callbacks=[*(callbacks or []), FiniteTrainingGuard()],
    )


def save_trained(trainer: SFTTrainer, output_dir: str | Path, merge_lora: bool = True) -> Path:
    """Save the trained model and tokenizer (and the trainer's state, ``trainer_state.json`` in its ``output_dir``); a
    LoRA run also gets ``merged/``, a full loadable model.

    Returns the folder downstream stages should load (the merged one for LoRA). A model with NaN/inf weights is
    refused (:class:`train.core.guards.NonFiniteError`): nothing is saved. Every process must call it: the save is
    ``trainer.save_model``, which gathers a ZeRO-3 or FSDP-sharded model's state dict. The merged model is built by
    the main process from the saved files (the adapter streamed into its base folder,
    :func:`train.merging.merge_lora`), never from the in-memory model, whose parameters may be shards.
    """
    output_dir = Path(output_dir)
    check_finite_model(trainer.model, str(output_dir))
    trainer.save_model(str(output_dir))
    # trainer_state.json (the log history the report plots) also when no checkpoint was saved (save_strategy: no).
    trainer.save_state()
    if not (hasattr(trainer.model, "merge_and_unload") and merge_lora):
        return output_dir
    merged_dir = output_dir / "merged"
    if trainer.accelerator.is_main_process:
        merge_saved_adapter(output_dir, merged_dir)
        logger.info("saved the LoRA-merged model to %s", merged_dir)
    trainer.accelerator.wait_for_everyone()
    return merged_dir


def merge_saved_adapter(adapter_dir: str | Path, out_dir: str | Path) -> Path:
    """The full model of a saved LoRA adapter folder (its base is the local folder the adapter names), streamed."""
    if not is_adapter(adapter_dir):
        raise DataError(f"{adapter_dir}: no adapter_config.json to merge (was the LoRA adapter saved there?)")
    return merge_lora(resolve_adapter_base(adapter_dir), adapter_dir, out_dir, overwrite=True, show_progress=False)
