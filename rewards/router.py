"""The MARS router: per-task reward sources, adaptive per-source normalisation, per-task metrics.

Each sample's ``task`` column picks its *sources* from :class:`MARSConfig`. A source is a named component (e.g.
``accuracy``) computed by a chain of rewards tried in order, the first non-``None`` value winning — so
``[math, judge_equivalence]`` is "rule-based verification, and the LLM judge only where the rule can't decide",
and ``[short_answer, judge_rubric]`` for general questions is "rule match when the reference is short enough to
check, else a judged grade". *Shared* sources (format, repetition, length) apply to every task.

Adaptive: each (task, source) keeps a running mean and standard deviation (exact cumulative by default, or an
exponential moving average) and, after ``warmup`` samples, its values are standardised before weighting, so a
0/1 accuracy, a 0..1 judge grade and a -1..0 length penalty weigh as their weights say rather than as their
scales happen to be. Inside a GRPO group (one prompt, one task) the shift by the mean cancels in the group
baseline; what normalisation changes is the relative scale of the sources. With several processes the batch
moments are summed across ranks first, so every rank normalises identically.

The reward returned is ``sum(weight * normalised value)`` over the sources that apply (``None`` when none does).
Per-task and per-source means go to trl's metric log through the ``log_metric`` hook that ``GRPOTrainer``
passes to every reward function (keys ``mars/<task>/reward``, ``mars/<task>/<source>``, ``mars/<task>/fraction``,
``mars/<task>/<source>/fallback``). :meth:`MARSRouter.as_reward_functions` gives one reward function per
(task, source) instead, for trl's ``reward_weights`` and per-function logging.

The router owns routing: sub-rewards receive every column except the task column, so their own task filters
(e.g. the math reward's) do not second-guess the config.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from rewards import get_reward
from rewards.base import Reward, ThinkFormatNotSet
from rewards.math import verify_answer
from rewards.registry import register
from train.core.modes import ThinkFormat

logger = logging.getLogger("rewards.router")

# Columns trl passes that are not per-sample data, and hooks a sub-reward must not use to log under our names.
_HOOKS = ("log_metric", "log_extra")


def _default_tasks() -> dict[str, list[dict[str, Any]]]:
    return {
        "math": [{"name": "accuracy", "rewards": ["math", "judge_equivalence"], "weight": 1.0}],
        "code": [{"name": "accuracy", "rewards": ["code"], "weight": 1.0}],
        "general": [{"name": "accuracy", "rewards": ["short_answer", "judge_rubric"], "weight": 1.0}],
    }


def _default_shared() -> list[dict[str, Any]]:
    return [
        {"name": "format", "rewards": ["format"], "weight": 0.2},
        {"name": "repetition", "rewards": ["repetition"], "weight": 0.2},
        {"name": "length", "rewards": ["overlong"], "weight": 0.2},
    ]


@dataclass
class SourceConfig:
    """One reward source: a named component computed by a fallback chain of registered rewards."""

    name: str = field(metadata={"help": "Component name, used in metric keys and normalisation statistics."})
    rewards: list[str] = field(
        metadata={"help": "Registered reward names tried in order; the first value that is not None counts."}
    )
    weight: float = field(default=1.0, metadata={"help": "Weight of this source in the summed reward."})
    normalize: bool | None = field(
        default=None, metadata={"help": "Standardise this source (None: follow MARSConfig.normalize)."}
    )

    @classmethod
    def parse(cls, value: Any, where: str) -> SourceConfig:
        if isinstance(value, SourceConfig):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"{where}: a source must be a mapping with `name` and `rewards`, got {value!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"{where}: unknown source key(s) {unknown}; known keys are {sorted(known)}")
        if "name" not in value or "rewards" not in value:
            raise ValueError(f"{where}: a source needs `name` and `rewards`")
        rewards = [value["rewards"]] if isinstance(value["rewards"], str) else list(value["rewards"])
        if not rewards or not all(isinstance(r, str) and r for r in rewards):
            raise ValueError(f"{where}, key 'rewards': a non-empty list of reward names, got {value['rewards']!r}")
        try:
            weight = float(value.get("weight", 1.0))
        except (TypeError, ValueError):
            raise ValueError(f"{where}, key 'weight': a number, got {value.get('weight')!r}") from None
        return cls(name=str(value["name"]), rewards=rewards, weight=weight, normalize=value.get("normalize"))


@dataclass
class MARSConfig:
    """Configuration of the MARS router (loadable from YAML with :meth:`from_yaml`)."""

    tasks: dict[str, list[Any]] = field(
        default_factory=_default_tasks,
        metadata={"help": "Task name -> list of sources ({name, rewards: [fallback chain], weight, normalize})."},
    )
    shared: list[Any] = field(
        default_factory=_default_shared,
        metadata={"help": "Sources applied to every task (format, repetition, length), same shape as a task's."},
    )
    reward_params: dict[str, dict[str, Any]] = field(
        default_factory=dict,
        metadata={"help": "Constructor parameters per reward name, e.g. {overlong: {max_length: 1024}}."},
    )
    judge: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "JudgeConfig fields given to every judge* reward (backend, base_url, model, cache_dir...)."},
    )
    think_start: str | None = field(
        default=None,
        metadata={
            "help": "Think-block opening tag every sub-reward reads answers after, for users without a tokenizer "
            "(the verl/openrlhf adapters). None: the format comes from MARSRouter.set_think_format (the GRPO "
            "recipe passes the tokenizer's). Set both think_start and think_end, or neither."
        },
    )
    think_end: str | None = field(default=None, metadata={"help": "Think-block closing tag (see think_start)."})
    task_column: str = field(default="task", metadata={"help": "Dataset column that names each sample's task."})
    default_task: str | None = field(
        default=None, metadata={"help": "Task for samples with no task value (None: such samples score None)."}
    )
    normalize: bool = field(default=True, metadata={"help": "Standardise each (task, source) by running stats."})
    warmup: int = field(
        default=32, metadata={"help": "Samples a (task, source) must have seen before its values are standardised."}
    )
    momentum: float = field(
        default=0.0,
        metadata={"help": "0: exact cumulative mean/std; in (0, 1): exponential moving average per batch."},
    )
    clip: float | None = field(default=5.0, metadata={"help": "Clip standardised values to [-clip, clip]; None: off."})
    eps: float = field(default=1e-6, metadata={"help": "Added to the std before dividing."})
    sync_stats: bool = field(
        default=True, metadata={"help": "Sum batch moments across ranks (torch.distributed) before updating stats."}
    )
    log_prefix: str = field(default="mars", metadata={"help": "Prefix of the logged metric keys."})

    def __post_init__(self) -> None:
        if not isinstance(self.tasks, dict) or not self.tasks:
            raise ValueError("MARSConfig.tasks: a non-empty mapping of task name -> sources")
        self.tasks = {
            str(task): self._sources(sources, f"MARSConfig.tasks[{task!r}]") for task, sources in self.tasks.items()
        }
        self.shared = self._sources(self.shared or [], "MARSConfig.shared")
        shared_names = {s.name for s in self.shared}
        for task, sources in self.tasks.items():
            clash = shared_names & {s.name for s in sources}
            if clash:
                raise ValueError(f"MARSConfig.tasks[{task!r}]: source name(s) {sorted(clash)} also in `shared`")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"MARSConfig.momentum={self.momentum}; expected 0 <= momentum < 1")
        if self.warmup < 0 or self.eps <= 0 or (self.clip is not None and self.clip <= 0):
            raise ValueError("MARSConfig: warmup >= 0, eps > 0 and clip > 0 (or None) are required")
        if self.default_task is not None and self.default_task not in self.tasks:
            raise ValueError(f"MARSConfig.default_task={self.default_task!r} is not one of {sorted(self.tasks)}")
        if bool(self.think_start) != bool(self.think_end):
            raise ValueError(
                f"MARSConfig: think_start={self.think_start!r} and think_end={self.think_end!r}; set both (e.g. "
                "<think> and </think> for Qwen3, [unused16] and [unused17] for openPangu) or neither"
            )
        if self.think_start:
            ThinkFormat(self.think_start, self.think_end)  # raises for an unusable pair (equal, quotes)

    @property
    def think(self) -> ThinkFormat | None:
        """The think format the config's ``think_start``/``think_end`` give, None when they are not set."""
        if not self.think_start or not self.think_end:
            return None
        return ThinkFormat(self.think_start, self.think_end)

    @staticmethod
    def _sources(values: Any, where: str) -> list[SourceConfig]:
        if not isinstance(values, (list, tuple)):
            raise ValueError(f"{where}: a list of sources, got {type(values).__name__}")
        sources = [SourceConfig.parse(v, f"{where}[{i}]") for i, v in enumerate(values)]
        names = [s.name for s in sources]
        if len(set(names)) != len(names):
            raise ValueError(f"{where}: source names must be unique, got {names}")
        return sources

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "MARS config") -> MARSConfig:
        if not isinstance(data, dict):
            raise ValueError(f"{where}: a mapping of MARSConfig keys, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; MARSConfig keys are {sorted(known)}")
        return cls(**copy.deepcopy(data))

    @classmethod
    def from_yaml(cls, path: str | Path) -> MARSConfig:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no such MARS config file") from None
        return cls.from_dict(data, str(path))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def sources(self, task: str) -> list[SourceConfig]:
        return self.tasks[task] + self.shared


# ------------------------------------------------------------------------------------------- normalisation


@dataclass
class RunningStats:
    """Running mean and variance of one (task, source), merged batch by batch.

    ``momentum == 0``: exact over every value seen (Chan et al.'s parallel merge of batch moments).
    ``momentum = m > 0``: an exponential moving average, ``mean <- m*mean + (1-m)*batch_mean`` and the variance
    of the corresponding two-component mixture.
    """

    count: int = 0
    mean: float = 0.0
    var: float = 0.0

    def merge(self, n: int, total: float, total_sq: float, momentum: float = 0.0) -> None:
        """Fold in a batch given as ``(n, sum, sum of squares)``."""
        if n <= 0:
            return
        b_mean = total / n
        b_var = max(total_sq / n - b_mean * b_mean, 0.0)
        if self.count == 0:
            self.mean, self.var = b_mean, b_var
        elif momentum > 0:
            delta = b_mean - self.mean
            self.var = momentum * self.var + (1 - momentum) * b_var + momentum * (1 - momentum) * delta * delta
            self.mean = momentum * self.mean + (1 - momentum) * b_mean
        else:
            count = self.count + n
            delta = b_mean - self.mean
            m2 = self.var * self.count + b_var * n + delta * delta * self.count * n / count
            self.mean += delta * n / count
            self.var = m2 / count
        self.count += n

    @property
    def std(self) -> float:
        return math.sqrt(self.var)


def _all_reduce_sum(values: list[float]) -> list[float]:
    """Element-wise sum across ranks when torch.distributed is running; unchanged otherwise."""
    try:
        import torch
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch is a dependency
        return values
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    device = "cpu"
    if dist.get_backend() == "nccl":
        device = f"cuda:{torch.cuda.current_device()}"
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.cpu().tolist()


# -------------------------------------------------------------------------------------- general rule layer

_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_NUMERIC = re.compile(r"^[-+]?\d[\d,]*(\.\d+)?(/\d+)?%?$")  # a bare number, fraction or percentage


def _norm(text: str) -> str:
    text = re.sub(r"(?i)^(the\s+)?(final\s+)?answer\s*(is|:)\s*", "", text.strip())
    text = re.sub(r"[*_`$]", "", text)
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s.+\-/%]", " ", text.lower())).strip(" .")


@register("short_answer")
class ShortAnswerReward(Reward):
    """The rule layer for general questions: checks answers against *short* references only, and only confirms.

    A reference of at most ``max_words`` words is checkable: a bare number is verified with math-verify (right
    1.0, wrong 0.0); a word or phrase scores 1.0 when the answer, its last line or its ``\\boxed{}`` content
    equals it after normalisation (case, punctuation, "the answer is"). Anything else is None, so a judge behind
    it in the chain decides: prose references, and short answers phrased differently from the reference.
    """

    name = "short_answer"

    def __init__(self, max_words: int = 3, timeout_s: float | None = 5.0, *, think: ThinkFormat | None = None):
        self.max_words = max_words
        self.timeout_s = timeout_s
        self.think = think

    def score(self, completion: Any, answer: Any = None, **_: Any) -> float | None:
        reference = _norm(str(answer)) if answer is not None else ""
        if not reference or len(reference.split()) > self.max_words:
            return None
        text = self.answer(completion)
        if text is None:
            return 0.0  # an unclosed think block gives no answer
        if _NUMERIC.match(reference):
            ok = verify_answer(str(answer), text, timeout_s=self.timeout_s)
            return None if ok is None else float(ok)
        lines = [line for line in text.strip().splitlines() if line.strip()]
        candidates = [text, *(lines[-1:]), *_BOXED.findall(text)]
        return 1.0 if any(_norm(c) == reference for c in candidates) else None


# ---------------------------------------------------------------------------------------------------- router


@register("mars")
class MARSRouter(Reward):
    """The multi-source adaptive reward: one reward function for trl's ``GRPOTrainer`` (see module docstring).

    Args:
        config: a :class:`MARSConfig`, a mapping of its keys, a path to a YAML file, or None for the defaults.
        rewards: reward callables by name, used instead of building them from the registry (custom rewards,
            tests). Names not given are built with ``rewards.get_reward(name, **params)``.
        think: the run's think format, given to every source (:meth:`set_think_format`); None: the config's
            ``think_start``/``think_end`` when set, else it must be set before scoring.
        **overrides: MARSConfig fields overriding ``config`` (e.g. ``normalize=False``).
    """

    name = "mars"

    def __init__(
        self,
        config: MARSConfig | dict[str, Any] | str | Path | None = None,
        rewards: dict[str, Callable[..., list[float | None]]] | None = None,
        *,
        think: ThinkFormat | None = None,
        **overrides: Any,
    ):
        if config is None:
            config = MARSConfig()
        elif isinstance(config, (str, Path)):
            config = MARSConfig.from_yaml(config)
        elif isinstance(config, dict):
            config = MARSConfig.from_dict(config)
        if overrides:
            config = MARSConfig.from_dict({**config.to_dict(), **overrides})
        self.config = config
        self.rewards = dict(rewards or {})
        for reward_name in self.reward_names():
            if reward_name not in self.rewards:
                self.rewards[reward_name] = self._build(reward_name)
        think = think if think is not None else config.think
        if think is not None:
            self.set_think_format(think)
        self.stats: dict[tuple[str, str], RunningStats] = {key: RunningStats() for key in self.keys()}
        self.last_metrics: dict[str, float] = {}
        self._warned: set[str] = set()

    # -- construction

    def reward_names(self) -> list[str]:
        names: list[str] = []
        for task in self.config.tasks:
            for source in self.config.sources(task):
                names += [r for r in source.rewards if r not in names]
        return names

    def set_think_format(self, think: ThinkFormat) -> None:
        """Make the router and every source's rewards read replies with ``think`` (the run's one format).

        Rewards that hold a format (a ``think`` attribute, as every :class:`Reward` has) get it; plain callables
        given in ``rewards`` are left alone. The config is not touched: its ``think_start``/``think_end`` are the
        user's keys, read once when the router is built (an overwrite here would make them dead keys).
        """
        if not isinstance(think, ThinkFormat):
            raise TypeError(f"set_think_format takes a ThinkFormat, got {type(think).__name__}")
        for target in [self, *self.rewards.values()]:
            if hasattr(target, "think"):
                target.think = think

    def keys(self) -> list[tuple[str, str]]:
        """Every (task, source) pair, in a fixed order (the order of the cross-rank reduction)."""
        return [(task, s.name) for task in sorted(self.config.tasks) for s in self.config.sources(task)]

    def _build(self, reward_name: str) -> Callable[..., list[float | None]]:
        params = dict(self.config.reward_params.get(reward_name, {}))
        if reward_name.startswith("judge"):
            params = {**self.config.judge, **params}
        return get_reward(reward_name, **params)

    # -- scoring

    def tasks_of(self, n: int, columns: dict[str, Any]) -> list[str | None]:
        """Each sample's task (the default task where the column is missing or empty; None when unknown)."""
        raw = columns.get(self.config.task_column)
        values = [None] * n if raw is None else list(raw)
        if len(values) != n:
            raise ValueError(f"column {self.config.task_column!r} has {len(values)} values for {n} completions")
        out: list[str | None] = []
        for value in values:
            task = self.config.default_task if value is None or str(value).strip() == "" else str(value).strip()
            if task not in self.config.tasks:
                if task not in self._warned:
                    self._warned.add(str(task))
                    logger.warning(
                        "task %r is not in the MARS config (%s): its samples score None",
                        task,
                        sorted(self.config.tasks),
                    )
                task = None
            out.append(task)
        return out

    def check_tasks(self, values: Sequence[Any], where: str = "dataset") -> None:
        """Raise if a task value (e.g. a dataset's task column) has no sources in the config."""

        def routed(v: Any) -> str | None:
            return str(v).strip() if v is not None and str(v).strip() else self.config.default_task

        unknown = sorted({str(v) for v in values if routed(v) not in self.config.tasks})
        if unknown:
            raise ValueError(
                f"{where}: task value(s) {unknown} in column {self.config.task_column!r} have no MARS sources; "
                f"configured tasks: {sorted(self.config.tasks)}"
            )

    def _sub_columns(self, columns: dict[str, Any], idx: list[int], n: int) -> dict[str, Any]:
        out = {}
        for key, value in columns.items():
            if key == self.config.task_column or key in _HOOKS:
                continue
            out[key] = [value[i] for i in idx] if isinstance(value, (list, tuple)) and len(value) == n else value
        return out

    def _call_reward(self, reward_name: str, completions: list[Any], columns: dict[str, Any]) -> list[float | None]:
        try:
            values = list(self.rewards[reward_name](completions, **columns))
            if len(values) != len(completions):
                raise ValueError(f"returned {len(values)} values for {len(completions)} completions")
        except ThinkFormatNotSet:  # a configuration error, not a broken batch: stop the run
            raise
        except Exception as exc:  # one broken reward never stops training: its samples fall through the chain
            logger.warning(
                "reward %s failed on a batch of %d: %s: %s", reward_name, len(completions), type(exc).__name__, exc
            )
            return [None] * len(completions)
        return [None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v) for v in values]

    def source_values(
        self, source: SourceConfig, completions: list[Any], columns: dict[str, Any], idx: list[int], n: int
    ) -> tuple[list[float | None], list[int]]:
        """Raw values of ``source`` on samples ``idx``, and which reward of the chain decided each (-1: none)."""
        values: list[float | None] = [None] * len(idx)
        decided = [-1] * len(idx)
        todo = list(range(len(idx)))
        for depth, reward_name in enumerate(source.rewards):
            if not todo:
                break
            sub = [idx[j] for j in todo]
            got = self._call_reward(reward_name, [completions[i] for i in sub], self._sub_columns(columns, sub, n))
            for j, value in zip(todo, got):
                if value is not None:
                    values[j], decided[j] = value, depth
            todo = [j for j in todo if values[j] is None]
        return values, decided

    def normalise(self, task: str, source: SourceConfig, values: list[float | None]) -> list[float | None]:
        """Update the (task, source) statistics with ``values`` (summed across ranks), then standardise them."""
        stats = self.stats[(task, source.name)]
        present = [v for v in values if v is not None]
        moments = [len(present), sum(present), sum(v * v for v in present)]
        if self.config.sync_stats:
            moments = _all_reduce_sum(moments)
        self._merge(stats, moments)
        return [None if v is None else self._standardise(stats, source, v) for v in values]

    def _merge(self, stats: RunningStats, moments: list[float]) -> None:
        stats.merge(int(round(moments[0])), moments[1], moments[2], self.config.momentum)

    def _standardise(self, stats: RunningStats, source: SourceConfig, value: float) -> float:
        enabled = self.config.normalize if source.normalize is None else source.normalize
        if not enabled or stats.count < max(self.config.warmup, 2):
            return value
        z = (value - stats.mean) / (stats.std + self.config.eps)
        if self.config.clip is not None:
            z = max(-self.config.clip, min(self.config.clip, z))
        return z

    def score_batch(
        self, completions: list[Any], **columns: Any
    ) -> tuple[list[float | None], dict[tuple[str, str], list[float | None]], dict[str, float]]:
        """The summed rewards, the normalised values per (task, source) (aligned with the batch), and metrics."""
        n = len(completions)
        tasks = self.tasks_of(n, columns)
        raw: dict[tuple[str, str], list[float | None]] = {}
        decided: dict[tuple[str, str], list[int]] = {}
        by_task = {t: [i for i in range(n) if tasks[i] == t] for t in self.config.tasks}
        # Shared sources are computed once over every routed sample, then split by task for normalisation.
        routed = [i for i in range(n) if tasks[i] is not None]
        for source in self.config.shared:
            values, dec = self.source_values(source, completions, columns, routed, n)
            full, full_dec = [None] * n, [-1] * n
            for i, v, d in zip(routed, values, dec):
                full[i], full_dec[i] = v, d
            for task, idx in by_task.items():
                raw[(task, source.name)] = [full[i] for i in idx]
                decided[(task, source.name)] = [full_dec[i] for i in idx]
        for task, idx in by_task.items():
            for source in self.config.tasks[task]:
                if idx:
                    raw[(task, source.name)], decided[(task, source.name)] = self.source_values(
                        source, completions, columns, idx, n
                    )
                else:
                    raw[(task, source.name)], decided[(task, source.name)] = [], []
        normalised = self._normalise_all(raw)
        totals: list[float | None] = [None] * n
        aligned: dict[tuple[str, str], list[float | None]] = {}
        for (task, name), values in normalised.items():
            weight = self._source(task, name).weight
            column_values: list[float | None] = [None] * n
            for i, v in zip(by_task[task], values):
                column_values[i] = v
                if v is not None:
                    totals[i] = (totals[i] or 0.0) + weight * v
            aligned[(task, name)] = column_values
        metrics = self._metrics(n, by_task, raw, decided, totals)
        return totals, aligned, metrics

    def _normalise_all(self, raw: dict[tuple[str, str], list[float | None]]) -> dict[tuple[str, str], list]:
        keys = self.keys()
        moments: list[float] = []
        for key in keys:
            present = [v for v in raw.get(key, []) if v is not None]
            moments += [len(present), sum(present), sum(v * v for v in present)]
        if self.config.sync_stats:
            moments = _all_reduce_sum(moments)
        out = {}
        for k, key in enumerate(keys):
            stats = self.stats[key]
            self._merge(stats, moments[3 * k : 3 * k + 3])
            source = self._source(*key)
            out[key] = [None if v is None else self._standardise(stats, source, v) for v in raw.get(key, [])]
        return out

    def _source(self, task: str, name: str) -> SourceConfig:
        return next(s for s in self.config.sources(task) if s.name == name)

    def _metrics(self, n, by_task, raw, decided, totals) -> dict[str, float]:
        p = self.config.log_prefix
        metrics: dict[str, float] = {}
        for task, idx in by_task.items():
            if not idx:
                continue
            metrics[f"{p}/{task}/fraction"] = len(idx) / n
            scored = [totals[i] for i in idx if totals[i] is not None]
            if scored:
                metrics[f"{p}/{task}/reward"] = sum(scored) / len(scored)
            for source in self.config.sources(task):
                values = [v for v in raw[(task, source.name)] if v is not None]
                if values:
                    metrics[f"{p}/{task}/{source.name}"] = sum(values) / len(values)
                if len(source.rewards) > 1:
                    fallback = sum(1 for d in decided[(task, source.name)] if d > 0)
                    metrics[f"{p}/{task}/{source.name}/fallback"] = fallback / len(idx)
        return metrics

    def __call__(self, completions: list[Any], **columns: Any) -> list[float | None]:
        try:
            totals, _, metrics = self.score_batch(completions, **columns)
        except ThinkFormatNotSet:
            raise
        except Exception:  # the contract: a reward never crashes training (logged with its traceback)
            logger.exception("MARS router failed on a batch of %d; scoring None", len(completions))
            return [None] * len(completions)
        self.emit(metrics, columns.get("log_metric"))
        return totals

    def emit(self, metrics: dict[str, float], log_metric: Callable[[str, float], None] | None) -> None:
        """Hand metrics to trl's ``log_metric`` hook (averaged per logging step) and keep them in ``last_metrics``."""
        self.last_metrics = dict(metrics)
        if log_metric is not None:
            for key in sorted(metrics):
                log_metric(key, metrics[key])
        logger.debug("MARS metrics: %s", metrics)

    # -- state (normalisation statistics survive a resumed run)

    STATE_FILE = "mars_state.json"

    def state_dict(self) -> dict[str, Any]:
        return {"stats": {f"{t}|{s}": [st.count, st.mean, st.var] for (t, s), st in self.stats.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, (count, mean, var) in state.get("stats", {}).items():
            task, _, source = key.partition("|")
            if (task, source) in self.stats:  # a source removed from the config since is dropped
                self.stats[(task, source)] = RunningStats(int(count), float(mean), float(var))

    def save_state(self, folder: str | Path) -> Path:
        """Write the statistics to ``folder/mars_state.json`` atomically."""
        path = Path(folder) / self.STATE_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.state_dict()))
        tmp.replace(path)
        return path

    def load_state(self, folder: str | Path) -> bool:
        """Load ``folder/mars_state.json`` if present; True when loaded."""
        path = Path(folder) / self.STATE_FILE
        if not path.exists():
            return False
        self.load_state_dict(json.loads(path.read_text()))
        logger.info("MARS normalisation statistics restored from %s", path)
        return True

    def state_callback(self) -> Any:
        """A transformers ``TrainerCallback`` saving the statistics into every checkpoint folder."""
        from transformers import TrainerCallback

        router = self

        class MARSStateCallback(TrainerCallback):
            def on_save(self, args, state, control, **kwargs):
                if state.is_world_process_zero:
                    router.save_state(Path(args.output_dir) / f"checkpoint-{state.global_step}")

        return MARSStateCallback()

    # -- separate reward functions

    def as_reward_functions(self) -> tuple[list[SourceReward], list[float]]:
        """One reward function per (task, source) and per shared source, with their weights.

        For ``GRPOTrainer(reward_funcs=funcs, args=GRPOConfig(reward_weights=weights, ...))``: each returns the
        normalised value for samples its task uses and None elsewhere, and trl's weighted sum equals this router's
        output (trl logs each as ``rewards/mars/<task>/<source>/mean``).
        """
        funcs: list[SourceReward] = []
        weights: list[float] = []
        for task in self.config.tasks:
            for source in self.config.tasks[task]:
                funcs.append(SourceReward(self, (task,), source))
                weights.append(source.weight)
        for source in self.config.shared:
            funcs.append(SourceReward(self, tuple(self.config.tasks), source))
            weights.append(source.weight)
        return funcs, weights


class SourceReward(Reward):
    """One MARS source as its own reward function (see :meth:`MARSRouter.as_reward_functions`)."""

    def __init__(self, router: MARSRouter, tasks: tuple[str, ...], source: SourceConfig):
        self.router = router
        self.tasks = tasks
        self.source = source
        scope = tasks[0] if len(tasks) == 1 else "shared"
        self.name = f"{router.config.log_prefix}/{scope}/{source.name}"

    def __call__(self, completions: list[Any], **columns: Any) -> list[float | None]:
        router, n = self.router, len(completions)
        tasks = router.tasks_of(n, columns)
        out: list[float | None] = [None] * n
        metrics: dict[str, float] = {}
        routed = [i for i in range(n) if tasks[i] in self.tasks]
        values, _ = router.source_values(self.source, completions, columns, routed, n) if routed else ([], [])
        for task in self.tasks:
            pos = [j for j, i in enumerate(routed) if tasks[i] == task]
            task_values = [values[j] for j in pos]
            normalised = router.normalise(task, self.source, task_values)
            for j, v in zip(pos, normalised):
                out[routed[j]] = v
            present = [v for v in task_values if v is not None]
            if present:
                metrics[f"{router.config.log_prefix}/{task}/{self.source.name}"] = sum(present) / len(present)
        router.emit(metrics, columns.get("log_metric"))
        return out

    def __repr__(self) -> str:
        return f"SourceReward(name={self.name!r}, rewards={self.source.rewards})"
