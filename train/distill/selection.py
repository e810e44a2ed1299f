"""Model-aware complexity and data selection.

The complexity of a prompt *for the current student* is ``1 - pass rate``: the share of ``N`` sampled replies
that fail verification. Prompts the student always solves teach it little; prompts it never solves are mostly
beyond reach; selection favours the middle:

* ``gaussian``: weight ``exp(-(c - centre)^2 / (2 width^2))``;
* ``band``: weight 1 inside ``[lo, hi]``, 0 outside;
* ``uniform``: weight 1 everywhere (random selection, the baseline).

The Gaussian's centre is fixed (``center_rule: fixed``) or adapts to the student (``center_rule: informative``):
the median complexity of the *informative* candidates, those neither always solved nor never solved (``0 < c <
1``), so a weak student, whose informative prompts mostly fail, is given harder ones than a strong student; with
no informative candidate the fixed ``center`` is used.

A target number of examples is drawn by weighted sampling without replacement (Efraimidis-Spirakis keys
``u^(1/w)``), and an optional replay share is drawn uniformly from *mastered* prompts (complexity at most
``mastered_max``), so the student keeps seeing what it already knows.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rewards.verify import check as rule_check
from train.core.modes import ThinkFormat
from train.core.plots import pyplot, save_figure
from train.sampling.base import Sampler, SamplerConfig, make_sampler
from train.sampling.pass_rate import pass_rates

logger = logging.getLogger(__name__)

WEIGHTINGS = ("gaussian", "band", "uniform")
CENTER_RULES = ("fixed", "informative")


def complexity(pass_rate: float) -> float:
    """``1 - pass_rate``; raises on a rate outside [0, 1]."""
    if not 0.0 <= pass_rate <= 1.0:
        raise ValueError(f"pass rate must be in [0, 1], got {pass_rate}")
    return 1.0 - pass_rate


def gaussian_weight(c: float, center: float = 0.5, width: float = 0.2) -> float:
    """``exp(-(c - center)^2 / (2 width^2))``: 1 at the centre, ``exp(-1/2)`` one width away."""
    if width <= 0:
        raise ValueError(f"gaussian width must be > 0, got {width}")
    return math.exp(-((c - center) ** 2) / (2.0 * width**2))


def informative_center(complexities: Sequence[float], default: float = 0.5) -> float:
    """The median of the complexities strictly between 0 and 1 (``default`` when there is none)."""
    inner = sorted(c for c in complexities if 0.0 < c < 1.0)
    if not inner:
        return default
    mid = len(inner) // 2
    return inner[mid] if len(inner) % 2 else (inner[mid - 1] + inner[mid]) / 2.0


def band_weight(c: float, lo: float = 0.25, hi: float = 0.75) -> float:
    """1 for ``lo <= c <= hi``, else 0."""
    if lo > hi:
        raise ValueError(f"band needs lo <= hi, got [{lo}, {hi}]")
    return 1.0 if lo <= c <= hi else 0.0


@dataclass
class SelectionConfig:
    """How prompts are chosen from their complexities."""

    weighting: str = field(default="gaussian", metadata={"help": f"Selection weights: one of {WEIGHTINGS}."})
    center: float = field(default=0.5, metadata={"help": "Gaussian centre in complexity (0 easy, 1 unsolved)."})
    center_rule: str = field(
        default="fixed",
        metadata={
            "help": f"Gaussian centre: one of {CENTER_RULES}; `informative` is the median complexity of the "
            "candidates with 0 < complexity < 1 (`center` when there is none)."
        },
    )
    width: float = field(default=0.2, metadata={"help": "Gaussian standard deviation in complexity."})
    band_lo: float = field(default=0.25, metadata={"help": "Band weighting: lowest complexity kept."})
    band_hi: float = field(default=0.75, metadata={"help": "Band weighting: highest complexity kept."})
    target_size: int | None = field(default=None, metadata={"help": "Examples to select (None: all candidates)."})
    replay_fraction: float = field(
        default=0.0, metadata={"help": "Share of the target drawn uniformly from mastered prompts (replay)."}
    )
    mastered_max: float = field(
        default=0.0, metadata={"help": "A prompt with complexity at most this counts as mastered (replay pool)."}
    )
    selection_seed: int = field(default=0, metadata={"help": "Seed of the weighted draw."})

    def __post_init__(self) -> None:
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting {self.weighting!r}; expected one of {WEIGHTINGS}")
        if self.center_rule not in CENTER_RULES:
            raise ValueError(f"center_rule {self.center_rule!r}; expected one of {CENTER_RULES}")
        if not 0.0 <= self.replay_fraction <= 1.0:
            raise ValueError(f"replay_fraction must be in [0, 1], got {self.replay_fraction}")
        if self.width <= 0:
            raise ValueError(f"width must be > 0, got {self.width}")
        if self.band_lo > self.band_hi:
            raise ValueError(f"band_lo {self.band_lo} > band_hi {self.band_hi}")

    def center_for(self, complexities: Sequence[float]) -> float:
        """The Gaussian's centre for these candidates under ``center_rule``."""
        if self.center_rule == "informative":
            return informative_center(complexities, self.center)
        return self.center

    def weight(self, c: float, center: float | None = None) -> float:
        """The selection weight of complexity ``c`` (the Gaussian at ``center``, default the fixed ``center``)."""
        if self.weighting == "gaussian":
            return gaussian_weight(c, self.center if center is None else center, self.width)
        if self.weighting == "band":
            return band_weight(c, self.band_lo, self.band_hi)
        return 1.0


def weighted_sample(weights: Sequence[float], n: int, rng: random.Random) -> list[int]:
    """``n`` distinct indices drawn with probability proportional to weight (zero weights never drawn)."""
    keyed = [(rng.random() ** (1.0 / w), i) for i, w in enumerate(weights) if w > 0]
    keyed.sort(reverse=True)
    return [i for _, i in keyed[:n]]


@dataclass
class Selection:
    """Indices of the selected prompts: ``learn`` (weighted by complexity) and ``replay`` (mastered), and the
    Gaussian centre the weights used (None for other weightings)."""

    learn: list[int]
    replay: list[int]
    center: float | None = None

    @property
    def indices(self) -> list[int]:
        return self.learn + self.replay


def select(complexities: Sequence[float], config: SelectionConfig) -> Selection:
    """Choose prompts by complexity (see the module docstring); deterministic for a given seed."""
    rng = random.Random(config.selection_seed)
    n = len(complexities)
    target = n if config.target_size is None else min(config.target_size, n)
    mastered = [i for i, c in enumerate(complexities) if c <= config.mastered_max]
    n_replay = min(round(target * config.replay_fraction), len(mastered))
    replay = sorted(rng.sample(mastered, n_replay)) if n_replay else []
    taken = set(replay)
    center = config.center_for(complexities)
    # Replay stands apart: mastered prompts are not also drawn as learning material.
    weights = [0.0 if (i in taken or (n_replay and c <= config.mastered_max)) else config.weight(c, center)
               for i, c in enumerate(complexities)]  # fmt: skip
    learn = weighted_sample(weights, target - n_replay, rng)
    if len(learn) < target - n_replay:
        logger.warning(
            "selection: only %d prompts have weight > 0 for %d places (weighting %s)",
            len(learn),
            target - n_replay,
            config.weighting,
        )
    return Selection(sorted(learn), replay, center if config.weighting == "gaussian" else None)


def histogram(values: Sequence[float], bins: int = 10) -> list[int]:
    """Counts of ``values`` in ``bins`` equal bins over [0, 1] (1.0 falls in the last bin)."""
    counts = [0] * bins
    for v in values:
        counts[min(int(v * bins), bins - 1)] += 1
    return counts


def statistics(
    records: Sequence[dict[str, Any]], complexities: Sequence[float], selection: Selection, bins: int = 10
) -> dict[str, Any]:
    """Counts, mean complexity and histograms before and after selection, and the selected share per difficulty."""
    chosen = [complexities[i] for i in selection.indices]

    def mean(xs: Sequence[float]) -> float:
        return sum(xs) / len(xs) if xs else 0.0

    by_difficulty_all = Counter(str(r.get("difficulty")) for r in records)
    by_difficulty_sel = Counter(str(records[i].get("difficulty")) for i in selection.indices)
    return {
        "candidates": len(records),
        "selected": len(selection.indices),
        "learn": len(selection.learn),
        "replay": len(selection.replay),
        "mean_complexity_before": mean(complexities),
        "mean_complexity_after": mean(chosen),
        "center": selection.center,
        "mastered_before": sum(c == 0.0 for c in complexities),
        "unsolved_before": sum(c == 1.0 for c in complexities),
        "histogram_before": histogram(complexities, bins),
        "histogram_after": histogram(chosen, bins),
        "difficulty_before": dict(sorted(by_difficulty_all.items())),
        "difficulty_after": dict(sorted(by_difficulty_sel.items())),
    }


def plot_histogram(before: Sequence[float], after: Sequence[float], path: str | Path, bins: int = 10) -> Path:
    """A PNG with the complexity histogram of the candidates and of the selected set."""
    fig, ax = pyplot().subplots(figsize=(6, 3.5))
    edges = [i / bins for i in range(bins + 1)]
    ax.hist(list(before), bins=edges, alpha=0.5, label=f"candidates ({len(before)})")
    ax.hist(list(after), bins=edges, alpha=0.7, label=f"selected ({len(after)})")
    ax.set_xlabel("complexity = 1 - student pass rate")
    ax.set_ylabel("prompts")
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)


def measure_complexity(
    model: Any,
    tokenizer: Any,
    records: Sequence[dict[str, Any]],
    num_samples: int = 8,
    mode: str | None = "slow",
    temperature: float = 1.0,
    max_new_tokens: int = 256,
    batch_size: int = 64,
    backend: str = "transformers",
    check: Any = None,
    gpu_memory_utilization: float = 0.9,
    *,
    seed: int | None = None,
    sampler: Sampler | None = None,
    think: ThinkFormat | None = None,
) -> list[float]:
    """Complexity of every record for the student: ``1 - pass rate`` over ``num_samples`` sampled replies.

    Samples with ``sampler`` when given (``model`` and ``tokenizer`` may then be None). Else ``backend`` says how:
    ``transformers`` over the loaded ``model``; ``vllm`` with vLLM's offline engine on the student's folder
    (``model`` is then a path; the engine takes ``gpu_memory_utilization`` of the GPU and is closed afterwards);
    ``auto`` uses vLLM when it is installed and a GPU is visible. Replies are read in the sampler's think format:
    ``think`` (the run's) when given, else the student tokenizer's (read from its folder when no tokenizer is
    given), and checked with the MARS rule layer (:func:`rewards.verify.check`) unless another ``check`` is given.
    """
    if backend == "auto":
        backend = "vllm" if _vllm_usable() else "transformers"
    own = sampler is None
    if own:
        if backend == "vllm" and not isinstance(model, (str, Path)):
            raise TypeError("the vllm complexity backend needs the student's folder, not a loaded model")
        config = SamplerConfig(
            backend=backend,
            model=str(model) if backend == "vllm" else None,
            batch_size=batch_size,
            gpu_memory_utilization=gpu_memory_utilization,
        )
        sampler = make_sampler(config, think, model=None if backend == "vllm" else model, tokenizer=tokenizer)
    try:
        rates = pass_rates(
            sampler,
            records,
            num_samples,
            check or rule_check,
            mode=mode,
            temperature=temperature,
            max_new_tokens=max_new_tokens,
            seed=seed,
        )
    finally:
        if own and hasattr(sampler, "close"):
            sampler.close()  # give the GPU back to training
    return [complexity(p.rate) for p in rates]


def _vllm_usable() -> bool:
    return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()
