"""A discrete-event model of GRPO's rollout scheduling: W generator workers and one learner.

The model (docs/grpo_scheduler.md has the long form):

* A *group* is the G completions of one prompt, decoded together by one worker; its *length* is the number of decode
  steps it takes (its longest completion), drawn per prompt from a :class:`LengthModel` (lognormal by mean and CV, or
  measured lengths resampled). A worker decodes one group at a time in ``length * decode_s[worker]`` seconds.
* The learner trains one step on ``batch_groups`` (B) ready groups in ``train_s`` seconds (a constant or measured
  step times resampled) and then publishes policy version ``k + 1``. A group dispatched while version ``v`` is
  published and trained at step ``k`` has staleness ``k - v``.
* One bounded-staleness engine covers every policy (``max_staleness`` s, ``priority``):

  - admission: a worker starts a group with version ``v`` only while at most ``(v + s + 1) * B`` groups have been
    dispatched, else it blocks until the learner publishes;
  - the learner starts step ``k`` once B groups are ready *and* no group of version ``<= k - s`` is still being
    decoded (that group's last chance is step ``k``); it takes the B ready groups of the oldest versions. Admission
    leaves at most B groups of version ``<= k - s`` untrained before step ``k``, so staleness never exceeds s
    (:func:`simulate` checks it on every group);
  - ``s = 0`` is exactly synchronous GRPO: B groups per version, the learner waits for the slowest, and nothing is
    generated while it trains.

* ``startup_s``: the generators start decoding only then (a child process's imports and model load); with 0,
  the first group starts at time 0.

* Priority (the paper's "prioritized data queues"): prompts arrive in data batches of B; within a batch the workers
  take prompts in decreasing *predicted* length (longest-processing-time-first list scheduling) instead of data
  order. The long groups start first, the short ones fill the gaps at the end, so the last group of a batch to
  finish is a short one started late rather than a long one started late: the tail the learner (sync) or the
  staleness bound (SSP) waits for shrinks. Predictions are the true length times lognormal noise
  (``predict_sigma``; 0 is an oracle, e.g. a prompt's length in the previous epoch is a noisy predictor).

Everything random (lengths, predictions, train times) is drawn up front from one seed per prompt index, so two
policies see the same prompts with the same lengths and a run is reproducible bit for bit.
"""

from __future__ import annotations

import heapq
import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

POLICIES = ("sync", "ssp", "priority", "ssp+priority")


@dataclass(frozen=True)
class LengthModel:
    """Group lengths in tokens: lognormal by ``mean`` and coefficient of variation ``cv``, or ``values`` resampled."""

    mean: float = 4096.0
    cv: float = 1.0
    values: tuple[float, ...] | None = None
    max_len: float | None = None

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.values is not None:
            lengths = rng.choice(np.asarray(self.values, dtype=float), size=n, replace=True)
        elif self.cv == 0:
            lengths = np.full(n, float(self.mean))
        else:
            sigma2 = math.log1p(self.cv**2)  # lognormal moments: CV^2 = exp(sigma^2) - 1
            lengths = rng.lognormal(math.log(self.mean) - sigma2 / 2, math.sqrt(sigma2), size=n)
        if self.max_len is not None:  # a max_tokens cap truncates the tail (and lowers the realised CV)
            lengths = np.minimum(lengths, self.max_len)
        return lengths


@dataclass(frozen=True)
class SimConfig:
    """One simulated run. Times are in seconds, lengths in tokens."""

    workers: int = field(default=1024, metadata={"help": "Generator workers W, each decoding one group at a time."})
    batch_groups: int = field(default=1024, metadata={"help": "Groups B the learner consumes per step."})
    steps: int = field(default=40, metadata={"help": "Learner steps simulated."})
    max_staleness: int = field(default=0, metadata={"help": "s: a group may be trained at most s versions late."})
    priority: bool = field(default=False, metadata={"help": "Dispatch each data batch longest-predicted first."})
    decode_s: float | tuple[float, ...] = field(
        default=0.01, metadata={"help": "Seconds per decode step (token), one value or one per worker."}
    )
    train_s: float | tuple[float, ...] = field(
        default=40.0, metadata={"help": "Learner seconds per step, one value or measured step times resampled."}
    )
    lengths: LengthModel = field(default_factory=LengthModel, metadata={"help": "Group length distribution."})
    predict_sigma: float = field(
        default=0.5, metadata={"help": "Lognormal sigma of the length predictor's error (0 = oracle)."}
    )
    startup_s: float = field(
        default=0.0,
        metadata={
            "help": "Seconds before the generators decode their first group (a child process's imports and "
            "model load); the learner waits them out too."
        },
    )
    seed: int = field(default=0, metadata={"help": "The one seed every random draw derives from."})

    def __post_init__(self):
        counts = (self.workers, self.batch_groups, self.steps)
        if min(counts) < 1 or self.max_staleness < 0 or self.startup_s < 0:
            raise ValueError(
                f"SimConfig needs workers, batch_groups, steps >= 1, max_staleness, startup_s >= 0: {self}"
            )
        if not isinstance(self.decode_s, (int, float)) and len(self.decode_s) != self.workers:
            raise ValueError(f"decode_s has {len(self.decode_s)} values for {self.workers} workers")


def policy_config(base: SimConfig, policy: str, staleness: int) -> SimConfig:
    """``base`` set to one of :data:`POLICIES`; ``staleness`` is s for the SSP ones (sync is SSP with s = 0)."""
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; choose from {', '.join(POLICIES)}")
    ssp = policy.startswith("ssp")
    return replace(base, max_staleness=staleness if ssp else 0, priority=policy.endswith("priority"))


@dataclass
class SimResult:
    """What one run measured. Idle times cover [0, makespan]; generator idle is in worker-seconds."""

    makespan: float
    learner_idle: float
    generator_idle: float
    learner_idle_fraction: float
    generator_idle_fraction: float
    steps_per_hour: float
    staleness: dict[int, int]
    learner_waits: list[float]  # seconds the learner waited before each step

    @property
    def total_idle(self) -> float:
        """Learner plus generator idle time, in worker-seconds (the learner counts as one worker)."""
        return self.learner_idle + self.generator_idle

    @property
    def max_staleness(self) -> int:
        return max(self.staleness)


def _draws(cfg: SimConfig, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lengths and predictions of prompts 0..n-1 and train times of steps 0..steps-1, each from its own stream."""
    length_rng, predict_rng, train_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(cfg.seed).spawn(3))
    lengths = cfg.lengths.sample(length_rng, n)
    noise = predict_rng.standard_normal(n)  # drawn even at sigma 0 so the streams never shift
    predicted = lengths * np.exp(cfg.predict_sigma * noise)
    if isinstance(cfg.train_s, (int, float)):
        train = np.full(cfg.steps, float(cfg.train_s))
    else:
        train = train_rng.choice(np.asarray(cfg.train_s, dtype=float), size=cfg.steps, replace=True)
    return lengths, predicted, train


def dispatch_order(predicted: np.ndarray, batch_groups: int, priority: bool) -> np.ndarray:
    """The prompt indices in the order workers take them: data order, or each batch longest-predicted first."""
    order = np.arange(len(predicted))
    if not priority:
        return order
    for start in range(0, len(order), batch_groups):
        batch = order[start : start + batch_groups]
        order[start : start + batch_groups] = batch[np.argsort(-predicted[batch], kind="stable")]
    return order


def simulate(cfg: SimConfig) -> SimResult:
    """Run the discrete-event model until the learner has finished ``cfg.steps`` steps."""
    s, big_b, steps = cfg.max_staleness, cfg.batch_groups, cfg.steps
    n_prompts = (steps + s + 1) * big_b  # admission never lets more be dispatched
    lengths, predicted, train_times = _draws(cfg, n_prompts)
    order = dispatch_order(predicted, big_b, cfg.priority)
    decode = np.broadcast_to(np.asarray(cfg.decode_s, dtype=float), (cfg.workers,))

    idle_workers = list(range(cfg.workers))  # a heap: the lowest free worker id takes the next prompt
    events: list[tuple[float, int, int, int]] = []  # (time, seq, worker or -1 for the learner, group)
    ready: list[tuple[int, float, int]] = []  # (version, done time, group): oldest versions train first
    decoding = Counter()  # version -> groups still being decoded
    version_of: dict[int, int] = {}
    spans: list[tuple[float, float]] = []  # (start, end) of every decode
    staleness: Counter = Counter()
    waits: list[float] = []
    t, seq, dispatched, version = 0.0, 0, 0, 0
    learner_busy, learner_free_since = False, 0.0

    def push(when: float, who: int, group: int) -> None:
        nonlocal seq
        heapq.heappush(events, (when, seq, who, group))
        seq += 1

    def try_train() -> None:
        nonlocal learner_busy
        k = version  # the learner is idle, so the next step is the published version
        if learner_busy or k >= steps or len(ready) < big_b:
            return
        if k >= s and decoding[k - s]:  # older versions were all trained by step k - 1
            return  # a group whose last chance is step k is still decoding: wait for it
        for _ in range(big_b):
            v, _, _ = heapq.heappop(ready)
            if k - v > s:
                raise AssertionError(f"staleness {k - v} > s={s} at step {k}")
            staleness[k - v] += 1
        waits.append(t - learner_free_since)
        learner_busy = True
        push(float(t + train_times[k]), -1, -1)

    def try_dispatch() -> None:
        nonlocal dispatched
        while idle_workers and dispatched < (version + s + 1) * big_b:
            worker, group = heapq.heappop(idle_workers), int(order[dispatched])
            dispatched += 1
            version_of[group] = version
            decoding[version] += 1
            start = max(t, cfg.startup_s)  # nothing decodes before the generators are up
            end = float(start + lengths[group] * decode[worker])
            spans.append((start, end))
            push(end, worker, group)

    try_dispatch()
    while version < steps:
        t = events[0][0]
        while events and events[0][0] == t:  # apply every event of this instant, then decide once
            _, _, who, group = heapq.heappop(events)
            if who < 0:
                learner_busy, learner_free_since, version = False, t, version + 1
            else:
                heapq.heappush(idle_workers, who)
                decoding[version_of[group]] -= 1
                heapq.heappush(ready, (version_of[group], t, group))
        try_train()
        try_dispatch()
    return _result(cfg, t, float(train_times.sum()), spans, staleness, waits)


def _result(
    cfg: SimConfig, makespan: float, learner_busy: float, spans: list, staleness: Counter, waits: list[float]
) -> SimResult:
    makespan = float(makespan)
    gen_busy = sum(min(end, makespan) - start for start, end in spans if start < makespan)
    learner_idle = makespan - learner_busy
    generator_idle = cfg.workers * makespan - gen_busy
    return SimResult(
        makespan=makespan,
        learner_idle=learner_idle,
        generator_idle=generator_idle,
        learner_idle_fraction=learner_idle / makespan,
        generator_idle_fraction=generator_idle / (cfg.workers * makespan),
        steps_per_hour=cfg.steps * 3600.0 / makespan,
        staleness=dict(sorted(staleness.items())),
        learner_waits=waits,
    )


def run_policies(base: SimConfig, policies: Sequence[str], staleness: int) -> dict[str, SimResult]:
    """Every policy on the same prompts (same seed): the label names s for the SSP ones."""
    results = {}
    for policy in policies:
        label = policy.replace("ssp", f"ssp({staleness})") if policy.startswith("ssp") else policy
        results[label] = simulate(policy_config(base, policy, staleness))
    return results


def format_table(results: dict[str, SimResult], reference: str | None = None) -> str:
    """A fixed-width table of runs; ``reference`` adds each run's idle reduction against that run."""
    head = f"{'policy':<16} {'learner idle':>12} {'gen idle':>9} {'total idle (w-h)':>17} {'steps/h':>8}"
    head += f" {'vs ' + reference:>12}" if reference else ""
    lines = [head + "  staleness (s: groups)"]
    for name, r in results.items():
        row = f"{name:<16} {r.learner_idle_fraction:>12.1%} {r.generator_idle_fraction:>9.1%}"
        row += f" {r.total_idle / 3600:>17.1f} {r.steps_per_hour:>8.1f}"
        if reference:
            row += f" {0.0 - reduction(results[reference], r):>+12.1%}"
        lines.append(row + "  " + " ".join(f"{k}:{v}" for k, v in r.staleness.items()))
    return "\n".join(lines)


def reduction(baseline: SimResult, other: SimResult) -> float:
    """The share of ``baseline``'s total idle time that ``other`` removes."""
    return 1.0 - other.total_idle / baseline.total_idle


# ------------------------------------------------------------------------------------------------------ calibration

CALIBRATION_KEYS = {"workers", "batch_groups", "max_staleness", "decode_s_per_token", "group_lengths", "train_s"}


def calibrate(path: str | Path, seed: int = 0) -> list[dict]:
    """Predicted vs measured idle fractions for the runs of a measurement file (schema in docs/grpo_scheduler.md).

    Each run replays its measured group lengths and learner step times (resampled) through :func:`simulate` with
    its own W, B and s; the rows carry both fractions and their differences in points.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the calibration file: {exc}") from None
    runs = data.get("runs") if isinstance(data, dict) else None
    if not isinstance(runs, list) or not runs:
        raise ValueError(f"{path}: expected an object with a non-empty list under 'runs'")
    return [_calibrate_run(path, i, run, seed) for i, run in enumerate(runs)]


def _calibrate_run(path: Path, i: int, run: dict, seed: int) -> dict:
    missing = sorted(CALIBRATION_KEYS - set(run)) + ([] if isinstance(run.get("measured"), dict) else ["measured"])
    if missing:
        raise ValueError(f"{path}: runs[{i}] lacks {', '.join(missing)}")
    train_s = run["train_s"]
    cfg = SimConfig(
        workers=int(run["workers"]),
        batch_groups=int(run["batch_groups"]),
        steps=int(run.get("steps", len(train_s) if isinstance(train_s, list) else 20)),
        max_staleness=int(run["max_staleness"]),
        priority=bool(run.get("priority", False)),
        decode_s=float(run["decode_s_per_token"]),
        train_s=tuple(train_s) if isinstance(train_s, list) else float(train_s),
        lengths=LengthModel(values=tuple(float(x) for x in run["group_lengths"])),
        startup_s=float(run.get("startup_s", 0.0)),
        seed=seed,
    )
    result = simulate(cfg)
    row = {"name": run.get("name", f"run{i}"), "config": asdict(cfg)}
    for key in ("learner_idle_fraction", "generator_idle_fraction"):
        if key not in run["measured"]:
            raise ValueError(f"{path}: runs[{i}].measured lacks {key}")
        row[f"predicted_{key}"] = getattr(result, key)
        row[f"measured_{key}"] = float(run["measured"][key])
    return row
