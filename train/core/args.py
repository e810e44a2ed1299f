"""Options every training recipe shares, declared once so that their keys and help stay in step.

* :class:`ModelFormatArguments`: the think-delimiter override and how a LoRA run is saved (SFT, GRPO, distillation,
  the dual system);
* :class:`DataArguments`: training and held-out record files, their size limit and the non-finite weights switch
  (SFT, GRPO), a data set by name with its preset and column mapping (:class:`train.core.sources.DatasetArguments`),
  plus the above.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from train.core.data import MAX_RECORD_BYTES
from train.core.sources import DatasetArguments


@dataclass
class ModelFormatArguments:
    """How the run's model writes its replies and how a LoRA run is saved.

    ``think_start``/``think_end`` are the user's override of the think delimiters: the tokenizer loader
    (:func:`train.core.loading.load_tokenizer`) resolves them once against the tokenizer's own, and the run then
    reads its one :class:`train.core.modes.ThinkFormat` from the tokenizer (``ThinkFormat.from_tokenizer``).
    Recipe configs inherit this class instead of declaring the three keys again.
    """

    think_start: str | None = field(
        default=None,
        metadata={
            "help": "Think-block opening tag (default: the tokenizer's, else `<think>`; openPangu: [unused16])."
        },
    )
    think_end: str | None = field(default=None, metadata={"help": "Think-block closing tag (openPangu: [unused17])."})
    merge_lora: bool = field(
        default=True,
        metadata={"help": "With LoRA, also save the adapter merged into its base under `merged/` (what loads next)."},
    )


@dataclass
class DataArguments(DatasetArguments, ModelFormatArguments):
    """Training records (files and/or a data set by name), held-out records, the think delimiters, and how a LoRA
    run is saved."""

    train_files: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Record files (JSONL, JSON, CSV, Parquet) or hub names in fastslow's schema (train/core/data.py): "
            "SFT needs a `response`; GRPO reads prompt/task/answer/tests. Other schemas: dataset_name with a "
            "dataset_preset (docs/data.md)."
        },
    )
    train_weights: list[float] | None = field(
        default=None, metadata={"help": "Mixture weights, one per train file (default: concatenate)."}
    )
    eval_file: str | None = field(
        default=None,
        metadata={"help": "Held-out records: the eval loss for SFT, the same rewards for GRPO."},
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use at most this many training rows."})
    max_record_bytes: int | None = field(
        default=MAX_RECORD_BYTES,
        metadata={
            "help": "Refuse a record whose text (UTF-8, code tests aside) is larger than this, naming its file and "
            "row (default 1 MiB: one runaway row stalls tokenisation); null: no limit."
        },
    )
    allow_nonfinite_weights: bool = field(
        default=False,
        metadata={"help": "Load a checkpoint with NaN/inf weights (refused by default, naming the tensor)."},
    )
