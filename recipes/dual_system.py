"""Stage 2: the dual-system recipe. One model, three modes: /no_think, /think (the default) and /auto_think.

    accelerate launch --config_file recipes/accelerate/cpu.yaml recipes/dual_system.py \\
        --config recipes/configs/tiny/dual_system.yaml

1. **Fusion data** (:mod:`train.dual_system.fusion`): the starting model's pass rates in fast and slow mode label
   every prompt
   fast or slow; targets are the shortest correct replies; each prompt gives ``/no_think``, ``/think``, untagged
   and ``/auto_think`` records. Built once on the main process (the others wait), resumable, or read from
   ``fusion_file``.
2. **Phase 1, explicit tags**: ``/no_think``, ``/think`` and untagged records, with a ``phase1_slow_replay`` share of
   slow-mode replay rows (``replay_files``, e.g. the Stage-1 SFT data) so slow reasoning is not forgotten.
3. **Phase 2, auto mode**: with ``relabel_before_phase2`` the phase-1 model, which now knows the tags, labels the
   prompts again (its own fast answers become fast targets where correct); ``/auto_think`` records make up
   ``phase2_auto_share`` of the rows, the rest are explicit tags; the ``/auto_think`` rows are mixed across
   difficulty buckets with weights from the measured pass rates (:func:`train.dual_system.fusion.difficulty_mix`:
   buckets the
   model still gets wrong in their labelled mode get more rows).
4. **Optional RL for the mode choice** (``rl_steps > 0``): GRPO on ``/auto_think`` prompts, half fast-labelled and
   half slow-labelled, with the AdaptThink-style ``mode_choice`` reward (:mod:`rewards.mode_choice`).

Assistant-only loss, full fine-tuning or LoRA (``use_peft``). Each phase saves its model under
``<output_dir>/phase1``, ``phase2`` (and ``rl``); a re-run skips the phases already saved and resumes an
interrupted phase from its last checkpoint (with ``save_strategy: steps``). The final model is saved
to ``output_dir`` (merged, for LoRA, under ``output_dir/merged``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import Dataset
from transformers.trainer_utils import get_last_checkpoint
from trl import ModelConfig

from train.core.cli import parse_args, setup_logging
from train.core.configs import SFTConfig
from train.core.data import DataError, load_records, mix, read_records
from train.core.modes import Mode, apply_mode
from train.dual_system.fusion import (
    FusionBuildConfig,
    build_fusion,
    difficulty_bucket,
    difficulty_mix,
    merge_prompts,
    prompts_of_fusion,
    record_bucket,
    reply_mode,
)
from train.sft import build_sft_trainer, load_for_training, save_trained, sft_dataset

logger = logging.getLogger("recipes.dual_system")

EXPLICIT_TAGS = ("no_think", "think", "none")
DONE = "phase_done.json"


@dataclass
class DualSystemConfig(FusionBuildConfig):
    """Data, fusion-labelling, phase and RL options of the dual-system recipe (training options: ``SFTConfig``)."""

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
    think_start: str | None = field(
        default=None,
        metadata={"help": "Think-block opening tag (default: the tokenizer's, else `<think>`; openPangu [unused16])."},
    )
    think_end: str | None = field(default=None, metadata={"help": "Think-block closing tag (openPangu: [unused17])."})
    merge_lora: bool = field(
        default=True, metadata={"help": "With LoRA, also save the adapter merged into its base under `merged/`."}
    )

    def __post_init__(self) -> None:
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
        self.phase2_seen_buckets = [_bucket_name(b) for b in self.phase2_seen_buckets]
        if not 0.0 <= self.phase2_auto_pool_min_fast <= 1.0:
            raise ValueError(f"phase2_auto_pool_min_fast={self.phase2_auto_pool_min_fast} must be in [0, 1]")
        if self.phase1_slow_replay > 0 and not self.replay_files:
            logger.info("phase1_slow_replay=%s without replay_files: no replay", self.phase1_slow_replay)
        if (self.phase1_fast_share > 0 or self.phase2_fast_share > 0) and not self.fast_files:
            logger.info("phase1/phase2_fast_share without fast_files: no fast pool rows")


def _bucket_name(bucket: Any) -> str:
    """A bucket as :func:`train.dual_system.fusion.bucket_of` names it: numbers as difficulties, the rest
    (``"c0"``) as given."""
    try:
        return difficulty_bucket(float(bucket))
    except (TypeError, ValueError):
        return str(bucket)


# ------------------------------------------------------------------------------------------------------- data


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
            from accelerate import PartialState

            model.to(PartialState().device)
            build_fusion(model, tokenizer, records, args, out)
    return read_records(out / "fusion.jsonl", validate=False)


def relabel(
    args: DualSystemConfig,
    training_args: SFTConfig,
    model: Any,
    tokenizer: Any,
    rows: list[dict],
    extra: Sequence[dict] = (),
) -> list:
    """Fusion records labelled again by the current (phase-1) model, sampling with the mode tags it has learned.

    ``extra``: more prompt records (``phase2_files``) labelled with them.
    """
    out = Path(training_args.output_dir) / "fusion_phase2"
    with training_args.main_process_first(desc="phase-2 fusion data", local=False):
        if not (out / "fusion.jsonl").exists():
            config = dataclasses.replace(args, sample_tags=True)
            build_fusion(model, tokenizer, prompts_of_fusion(rows) + list(extra), config, out)
    return read_records(out / "fusion.jsonl", validate=False)


def with_phase2_labels(fresh: list[dict], rows: list[dict], held: list[dict]) -> list[dict]:
    """The phase-2 rows: the relabelled records, plus, when prompts were held out, the phase-1 explicit-tag rows
    of the prompts not relabelled."""
    if not held:
        return fresh
    relabelled = {base_id(r) for r in fresh}
    return fresh + [r for r in rows if r.get("fusion_tag") in EXPLICIT_TAGS and base_id(r) not in relabelled]


def base_id(row: dict) -> str:
    """The prompt id of a fusion record (its id without the ``-<tag>`` suffix)."""
    tag, rid = row.get("fusion_tag"), str(row["id"])
    return rid[: -len(tag) - 1] if tag and rid.endswith(f"-{tag}") else rid


def phase2_prompts(args: DualSystemConfig) -> list[dict]:
    """The ``phase2_files`` prompts (one record per prompt, tags removed), when phase 2 relabels; else none."""
    if not args.phase2_files or not args.relabel_before_phase2 or not args.phase2_steps:
        return []
    return merge_prompts([r for f in args.phase2_files for r in load_records(f).to_list()])


def split_holdout(rows: list[dict], share: float, seen: Sequence[str] = ()) -> tuple[list[dict], list[dict]]:
    """(phase-1 rows, held-out rows): whole prompts, chosen by a hash of their id (stable across runs).

    Prompts of the ``seen`` difficulty buckets are never held out.
    """
    if share <= 0:
        return rows, []
    import hashlib

    def held(r: dict) -> bool:
        hashed = int(hashlib.sha1(base_id(r).encode()).hexdigest(), 16) % 10_000 < share * 10_000
        return hashed and record_bucket(r) not in seen

    return [r for r in rows if not held(r)], [r for r in rows if held(r)]


def in_buckets(rows: Sequence[dict], buckets: Sequence[str]) -> list[dict]:
    """The rows of the given difficulty buckets."""
    return [r for r in rows if record_bucket(r) in buckets]


def rows_per_phase(args: DualSystemConfig, training_args: SFTConfig, steps: int) -> int:
    if args.phase_rows:
        return args.phase_rows
    world = max(1, training_args.world_size)
    return steps * training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps * world


def _dataset(rows: list[dict], where: str) -> Dataset:
    if not rows:
        raise DataError(f"{where}: no rows")
    return sft_dataset(Dataset.from_list([{"prompt": r["prompt"], "response": r["response"]} for r in rows]), where)


def prompt_key(prompt: Any) -> str:
    """A prompt without its mode tag, as text: the same problem asked in any mode gives the same key."""
    messages = apply_mode(prompt, None)
    return json.dumps(messages[-1]["content"] if isinstance(prompt, str) else messages, sort_keys=True)


def without_prompts(rows: list[dict], held: list[dict]) -> list[dict]:
    """``rows`` minus those asking a prompt of ``held`` (in any mode, matched by id or by untagged prompt)."""
    if not held:
        return rows
    rid = lambda r: base_id(r) if r.get("id") is not None else None  # noqa: E731
    ids, keys = {rid(r) for r in held} - {None}, {prompt_key(r["prompt"]) for r in held}
    return [r for r in rows if rid(r) not in ids and prompt_key(r["prompt"]) not in keys]


def fast_pool(args: DualSystemConfig, held: Sequence[dict] = ()) -> list[dict]:
    """The ``fast_files`` rows as ``/no_think`` records: fast replies only, prompts in ``held`` left out."""
    rows = []
    for f in args.fast_files:
        for r in load_records(f).to_list():
            if reply_mode(r.get("response") or "", *_delimiters(args)) == "fast":
                rows.append({**r, "prompt": _tagged(r["prompt"], Mode.FAST)})
    kept = without_prompts(rows, list(held))
    if len(kept) < len(rows):
        logger.info("fast_files: %d rows dropped (prompts held out for phase-2 labelling)", len(rows) - len(kept))
    if not kept:
        raise DataError(f"fast_files {args.fast_files}: no fast replies (an empty think block, then the answer)")
    return kept


def _delimiters(args: DualSystemConfig) -> tuple[str, str]:
    from train.core.modes import DEFAULT_THINK_END, DEFAULT_THINK_START

    return args.think_start or DEFAULT_THINK_START, args.think_end or DEFAULT_THINK_END


def _tagged(prompt: Any, mode: Mode) -> Any:
    messages = apply_mode(prompt, mode)
    return messages[-1]["content"] if isinstance(prompt, str) else messages


def phase1_dataset(
    rows: list[dict], args: DualSystemConfig, size: int, seed: int, held: Sequence[dict] = ()
) -> Dataset:
    """Explicit-tag records (``/no_think``, ``/think``, untagged) plus the slow replay and fast pool shares.

    Replay and fast-pool rows asking a prompt of ``held`` (the phase-2 labelling prompts) are left out.
    """
    explicit = _dataset([r for r in rows if r.get("fusion_tag") in EXPLICIT_TAGS], "fusion data (explicit tags)")
    datasets, shares = [explicit], [1.0]
    if args.replay_files and args.phase1_slow_replay > 0:
        replay = without_prompts([r for f in args.replay_files for r in load_records(f).to_list()], list(held))
        datasets.append(_dataset(replay, "replay_files"))
        shares.append(args.phase1_slow_replay)
    if args.fast_files and args.phase1_fast_share > 0:
        datasets.append(_dataset(fast_pool(args, held), "fast_files"))
        shares.append(args.phase1_fast_share)
    shares[0] = 1.0 - sum(shares[1:])
    return mix(datasets, shares, size=size, seed=seed)


def fast_buckets(auto: Sequence[dict], min_fast: float) -> set[str]:
    """Difficulty buckets (not ``unknown``) where at least ``min_fast`` of the labelled prompts are labelled fast."""
    counts: dict[str, list[int]] = {}
    for r in auto:
        c = counts.setdefault(record_bucket(r), [0, 0])
        c[0] += r.get("label") == "fast"
        c[1] += 1
    return {b for b, (fast, n) in counts.items() if b != "unknown" and n and fast / n >= min_fast}


def auto_pool(args: DualSystemConfig, auto: Sequence[dict]) -> list[dict]:
    """Fast-pool rows as ``/auto_think`` records (fast reply target) from the buckets the labels call fast."""
    buckets = fast_buckets(auto, args.phase2_auto_pool_min_fast)
    rows = [
        {**r, "prompt": _tagged(r["prompt"], Mode.AUTO)}
        for r in fast_pool(args)
        if r.get("difficulty") is not None and record_bucket(r) in buckets
    ]
    logger.info("auto pool: %d fast-pool rows as /auto_think from buckets %s", len(rows), sorted(buckets))
    return rows


def phase2_dataset(rows: list[dict], args: DualSystemConfig, size: int, seed: int) -> tuple[Dataset, dict]:
    """``/auto_think`` rows mixed across difficulty buckets by measured error, fast-pool rows and explicit tags.

    With ``phase2_auto_pool_share``, fast-pool rows of the fast-labelled buckets are also asked as ``/auto_think``.
    """
    auto = [r for r in rows if r.get("fusion_tag") == "auto_think"]
    weights = difficulty_mix(auto, args.phase2_mix_floor)
    buckets = list(weights)
    parts = [_dataset([r for r in auto if record_bucket(r) == b], f"auto bucket {b}") for b in buckets]
    auto_size = round(size * args.phase2_auto_share)
    datasets, shares = [], []
    if auto_size:
        datasets.append(mix(parts, [weights[b] for b in buckets], size=auto_size, seed=seed))
        shares.append(args.phase2_auto_share)
    fast_share = args.phase2_fast_share if args.fast_files else 0.0
    if fast_share > 0:
        datasets.append(_dataset(fast_pool(args), "fast_files"))
        shares.append(fast_share)
    pool_share = 0.0
    if args.fast_files and args.phase2_auto_pool_share > 0:
        pooled = auto_pool(args, auto)
        if pooled:
            pool_share = args.phase2_auto_pool_share
            datasets.append(_dataset(pooled, "fast_files as /auto_think"))
            shares.append(pool_share)
    if args.phase2_auto_share + fast_share + pool_share < 1.0 - 1e-9:
        datasets.append(_dataset([r for r in rows if r.get("fusion_tag") in EXPLICIT_TAGS], "fusion data"))
        shares.append(1.0 - args.phase2_auto_share - fast_share - pool_share)
    return mix(datasets, shares, size=size, seed=seed), weights


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
    return (path / DONE).exists()


def run_sft_phase(
    name: str,
    model: Any,
    tokenizer: Any,
    dataset: Dataset,
    training_args: SFTConfig,
    model_args: ModelConfig,
    merge_lora: bool,
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
    saved = save_trained(trainer, training_args.output_dir, merge_lora=False)
    if trainer.accelerator.is_main_process:
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        info = {
            **info,
            "rows": len(dataset),
            "steps": trainer.state.global_step,
            "losses": losses,
            "model": str(saved),
        }
        (Path(training_args.output_dir) / DONE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return trainer.model


def load_phase(path: Path, model_args: ModelConfig, args: DualSystemConfig) -> tuple[Any, Any]:
    """Reload a saved phase (full model, or base + adapter for LoRA) to resume after it."""
    if model_args.use_peft:
        from peft import PeftModel

        model, tokenizer = load_for_training(model_args, args.think_start, args.think_end)
        return PeftModel.from_pretrained(model, str(path), is_trainable=True), tokenizer
    return load_for_training(
        dataclasses.replace(model_args, model_name_or_path=str(path)), args.think_start, args.think_end
    )


# ----------------------------------------------------------------------------------------------------------- RL


def rl_dataset(rows: list[dict], seed: int = 0) -> Dataset:
    """``/auto_think`` prompts, as many fast-labelled as slow-labelled (groups balanced between modes)."""
    from train.core.data import to_messages

    auto = [r for r in rows if r.get("fusion_tag") == "auto_think"]
    by_label = {lab: [r for r in auto if r.get("label") == lab] for lab in ("fast", "slow")}
    n = min(len(v) for v in by_label.values())
    if n == 0:
        logger.warning(
            "RL: one label has no prompts (%s); using all auto prompts unbalanced",
            {k: len(v) for k, v in by_label.items()},
        )
        chosen = auto
    else:
        import random

        rng = random.Random(seed)
        chosen = [r for v in by_label.values() for r in rng.sample(v, n)]
    keep = ("task", "answer", "tests", "slow_rate", "label")
    return Dataset.from_list(
        [{"prompt": to_messages(r["prompt"]), **{k: r.get(k) for k in keep}} for r in chosen]
    ).shuffle(seed=seed)


def run_rl(model: Any, tokenizer: Any, rows: list[dict], args: DualSystemConfig, training_args: SFTConfig) -> Any:
    """GRPO on the mode choice with the ``mode_choice`` reward; returns the trained model."""
    from trl import GRPOTrainer

    from rewards.mode_choice import ModeChoiceReward
    from train.core.configs import GRPOConfig
    from train.core.modes import think_delimiters

    ts, te = think_delimiters(tokenizer)
    reward = ModeChoiceReward(delta=args.rl_delta, margin=args.rl_margin, think_start=ts, think_end=te)
    grpo_args = GRPOConfig(
        output_dir=str(Path(training_args.output_dir) / "rl"),
        max_steps=args.rl_steps,
        learning_rate=args.rl_learning_rate,
        per_device_train_batch_size=args.rl_batch_size,
        num_generations=args.rl_num_generations,
        max_completion_length=args.rl_max_completion_length,
        temperature=args.rl_temperature,
        logging_steps=max(1, min(10, args.rl_steps)),
        save_strategy="no",
        report_to=training_args.report_to,
        seed=training_args.seed,
        use_cpu=training_args.use_cpu,
        bf16=training_args.bf16,
        gradient_checkpointing=training_args.gradient_checkpointing,
        disable_tqdm=training_args.disable_tqdm,
    )
    trainer = GRPOTrainer(
        model=model, reward_funcs=[reward], args=grpo_args, train_dataset=rl_dataset(rows), processing_class=tokenizer
    )
    trainer.train()
    trainer.save_model(grpo_args.output_dir)
    if trainer.accelerator.is_main_process:
        info = {"steps": trainer.state.global_step, "log": trainer.state.log_history}
        (Path(grpo_args.output_dir) / DONE).write_text(json.dumps(info, indent=2, default=str) + "\n")
    return trainer.model


# ------------------------------------------------------------------------------------------------------- main


# The config dataclasses, in the order TrlParser fills them (also read by the config-validation test).
ARG_CLASSES = (DualSystemConfig, SFTConfig, ModelConfig)


def main(argv: list[str] | None = None) -> Path:
    args, training_args, model_args = parse_args(ARG_CLASSES, argv)
    setup_logging(training_args.get_process_log_level())
    out = Path(training_args.output_dir)

    # 1. The starting model labels the prompts: fusion data (built once, on the main process).
    model, tokenizer = load_for_training(model_args, args.think_start, args.think_end)
    rows = fusion_rows(args, training_args, model, tokenizer)
    logger.info("fusion data: %d records", len(rows))
    later_args = dataclasses.replace(model_args, use_peft=False)  # a PeftModel is not wrapped twice

    # 2. Phase 1: explicit tags with slow replay (held-out prompts wait for phase 2).
    seen = args.phase2_seen_buckets
    rows, holdout = split_holdout(rows, args.phase2_holdout if args.relabel_before_phase2 else 0.0, seen)
    extra = phase2_prompts(args)
    kept_out = [r for r in extra if record_bucket(r) not in seen]
    if kept_out:  # phase-2 prompts never reach phase 1, in any mode (but those of the seen buckets)
        rows = without_prompts(rows, kept_out)
    # Prompts of the seen buckets train in phase 1 and are labelled again for phase 2 with the held-out ones.
    to_label = holdout + without_prompts(in_buckets(rows, seen), extra) if holdout else []
    p1 = phase_args(training_args, "phase1", args.phase1_steps)
    if args.phase1_steps and phase_done(Path(p1.output_dir)):
        logger.info("phase 1 already done: loading %s", p1.output_dir)
        model, tokenizer = load_phase(Path(p1.output_dir), model_args, args)
        model_args = later_args
    elif args.phase1_steps:
        size = rows_per_phase(args, training_args, args.phase1_steps)
        data = phase1_dataset(rows, args, size, training_args.seed, held=holdout + kept_out)
        model = run_sft_phase("phase 1", model, tokenizer, data, p1, model_args, args.merge_lora, {"phase": 1})
        model_args = later_args

    # 3. Phase 2: /auto_think emphasis, difficulty mix from the measured pass rates.
    p2 = phase_args(training_args, "phase2", args.phase2_steps, args.phase2_learning_rate)
    if args.phase2_steps and phase_done(Path(p2.output_dir)):
        logger.info("phase 2 already done: loading %s", p2.output_dir)
        model, tokenizer = load_phase(Path(p2.output_dir), model_args, args)
        labelled = out / "fusion_phase2" / "fusion.jsonl"
        if args.relabel_before_phase2 and labelled.exists():  # the RL phase uses the phase-2 labels too
            rows = with_phase2_labels(read_records(labelled, validate=False), rows, to_label)
    elif args.phase2_steps:
        if args.relabel_before_phase2:
            fresh = relabel(args, training_args, model, tokenizer, to_label or rows, extra)
            rows = with_phase2_labels(fresh, rows, to_label)
            logger.info("phase-2 fusion data (labelled by the phase-1 model): %d records", len(rows))
        data, weights = phase2_dataset(
            rows, args, rows_per_phase(args, training_args, args.phase2_steps), training_args.seed + 1
        )
        logger.info("phase 2 difficulty mix: %s", weights)
        info = {"phase": 2, "difficulty_mix": weights}
        model = run_sft_phase("phase 2", model, tokenizer, data, p2, model_args, args.merge_lora, info)

    # 4. Optional RL for the mode choice.
    if args.rl_steps:
        model = run_rl(model, tokenizer, rows, args, training_args)

    # 5. Save the final model where the next stage (or scripts/evaluate.py) loads it.
    return save_final(model, tokenizer, out, args.merge_lora)


def save_final(model: Any, tokenizer: Any, out: Path, merge_lora: bool) -> Path:
    from accelerate import PartialState

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


if __name__ == "__main__":
    main()
