"""Options of the dual-system recipe: the data, fusion labelling, phases and the mode-choice RL."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from train.core.args import ModelFormatArguments
from train.core.data import difficulty_bucket
from train.core.sources import DatasetArguments
from train.dual_system.fusion import FusionBuildConfig
from train.sampling.sharded import SamplerArguments

logger = logging.getLogger(__name__)


@dataclass
class DualSystemConfig(FusionBuildConfig, ModelFormatArguments, SamplerArguments, DatasetArguments):
    """Data, fusion-labelling, phase and RL options of the dual-system recipe (training options: ``SFTConfig``).

    The sampling and labelling keys come from :class:`~train.dual_system.fusion.FusionBuildConfig`, the think
    delimiters and LoRA saving from :class:`~train.core.args.ModelFormatArguments`, the labelling's sampling backend
    (``sampler_*``: transformers, vLLM per process, or an endpoint) from
    :class:`~train.sampling.sharded.SamplerArguments`, a data set of prompts to label by name (``dataset_name``,
    with its preset and column mapping) from :class:`~train.core.sources.DatasetArguments`.
    """

    train_files: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Prompt records (prompt, task, answer or tests; an optional `response` and `pool` join the "
            "teacher pool of targets) to label with the starting model."
        },
    )
    fusion_file: str | None = field(
        default=None, metadata={"help": "A fusion.jsonl built before (scripts/build_fusion_data.py): skip building."}
    )
    fusion_dir: str | None = field(
        default=None, metadata={"help": "Where the fusion data is built (default: <output_dir>/fusion)."}
    )
    max_prompts: int | None = field(default=None, metadata={"help": "Label at most this many prompts."})
    replay_files: list[str] = field(
        default_factory=list,
        metadata={"help": "Slow-mode SFT records (with `response`) replayed in phase 1; default: none."},
    )
    fast_files: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Fast-mode records (a `response` with an empty think block, e.g. a teacher's direct answers to "
            "many more prompts than are labelled) trained as /no_think rows, so the fast skill is learnt from a "
            "large pool instead of memorised on the labelled prompts. Rows whose reply is not a fast one, and "
            "prompts held out for phase-2 labelling (phase2_holdout), are dropped. Default: none."
        },
    )
    phase1_steps: int = field(default=300, metadata={"help": "Optimizer steps of phase 1 (explicit tags); 0 skips."})
    phase1_slow_replay: float = field(
        default=0.2, metadata={"help": "Share of phase-1 rows drawn from replay_files (needs replay_files)."}
    )
    phase1_fast_share: float = field(
        default=0.0, metadata={"help": "Share of phase-1 rows drawn from fast_files (/no_think; needs fast_files)."}
    )
    relabel_before_phase2: bool = field(
        default=True,
        metadata={
            "help": "Label the prompts again with the phase-1 model (sampling with tags) before phase 2: a slow-only "
            "start model cannot answer fast yet, so its fast pass rates say little about what the model can do."
        },
    )
    phase2_holdout: float = field(
        default=0.0,
        metadata={
            "help": "Share of the prompts kept out of phase 1 and relabelled by the phase-1 model for phase 2, so "
            "the labels come from prompts it has not memorised (0: relabel the phase-1 prompts)."
        },
    )
    phase2_files: list[str] = field(
        default_factory=list,
        metadata={
            "help": "More prompt records labelled only by the phase-1 model for phase 2 (with relabel_before_phase2): "
            "kept out of phase 1 (fusion, replay and fast-pool rows), so the /auto_think rows cover many prompts "
            "with labels the model has not memorised. Default: none."
        },
    )
    phase2_seen_buckets: list[str] = field(
        default_factory=list,
        metadata={
            "help": 'Difficulty buckets (annotated difficulty, e.g. "1") exempt from phase2_holdout and from '
            "keeping phase2_files out of phase 1: their prompts train in phase 1 and are labelled for phase 2 all "
            "the same. For a small closed set of prompts that training and every test cover in full (the "
            "arithmetic world's level 1: 100 one-digit sums), a label from a prompt the model has not seen "
            "understates what it will answer at test time. Default: none."
        },
    )
    phase2_steps: int = field(default=300, metadata={"help": "Optimizer steps of phase 2 (auto mode); 0 skips."})
    phase2_auto_share: float = field(
        default=0.5, metadata={"help": "Share of phase-2 rows that are /auto_think records (the rest: explicit tags)."}
    )
    phase2_fast_share: float = field(
        default=0.0,
        metadata={"help": "Share of phase-2 rows drawn from fast_files (/no_think), so the fast skill is kept."},
    )
    phase2_auto_pool_share: float = field(
        default=0.0,
        metadata={
            "help": "Share of phase-2 rows that are /auto_think copies of fast_files rows (their fast reply as the "
            "target) from the difficulty buckets the phase-2 labels call fast (phase2_auto_pool_min_fast), so "
            "the answer after auto's empty think block is learnt from as many prompts as /no_think's. Pool rows "
            "without a difficulty, or from a bucket with no labelled /auto_think prompt, are not used (no "
            "evidence which mode fits them). 0: off; needs fast_files."
        },
    )
    phase2_auto_pool_min_fast: float = field(
        default=0.5,
        metadata={
            "help": "A difficulty bucket counts as fast for phase2_auto_pool_share when at least this share of its "
            "labelled /auto_think prompts is labelled fast (by the model that labelled the phase-2 prompts)."
        },
    )
    phase2_mix_floor: float = field(
        default=0.2,
        metadata={"help": "Smallest difficulty-bucket weight in the phase-2 auto mix (weights: floor + error rate)."},
    )
    phase2_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of phase 2 (default: learning_rate)."}
    )
    phase_rows: int | None = field(
        default=None,
        metadata={"help": "Rows per phase data set (default: steps x batch size x accumulation x processes)."},
    )
    rl_steps: int = field(default=0, metadata={"help": "GRPO steps for the mode choice after phase 2; 0: no RL."})
    rl_delta: float = field(default=0.3, metadata={"help": "mode_choice bonus of a correct fast reply (< 1)."})
    rl_margin: float = field(
        default=0.0, metadata={"help": "Fast replies may fall this far below the slow reference and keep the bonus."}
    )
    rl_learning_rate: float = field(default=1e-5, metadata={"help": "GRPO learning rate."})
    rl_num_generations: int = field(default=4, metadata={"help": "GRPO completions per prompt (group size)."})
    rl_batch_size: int = field(default=8, metadata={"help": "GRPO completions per device step."})
    rl_max_completion_length: int = field(default=256, metadata={"help": "GRPO completion budget in tokens."})
    rl_temperature: float = field(default=1.0, metadata={"help": "GRPO sampling temperature."})

    def __post_init__(self) -> None:
        DatasetArguments.__post_init__(self)  # the dataclass chain does not call it
        # The checks stay in __post_init__ itself: tests/test_configs.py does not count a read here as a key's use.
        if not 0.0 <= self.phase1_slow_replay < 1.0:
            raise ValueError(f"phase1_slow_replay={self.phase1_slow_replay} must be in [0, 1)")
        if not 0.0 <= self.phase2_auto_share <= 1.0:
            raise ValueError(f"phase2_auto_share={self.phase2_auto_share} must be in [0, 1]")
        if not 0.0 <= self.phase1_fast_share < 1.0 or self.phase1_slow_replay + self.phase1_fast_share >= 1.0:
            raise ValueError(
                f"phase1_fast_share={self.phase1_fast_share} must be in [0, 1) and leave room for the fusion rows "
                f"(phase1_slow_replay + phase1_fast_share < 1)"
            )
        if not 0.0 <= self.phase2_fast_share <= 1.0 or self.phase2_auto_share + self.phase2_fast_share > 1.0:
            raise ValueError(
                f"phase2_fast_share={self.phase2_fast_share} must be in [0, 1] with "
                f"phase2_auto_share + phase2_fast_share <= 1"
            )
        p2_total = self.phase2_auto_share + self.phase2_fast_share + self.phase2_auto_pool_share
        if not 0.0 <= self.phase2_auto_pool_share <= 1.0 or p2_total > 1.0 + 1e-9:
            raise ValueError(
                f"phase2_auto_pool_share={self.phase2_auto_pool_share} must be in [0, 1] with "
                f"phase2_auto_share + phase2_fast_share + phase2_auto_pool_share <= 1"
            )
        # Buckets are strings ("1", "2.5", "c0"); YAML or the command line may give the numbers.
        self.phase2_seen_buckets = [difficulty_bucket(b) for b in self.phase2_seen_buckets]
        if not 0.0 <= self.phase2_auto_pool_min_fast <= 1.0:
            raise ValueError(f"phase2_auto_pool_min_fast={self.phase2_auto_pool_min_fast} must be in [0, 1]")
        if self.phase1_slow_replay > 0 and not self.replay_files:
            logger.info("phase1_slow_replay=%s without replay_files: no replay", self.phase1_slow_replay)
        if (self.phase1_fast_share > 0 or self.phase2_fast_share > 0) and not self.fast_files:
            logger.info("phase1/phase2_fast_share without fast_files: no fast pool rows")
