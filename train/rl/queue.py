"""Pass-rate filtering and a prioritized prompt queue for GRPO.

A GRPO group of ``G`` completions carries a gradient only when its rewards differ: for a prompt of pass rate ``p``
that fails to happen with probability ``p^G + (1-p)^G``. The queue draws prompts where that is least likely:

* **Band filter** (:func:`band_indices`): keep the prompts whose measured pass rate lies in ``[lo, hi]`` (inclusive),
  read from a pass-rate file (:func:`load_pass_rates`): the distillation stage's ``complexity.jsonl``
  (``complexity = 1 - pass rate``) or a file of ``{id, pass_rate}`` records.
* **Priority** (:class:`PromptQueue`): each prompt keeps an EMA of its pass rate, updated from every group it gets;
  a draw picks prompts without replacement with weight ``p(1-p) + exploration / sqrt(1 + draws) + age * since``,
  where ``since`` counts the prompts drawn since the prompt was last picked, in queue lengths: a prompt's weight
  grows while it waits, so nothing starves. Prompts whose EMA reaches ``mastered`` go to a replay pool that gets
  a ``replay_prob`` share of the slots, oldest first.

Everything is deterministic for a seed; :meth:`PromptQueue.state_dict` (the random generator's state included) makes
a resumed run draw what the uninterrupted one would have.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset

from train.core.data import record_id

logger = logging.getLogger(__name__)

STATE_FILE = "queue_state.json"


@dataclass
class QueueConfig:
    """Knobs of :class:`PromptQueue` (the recipe's ``queue_*`` keys)."""

    ema: float = field(default=0.3, metadata={"help": "EMA weight of a new group's success rate."})
    prior: float = field(default=0.5, metadata={"help": "Pass rate of a prompt the pass-rate file does not list."})
    mastered: float = field(default=0.9, metadata={"help": "EMA pass rate from which a prompt is in the replay pool."})
    replay_prob: float = field(default=0.05, metadata={"help": "Share of each draw's slots given to the replay pool."})
    exploration: float = field(default=0.05, metadata={"help": "Bonus exploration / sqrt(1 + times drawn)."})
    age: float = field(
        default=0.05,
        metadata={"help": "Weight added while a prompt waits, per queue-length of prompts drawn since its last draw."},
    )
    seed: int = field(default=0, metadata={"help": "Seed of the queue's random generator."})

    def __post_init__(self) -> None:
        for name in ("ema", "prior", "mastered", "replay_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"queue {name}={value}: expected a value in [0, 1]")
        if self.exploration < 0 or self.age < 0:
            raise ValueError(f"queue exploration={self.exploration}, age={self.age}: expected values >= 0")


def prompt_key(row: dict[str, Any]) -> str:
    """How a prompt is known to the queue and the pass-rate file: its ``id``, else a hash of its prompt."""
    if row.get("id") is not None:
        return str(row["id"])
    if row.get("prompt") is None:
        raise ValueError("a prompt row needs an `id` or a `prompt`")
    return record_id(row["prompt"])


def load_pass_rates(path: str | Path) -> dict[str, float]:
    """Pass rates by prompt key from a JSONL file of records with ``pass_rate`` or ``complexity`` (1 - pass rate).

    Records are keyed by ``id`` (else a hash of ``prompt``, as :func:`train.core.data.record_id` does). Pass rates
    from ``complexity`` are rounded to 9 decimals so that ``1 - (1 - k/N)`` lands exactly on ``k/N``'s band edges.
    """
    path = Path(path)
    rates: dict[str, float] = {}
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{line_no}: not a JSON object: {exc}") from None
            if "pass_rate" in record:
                rate = float(record["pass_rate"])
            elif "complexity" in record:
                rate = round(1.0 - float(record["complexity"]), 9)
            else:
                raise ValueError(f"{path}:{line_no}: a record needs `pass_rate` or `complexity`")
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{path}:{line_no}: pass rate {rate} is outside [0, 1]")
            try:
                rates[prompt_key(record)] = rate
            except ValueError:
                raise ValueError(f"{path}:{line_no}: a record needs an `id` or a `prompt`") from None
    return rates


def band_indices(keys: Sequence[str], rates: dict[str, float], band: Sequence[float]) -> list[int]:
    """Positions of the prompts whose pass rate lies in ``[lo, hi]`` (inclusive); unlisted prompts are out."""
    lo, hi = band
    return [i for i, key in enumerate(keys) if key in rates and lo <= rates[key] <= hi]


class PromptQueue:
    """Prompts drawn by priority, with an EMA pass rate per prompt and a replay pool for mastered ones."""

    def __init__(self, keys: Sequence[str], pass_rates: dict[str, float] | None, config: QueueConfig):
        if not keys:
            raise ValueError("the prompt queue needs at least one prompt")
        self.keys = list(keys)
        self.config = config
        rates = pass_rates or {}
        self.pass_rate = np.array([rates.get(k, config.prior) for k in self.keys], dtype=np.float64)
        # A measured pass rate counts as one group's worth of evidence; the prior of an unmeasured prompt as none,
        # so its first group replaces it (a prior of 0.5 averaged in would keep easy and hard prompts looking alike).
        self.prior_weight = np.array([1.0 if k in rates else 0.0 for k in self.keys])
        self.draws = np.zeros(len(self.keys), dtype=np.int64)  # times each prompt was drawn
        self.updates = np.zeros(len(self.keys), dtype=np.int64)  # groups folded into each EMA
        self.last = np.zeros(len(self.keys), dtype=np.int64)  # clock value at the last draw
        self.clock = 0  # prompts drawn so far
        self.rng = np.random.default_rng(config.seed)

    def __len__(self) -> int:
        return len(self.keys)

    def mastered(self) -> np.ndarray:
        return self.pass_rate >= self.config.mastered

    def priorities(self) -> np.ndarray:
        """Draw weights of every prompt (the replay pool's are used only among themselves)."""
        p, c = self.pass_rate, self.config
        since = (self.clock - self.last) / len(self.keys)  # in passes over the queue: the same at every size
        return p * (1 - p) + c.exploration / np.sqrt(1 + self.draws) + c.age * since + 1e-12

    def draw(self, n: int) -> list[int]:
        """``n`` prompt positions: distinct while ``n`` does not exceed the queue, the replay pool's share first."""
        out: list[int] = []
        while len(out) < n:
            out += self._draw_distinct(min(n - len(out), len(self.keys)))
        return out

    def _draw_distinct(self, n: int) -> list[int]:
        replay = np.flatnonzero(self.mastered())
        active = np.flatnonzero(~self.mastered())
        n_replay = int(self.rng.binomial(n, self.config.replay_prob)) if len(replay) else 0
        n_replay = max(min(n_replay, len(replay)), n - len(active))  # a short active pool borrows from replay
        # Replay: the longest-waiting mastered prompts (ties by position), so each comes back in turn.
        picked = list(replay[np.lexsort((replay, self.last[replay]))][:n_replay])
        if n > n_replay:
            # Weighted sampling without replacement (Efraimidis-Spirakis): the n largest log(u) / w.
            w = self.priorities()[active]
            score = np.log(self.rng.random(len(active))) / w
            picked += list(active[np.argsort(-score, kind="stable")[: n - n_replay]])
        self.clock += n
        picked = [int(i) for i in picked]
        self.draws[picked] += 1
        self.last[picked] = self.clock
        return picked

    def update(self, index: int, successes: float, total: float) -> None:
        """Fold one group's success rate into the prompt's EMA pass rate (a group with no scored reply is skipped)."""
        if total <= 0:
            return
        # A running mean with the prior's weight until the EMA's weight takes over: an estimate settles quickly and
        # then follows the policy as it learns.
        self.updates[index] += 1
        a = max(self.config.ema, 1.0 / (self.prior_weight[index] + self.updates[index]))
        self.pass_rate[index] = (1 - a) * self.pass_rate[index] + a * (successes / total)

    def stats(self) -> dict[str, float]:
        return {
            "queue/mean_pass_rate": float(self.pass_rate.mean()),
            "queue/mastered_frac": float(self.mastered().mean()),
            "queue/never_drawn_frac": float((self.draws == 0).mean()),
        }

    # -- state: saved with each trainer checkpoint, restored on resume

    def state_dict(self) -> dict[str, Any]:
        return {
            "keys": self.keys,
            "config": asdict(self.config),
            "pass_rate": self.pass_rate.tolist(),
            "prior_weight": self.prior_weight.tolist(),
            "draws": self.draws.tolist(),
            "updates": self.updates.tolist(),
            "last": self.last.tolist(),
            "clock": self.clock,
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any], where: str = "queue state") -> None:
        if state["keys"] != self.keys:
            raise ValueError(f"{where}: saved for {len(state['keys'])} other prompts than this run's {len(self.keys)}")
        self.pass_rate = np.array(state["pass_rate"], dtype=np.float64)
        self.prior_weight = np.array(state["prior_weight"], dtype=np.float64)
        self.draws = np.array(state["draws"], dtype=np.int64)
        self.updates = np.array(state["updates"], dtype=np.int64)
        self.last = np.array(state["last"], dtype=np.int64)
        self.clock = int(state["clock"])
        self.rng.bit_generator.state = state["rng"]

    def save(self, folder: str | Path) -> Path:
        """Write ``queue_state.json`` into ``folder`` atomically (a temporary file, then a rename)."""
        path = Path(folder) / STATE_FILE
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.state_dict()), encoding="utf-8")
        os.replace(tmp, path)
        return path

    def load(self, folder: str | Path) -> bool:
        """Restore from ``folder``'s ``queue_state.json``; False when there is none."""
        path = Path(folder) / STATE_FILE
        if not path.is_file():
            return False
        self.load_state_dict(json.loads(path.read_text(encoding="utf-8")), where=str(path))
        return True


def informative_probability(p: float, group_size: int) -> float:
    """Chance that a group of ``group_size`` replies to a prompt of pass rate ``p`` has 0 < successes < G."""
    return 1.0 - p**group_size - (1.0 - p) ** group_size if 0 <= p <= 1 else math.nan


def prepare_prompts(
    dataset: Dataset,
    pass_rate_file: str | Path | None,
    band: Sequence[float] | None,
    use_queue: bool,
    config: QueueConfig,
) -> tuple[Dataset, PromptQueue | None]:
    """The training prompts inside the pass-rate band (when one is set) and, with ``use_queue``, their queue."""
    rates = load_pass_rates(pass_rate_file) if pass_rate_file else None
    keys = [prompt_key(row) for row in dataset]
    if band is not None:
        kept = band_indices(keys, rates or {}, band)
        if not kept:
            raise ValueError(f"{pass_rate_file}: no training prompt has a pass rate in {list(band)}")
        logger.info("pass-rate band %s keeps %d of %d prompts", list(band), len(kept), len(keys))
        dataset, keys = dataset.select(kept), [keys[i] for i in kept]
    return dataset, (PromptQueue(keys, rates, config) if use_queue else None)
