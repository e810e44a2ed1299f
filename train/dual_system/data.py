"""The phase data of the dual-system recipe: which prompts each phase sees, and the mixes it trains on.

* **Prompt split** (:func:`split_prompts`): a ``phase2_holdout`` share of the fusion prompts and the
  ``phase2_files`` prompts are kept out of phase 1 (in every mode, replay and fast-pool rows included), so the
  phase-1 model labels prompts for phase 2 that it has not memorised; ``phase2_seen_buckets`` are exempt.
* **Phase 1** (:func:`phase1_dataset`): explicit-tag fusion records, slow replay rows and fast-pool rows.
* **Phase 2** (:func:`phase2_dataset`): ``/auto_think`` rows mixed across difficulty buckets by measured error,
  fast-pool rows (also as ``/auto_think`` for the buckets labelled fast) and explicit-tag rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from datasets import Dataset

from train.core.configs import SFTConfig
from train.core.data import DataError, base_id, load_records, mix
from train.core.modes import Mode, ThinkFormat, tagged, untagged
from train.dual_system.config import DualSystemConfig
from train.dual_system.fusion import difficulty_mix, merge_prompts, record_bucket, reply_mode
from train.sft import sft_dataset

logger = logging.getLogger(__name__)

EXPLICIT_TAGS = ("no_think", "think", "none")


# ----------------------------------------------------------------------------------------------- prompt split


def split_holdout(rows: list[dict], share: float, seen: Sequence[str] = ()) -> tuple[list[dict], list[dict]]:
    """(phase-1 rows, held-out rows): whole prompts, chosen by a hash of their id (stable across runs).

    Prompts of the ``seen`` difficulty buckets are never held out.
    """
    if share <= 0:
        return rows, []

    def held(r: dict) -> bool:
        hashed = int(hashlib.sha1(base_id(r).encode()).hexdigest(), 16) % 10_000 < share * 10_000
        return hashed and record_bucket(r) not in seen

    return [r for r in rows if not held(r)], [r for r in rows if held(r)]


def in_buckets(rows: Sequence[dict], buckets: Sequence[str]) -> list[dict]:
    """The rows of the given difficulty buckets."""
    return [r for r in rows if record_bucket(r) in buckets]


def prompt_key(prompt: Any) -> str:
    """A prompt without its mode tag, as text: the same problem asked in any mode gives the same key."""
    return json.dumps(untagged(prompt), sort_keys=True)


def without_prompts(rows: list[dict], held: list[dict]) -> list[dict]:
    """``rows`` minus those asking a prompt of ``held`` (in any mode, matched by id or by untagged prompt)."""
    if not held:
        return rows
    rid = lambda r: base_id(r) if r.get("id") is not None else None  # noqa: E731
    ids, keys = {rid(r) for r in held} - {None}, {prompt_key(r["prompt"]) for r in held}
    return [r for r in rows if rid(r) not in ids and prompt_key(r["prompt"]) not in keys]


def phase2_prompts(args: DualSystemConfig) -> list[dict]:
    """The ``phase2_files`` prompts (one record per prompt, tags removed), when phase 2 relabels; else none."""
    if not args.phase2_files or not args.relabel_before_phase2 or not args.phase2_steps:
        return []
    return merge_prompts([r for f in args.phase2_files for r in load_records(f).to_list()])


@dataclass
class PromptSplit:
    """Which fusion rows train in phase 1, and which prompts the phase-1 model labels again for phase 2."""

    phase1: list[dict]  # the fusion rows phase 1 trains on
    held: list[dict]  # prompts no phase-1 row may ask (held-out fusion rows, phase2_files outside the seen buckets)
    to_label: list[dict]  # fusion rows labelled again for phase 2 (none: the phase-1 rows are)
    extra: list[dict]  # the phase2_files prompts, labelled for phase 2 with them

    @property
    def labelled(self) -> list[dict]:
        """The fusion rows the phase-1 model labels for phase 2."""
        return self.to_label or self.phase1


def split_prompts(rows: list[dict], args: DualSystemConfig) -> PromptSplit:
    """The phase-1 rows, and the prompts held out of phase 1 for phase-2 labelling (see :class:`PromptSplit`)."""
    seen = args.phase2_seen_buckets
    rows, holdout = split_holdout(rows, args.phase2_holdout if args.relabel_before_phase2 else 0.0, seen)
    extra = phase2_prompts(args)
    kept_out = [r for r in extra if record_bucket(r) not in seen]
    if kept_out:  # phase-2 prompts never reach phase 1, in any mode (but those of the seen buckets)
        rows = without_prompts(rows, kept_out)
    # Prompts of the seen buckets train in phase 1 and are labelled again for phase 2 with the held-out ones.
    to_label = holdout + without_prompts(in_buckets(rows, seen), extra) if holdout else []
    return PromptSplit(phase1=rows, held=holdout + kept_out, to_label=to_label, extra=extra)


def with_phase2_labels(fresh: list[dict], rows: list[dict], held: list[dict]) -> list[dict]:
    """The phase-2 rows: the relabelled records, plus, when prompts were held out, the phase-1 explicit-tag rows
    of the prompts not relabelled."""
    if not held:
        return fresh
    relabelled = {base_id(r) for r in fresh}
    return fresh + [r for r in rows if r.get("fusion_tag") in EXPLICIT_TAGS and base_id(r) not in relabelled]


# -------------------------------------------------------------------------------------------------- fast pool


def fast_pool(args: DualSystemConfig, think: ThinkFormat, held: Sequence[dict] = ()) -> list[dict]:
    """The ``fast_files`` rows as ``/no_think`` records: fast replies (in ``think``'s format) only, prompts in
    ``held`` left out."""
    rows = [
        {**r, "prompt": tagged(r["prompt"], Mode.FAST)}
        for f in args.fast_files
        for r in load_records(f).to_list()
        if reply_mode(r.get("response") or "", think) == "fast"
    ]
    kept = without_prompts(rows, list(held))
    if len(kept) < len(rows):
        logger.info("fast_files: %d rows dropped (prompts held out for phase-2 labelling)", len(rows) - len(kept))
    if not kept:
        raise DataError(f"fast_files {args.fast_files}: no fast replies (an empty think block, then the answer)")
    return kept


def fast_buckets(auto: Sequence[dict], min_fast: float) -> set[str]:
    """Difficulty buckets (not ``unknown``) where at least ``min_fast`` of the labelled prompts are labelled fast."""
    counts: dict[str, list[int]] = {}
    for r in auto:
        c = counts.setdefault(record_bucket(r), [0, 0])
        c[0] += r.get("label") == "fast"
        c[1] += 1
    return {b for b, (fast, n) in counts.items() if b != "unknown" and n and fast / n >= min_fast}


def auto_pool(args: DualSystemConfig, auto: Sequence[dict], think: ThinkFormat) -> list[dict]:
    """Fast-pool rows as ``/auto_think`` records (fast reply target) from the buckets the labels call fast."""
    buckets = fast_buckets(auto, args.phase2_auto_pool_min_fast)
    rows = [
        {**r, "prompt": tagged(r["prompt"], Mode.AUTO)}
        for r in fast_pool(args, think)
        if r.get("difficulty") is not None and record_bucket(r) in buckets
    ]
    logger.info("auto pool: %d fast-pool rows as /auto_think from buckets %s", len(rows), sorted(buckets))
    return rows


# ----------------------------------------------------------------------------------------------------- mixes


def rows_per_phase(args: DualSystemConfig, training_args: SFTConfig, steps: int) -> int:
    """``phase_rows``, else the rows ``steps`` optimizer steps consume on every process."""
    if args.phase_rows:
        return args.phase_rows
    world = max(1, training_args.world_size)
    return steps * training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps * world


def _dataset(rows: list[dict], where: str) -> Dataset:
    if not rows:
        raise DataError(f"{where}: no rows")
    return sft_dataset(Dataset.from_list([{"prompt": r["prompt"], "response": r["response"]} for r in rows]), where)


def _explicit(rows: list[dict], where: str) -> Dataset:
    return _dataset([r for r in rows if r.get("fusion_tag") in EXPLICIT_TAGS], where)


def phase1_dataset(
    rows: list[dict], args: DualSystemConfig, size: int, seed: int, *, think: ThinkFormat, held: Sequence[dict] = ()
) -> Dataset:
    """Explicit-tag records (``/no_think``, ``/think``, untagged) plus the slow replay and fast pool shares.

    Replay and fast-pool rows asking a prompt of ``held`` (the phase-2 labelling prompts) are left out.
    """
    datasets, shares = [_explicit(rows, "fusion data (explicit tags)")], [1.0]
    if args.replay_files and args.phase1_slow_replay > 0:
        replay = without_prompts([r for f in args.replay_files for r in load_records(f).to_list()], list(held))
        datasets.append(_dataset(replay, "replay_files"))
        shares.append(args.phase1_slow_replay)
    if args.fast_files and args.phase1_fast_share > 0:
        datasets.append(_dataset(fast_pool(args, think, held), "fast_files"))
        shares.append(args.phase1_fast_share)
    shares[0] = 1.0 - sum(shares[1:])
    return mix(datasets, shares, size=size, seed=seed)


def _auto_mix(auto: list[dict], weights: dict[str, float], size: int, seed: int) -> Dataset:
    """``size`` ``/auto_think`` rows drawn from the difficulty buckets with ``weights``."""
    parts = [_dataset([r for r in auto if record_bucket(r) == b], f"auto bucket {b}") for b in weights]
    return mix(parts, list(weights.values()), size=size, seed=seed)


def phase2_dataset(
    rows: list[dict], args: DualSystemConfig, size: int, seed: int, *, think: ThinkFormat
) -> tuple[Dataset, dict[str, float]]:
    """``/auto_think`` rows mixed across difficulty buckets by measured error, fast-pool rows and explicit tags.

    With ``phase2_auto_pool_share``, fast-pool rows of the fast-labelled buckets are also asked as ``/auto_think``.
    Returns the data set and the difficulty-bucket weights of its ``/auto_think`` fusion rows.
    """
    auto = [r for r in rows if r.get("fusion_tag") == "auto_think"]
    weights = difficulty_mix(auto, args.phase2_mix_floor)
    auto_size = round(size * args.phase2_auto_share)
    fast_share = args.phase2_fast_share if args.fast_files else 0.0
    datasets, shares = [], []
    if auto_size:
        datasets.append(_auto_mix(auto, weights, auto_size, seed))
        shares.append(args.phase2_auto_share)
    if fast_share > 0:
        datasets.append(_dataset(fast_pool(args, think), "fast_files"))
        shares.append(fast_share)
    pooled = auto_pool(args, auto, think) if args.fast_files and args.phase2_auto_pool_share > 0 else []
    pool_share = args.phase2_auto_pool_share if pooled else 0.0
    if pooled:
        datasets.append(_dataset(pooled, "fast_files as /auto_think"))
        shares.append(pool_share)
    rest = 1.0 - args.phase2_auto_share - fast_share - pool_share
    if rest > 1e-9:  # the rest of the rows: explicit tags, so phase 2 keeps the fast and slow modes
        datasets.append(_explicit(rows, "fusion data"))
        shares.append(rest)
    return mix(datasets, shares, size=size, seed=seed), weights
