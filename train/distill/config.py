"""Options of the iterative distillation recipe (``recipes/distill.py``); training options are trl's ``SFTConfig``."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from train.core.args import ModelFormatArguments
from train.core.sources import DatasetArguments
from train.distill.loop import MERGE_METHODS
from train.distill.selection import SelectionConfig
from train.sampling.params import BACKENDS
from train.sampling.sharded import SamplerArguments

SELECTIONS = ("model_aware", "random")


@dataclass
class DistillConfig(SelectionConfig, ModelFormatArguments, SamplerArguments, DatasetArguments):
    """Options of the distillation loop.

    Selection options are inherited from :class:`~train.distill.selection.SelectionConfig`, the think delimiters
    and LoRA saving from :class:`~train.core.args.ModelFormatArguments`, the sampling backend of the pass rates
    and the evaluation (``sampler_*``) from :class:`~train.sampling.sharded.SamplerArguments`, a data set by name
    for the pool (and ``dataset_eval_split`` for the held-out records) from
    :class:`~train.core.sources.DatasetArguments`. Iteration ``t``
    draws its selection with the seed ``selection_seed + t``; ``selection_seed`` is its own key, independent of the
    training ``seed`` (which seeds the complexity sampling and the candidate draw), so two runs can share their data
    and differ in training, or the reverse.
    """

    train_file: str | None = field(
        default=None,
        metadata={
            "help": "Pool of verified teacher data: records with a `response` (scripts/select_data.py verify); "
            "dataset_name adds a data set's rows (a preset with responses, e.g. openr1-math)."
        },
    )
    eval_file: str | None = field(
        default=None,
        metadata={"help": "Held-out records (prompt, answer) for accuracy (or dataset_eval_split of dataset_name)."},
    )
    iterations: int = field(default=2, metadata={"help": "Distillation iterations T."})
    candidates_per_iteration: int | None = field(
        default=None,
        metadata={"help": "Candidates scored per iteration, drawn from the pool (None: the whole unused pool)."},
    )
    fresh_candidates: bool = field(
        default=True, metadata={"help": "Draw candidates only from prompts not selected in an earlier iteration."}
    )
    selection: str = field(
        default="model_aware",
        metadata={
            "help": "`model_aware` (weights from the student's complexity) or `random` (same size, no scoring)."
        },
    )
    complexity_samples: int = field(default=8, metadata={"help": "Replies sampled per prompt to measure pass rates."})
    complexity_temperature: float = field(default=1.0, metadata={"help": "Sampling temperature for pass rates."})
    complexity_backend: str | None = field(
        default=None,
        metadata={
            "help": "Backend of the pass-rate sampling: `transformers`, `vllm`, `endpoint`, or `auto` (vLLM when it "
            "and a GPU exist); None: sampler_backend (which the evaluation uses)."
        },
    )
    complexity_gpu_memory_utilization: float | None = field(
        default=None,
        metadata={
            "help": "vLLM pass rates: share of each process's GPU the engine may take (None: "
            "sampler_gpu_memory_utilization). Training's memory is released before the engine starts."
        },
    )
    mode: str | None = field(
        default=None, metadata={"help": "Mode tag for sampling and evaluation (slow, fast); None keeps the prompts'."}
    )
    max_new_tokens: int = field(default=256, metadata={"help": "Longest sampled or evaluated reply, in tokens."})
    generation_batch_size: int = field(
        default=64, metadata={"help": "Prompts per generate() call, on each process (transformers backend)."}
    )
    merge_method: str = field(
        default="ema", metadata={"help": f"Merge of the new student with the previous model: one of {MERGE_METHODS}."}
    )
    merge_weights: list[float] | None = field(
        default=None, metadata={"help": "[previous, student] weights for linear/task_arithmetic/ties (default .5 .5)."}
    )
    merge_beta: float = field(default=0.5, metadata={"help": "EMA: the weight kept by the previous model."})
    merge_lambda: float = field(default=1.0, metadata={"help": "task_arithmetic/ties: scale of the merged delta."})
    merge_density: float = field(default=1.0, metadata={"help": "ties: share of each delta kept by magnitude."})
    eval_max_samples: int | None = field(default=None, metadata={"help": "Evaluate on at most this many records."})
    hard_min_difficulty: float | None = field(
        default=None, metadata={"help": "Records with difficulty >= this also count towards `accuracy_hard`."}
    )
    track_first_iteration: int = field(
        default=0,
        metadata={"help": "Also evaluate on up to this many of iteration 0's selected prompts (forgetting)."},
    )
    eval_initial: bool = field(default=True, metadata={"help": "Evaluate the starting model (initial_metrics.json)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        DatasetArguments.__post_init__(self)  # not reached through SelectionConfig's __post_init__
        if self.selection not in SELECTIONS:
            raise ValueError(f"selection {self.selection!r}; expected one of {SELECTIONS}")
        if self.merge_method not in MERGE_METHODS:
            raise ValueError(f"merge_method {self.merge_method!r}; expected one of {MERGE_METHODS}")
        if self.complexity_backend not in (None, "auto", *BACKENDS):
            raise ValueError(f"complexity_backend {self.complexity_backend!r}; expected auto or one of {BACKENDS}")
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")

    def selection_config(self, iteration: int) -> SelectionConfig:
        """The selection options of ``iteration``: drawn with ``selection_seed + iteration``; ``random`` selection
        is uniform weights without replay (the same size as model-aware selection, nothing scored)."""
        options = {f.name: getattr(self, f.name) for f in fields(SelectionConfig)}
        options["selection_seed"] = self.selection_seed + iteration
        if self.selection == "random":
            options.update(weighting="uniform", replay_fraction=0.0)
        return SelectionConfig(**options)

    def merge_parameters(self) -> dict[str, float]:
        """The merge method's parameters (:func:`train.distill.loop.merge_models`)."""
        return {"beta": self.merge_beta, "lambda": self.merge_lambda, "density": self.merge_density}
