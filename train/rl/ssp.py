"""Bounded-staleness (SSP) rollouts: weight publication, the staleness queue and truncated importance weights.

Stale-synchronous parallelism lets an actor generate groups with the *published* policy while the learner trains,
at most ``s`` (``max_staleness``) versions ahead. The learner publishes version ``k + 1`` after its ``k``-th
optimizer step; every group carries the version ``v`` it was generated with and is trained at step ``k`` with
staleness ``k - v``. Three pieces, each usable on its own (train/rl/actor.py runs the actor, train/rl/trainer.py
trains on its groups):

* **Publication.** :class:`WeightStore` (in-process, for a thread actor) publishes a cloned state-dict snapshot by
  swapping one reference under a lock; a snapshot is never mutated after publication, so a reader holds a complete
  version. :class:`FileWeightStore` (for a process actor) writes ``{"version", "state_dict"}`` to a temporary file,
  fsyncs it and ``os.replace``\\ s it over the published file, then the version hint beside it: a reader opens either
  the old or the new file, never a half-written one, and takes the version from inside the file it loaded.
* **Admission and the queue.** :func:`admission_budget` is the actor's throttle (the scheduler simulator's
  admission, train/rl/schedule_sim.py, made to survive steps that take more than ``B`` groups): with ``B`` groups per
  learner step, ``c`` steps whose groups the learner has collected, ``t`` groups taken so far for step ``c`` and
  ``buffered`` groups produced but not yet taken, the actor may start ``B * (v + s + 1 - c) - buffered - min(t, B)``
  groups with version ``v``: each would be trained at most ``s`` versions late. At ``s = 0`` this is synchronous
  GRPO: nothing is generated while the learner trains. :class:`StalenessQueue` is the learner's side:
  :meth:`StalenessQueue.take` collects groups for step ``k`` and *drops* any with ``k - v > s`` (a safety net: with
  the budget it happens only to groups admitted for a resample round the learner then did not need), and checks the
  actor's health while it waits.
* **Correction.** :func:`truncated_importance_weights`: per token ``min(exp(logp_learner - logp_actor), C)``, trl's
  ``vllm_importance_sampling_mode="token_truncate"`` formula (``vllm_importance_sampling_clip_max`` is its ``C``).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_lib
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

ROLLOUT_MODES = ("sync", "ssp")


class ActorError(RuntimeError):
    """The rollout actor crashed, hung (no heartbeat) or stopped; raised in the learner."""


@dataclass
class Group:
    """The ``G`` completions of one prompt, as the actor generated them.

    ``position`` is the prompt's dataset index; ``prompt_ids`` the prompt tokens the actor conditioned on;
    ``completion_ids`` / ``logprobs`` one list per completion (EOS included when it stopped on one; the sampling
    log-probability of each token); ``version`` the published policy version it was generated with; ``call`` the
    actor's generate call that produced it (several groups are decoded together) and ``seconds`` that call's time.
    """

    position: int
    prompt_ids: list[int]
    completion_ids: list[list[int]]
    logprobs: list[list[float]]
    version: int
    seconds: float = 0.0
    call: int = 0

    @property
    def length(self) -> int:
        """Decode steps of the group: its longest completion."""
        return max((len(c) for c in self.completion_ids), default=0)


# ----------------------------------------------------------------------------------------------- importance weights


def truncated_importance_weights(
    learner_logps: torch.Tensor, actor_logps: torch.Tensor, mask: torch.Tensor, cap: float
) -> torch.Tensor:
    """Per-token ``min(exp(logp_learner - logp_actor), cap)``; 1 where ``mask`` is 0 or the actor's value is NaN.

    Off-policy correction of tokens sampled by a stale actor: the loss of a token is weighted by how much likelier the
    learner's current policy makes it than the policy that sampled it, truncated at ``cap`` (truncated importance
    sampling, as trl's ``token_truncate``) so one token cannot dominate a step. Padding gets weight 1 (it is masked
    out of the loss anyway).
    """
    if cap <= 0:
        raise ValueError(f"importance weight cap must be > 0, got {cap}")
    diff = torch.nan_to_num((learner_logps - actor_logps) * mask, nan=0.0)
    return torch.clamp(torch.exp(diff), max=cap)


# ------------------------------------------------------------------------------------------------------ publication


def snapshot(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A detached CPU copy of a state dict (the learner keeps training its own tensors)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in state_dict.items()}


class WeightStore:
    """In-process publication: ``publish`` swaps in a new immutable snapshot; ``latest`` returns (version, weights)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._current: tuple[int, dict[str, torch.Tensor]] | None = None

    def publish(self, state_dict: dict[str, torch.Tensor], version: int) -> None:
        snap = snapshot(state_dict)  # copied outside the lock: readers never wait for the copy
        with self._lock:
            if self._current is not None and version <= self._current[0]:
                raise ValueError(f"published version {version} after version {self._current[0]}")
            self._current = (version, snap)

    def version(self) -> int:
        with self._lock:
            return -1 if self._current is None else self._current[0]

    def latest(self) -> tuple[int, dict[str, torch.Tensor]]:
        with self._lock:
            if self._current is None:
                raise LookupError("no weights published yet")
            return self._current


class FileWeightStore:
    """Publication through a file, for an actor in another process: ``<path>`` holds the weights and their version,
    ``<path>.version`` a hint readers poll. Both are replaced atomically (temporary file, fsync, ``os.replace``)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.hint = self.path.with_name(self.path.name + ".version")

    def publish(self, state_dict: dict[str, torch.Tensor], version: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.path, lambda f: torch.save({"version": version, "state_dict": snapshot(state_dict)}, f))
        _atomic_write(self.hint, lambda f: f.write(str(version).encode()))

    def version(self) -> int:
        """The last published version (-1 before the first); a hint: :meth:`latest` reads the version it loads."""
        try:
            return int(self.hint.read_text())
        except (FileNotFoundError, ValueError):
            return -1

    def latest(self) -> tuple[int, dict[str, torch.Tensor]]:
        try:
            payload = torch.load(self.path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise LookupError(f"{self.path}: no weights published yet") from None
        return int(payload["version"]), payload["state_dict"]


def _atomic_write(path: Path, write: Callable[[Any], Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # atomic on POSIX: a reader opens the old file or the new one


# --------------------------------------------------------------------------------------------- admission and queue


def admission_budget(
    buffered: int,
    version: int,
    steps_collected: int,
    max_staleness: int,
    batch_groups: int,
    taken_current: int = 0,
    wanted: int = 0,
) -> int:
    """How many groups the actor may start now with ``version`` so that none is trained more than ``s`` versions late.

    ``steps_collected`` (c) steps have all their groups; the learner has taken ``taken_current`` groups for step c
    so far and is waiting for ``wanted`` more. Groups are consumed B a step, so a new group lands at step
    ``c + (taken_current + buffered) // B`` at the earliest; the budget keeps that step at most ``version + s``:
    ``B * (version + s + 1 - c) - buffered - min(taken_current, B)``. When step c needs more than B groups (dynamic
    sampling's resample rounds) and the learner is waiting, the groups it waits for are admitted too (they land at
    step c). Nothing is admitted with a version already too old for step c (``version + s < c``).
    """
    if version + max_staleness < steps_collected:
        return 0
    room = batch_groups * (version + max_staleness + 1 - steps_collected) - buffered - min(taken_current, batch_groups)
    if taken_current >= batch_groups and wanted > buffered:
        room = max(room, wanted - buffered)
    return max(room, 0)


def admitted(buffered: int, version: int, steps_collected: int, max_staleness: int, batch_groups: int) -> bool:
    """:func:`admission_budget` > 0 between steps (nothing taken yet for step ``steps_collected``)."""
    return admission_budget(buffered, version, steps_collected, max_staleness, batch_groups) > 0


class Counters:
    """What the actor needs to know of the learner, shared across threads or processes (``mp.Value``\\ s):
    groups ``produced`` by the actor, groups ``taken`` (trained or dropped), steps ``collected``, groups taken for
    the step being collected (``current``) and groups the learner is waiting for (``wanted``)."""

    def __init__(self, ctx: Any = None) -> None:
        ctx = ctx or mp.get_context("spawn")
        self.produced, self.taken, self.collected, self.current, self.wanted = (ctx.Value("q", 0) for _ in range(5))

    def buffered(self) -> int:
        return int(self.produced.value) - int(self.taken.value)

    def budget(self, version: int, max_staleness: int, batch_groups: int) -> int:
        """How many groups the actor may start now with ``version`` (0: it must wait for the learner)."""
        with self.current.get_lock():  # the learner changes taken, current and collected under this lock
            return admission_budget(
                self.buffered(),
                version,
                int(self.collected.value),
                max_staleness,
                batch_groups,
                int(self.current.value),
                int(self.wanted.value),
            )

    @staticmethod
    def add(value: Any, n: int) -> None:
        with value.get_lock():
            value.value += n


@dataclass
class TakeStats:
    """What the learner's takes saw: staleness of trained groups, groups dropped as too stale, seconds waited."""

    staleness: Counter = field(default_factory=Counter)
    dropped: int = 0
    wait_s: float = 0.0


class StalenessQueue:
    """The learner's side of the actor's groups (see the module docstring).

    Groups arrive by :meth:`put` (a thread actor) or from ``source`` (a ``multiprocessing`` queue a process actor
    fills). ``health`` is called while :meth:`take` waits and raises :class:`ActorError` when the actor is gone.
    """

    def __init__(
        self,
        max_staleness: int,
        batch_groups: int,
        counters: Counters | None = None,
        source: Any = None,
        health: Callable[[], None] | None = None,
        poll_s: float = 0.05,
    ) -> None:
        if max_staleness < 0 or batch_groups < 1:
            raise ValueError(f"max_staleness >= 0 and batch_groups >= 1 needed, got {max_staleness}, {batch_groups}")
        self.max_staleness, self.batch_groups = max_staleness, batch_groups
        self.counters = counters or Counters()
        self.source, self.health, self.poll_s = source, health, poll_s
        self._items: deque[Group] = deque()
        self._cond = threading.Condition()
        self.stats = TakeStats()

    def put(self, group: Group) -> None:
        with self._cond:
            self._items.append(group)
            self._cond.notify_all()

    def _pull(self, timeout: float) -> Group | None:
        """The next group, waiting at most ``timeout`` seconds."""
        if self.source is not None:
            try:
                return self.source.get(timeout=timeout)
            except queue_lib.Empty:
                return None
        with self._cond:
            if not self._items:
                self._cond.wait(timeout)
            return self._items.popleft() if self._items else None

    def take(self, n: int, step: int, timeout: float | None = None) -> list[Group]:
        """``n`` groups trainable at learner step ``step`` (staleness ``step - version <= s``), oldest first; staler
        ones are dropped. Raises :class:`ActorError` (actor unhealthy) or :class:`TimeoutError` (``timeout``)."""
        out: list[Group] = []
        start = time.perf_counter()
        while len(out) < n:
            if self.health is not None:
                self.health()
            self.counters.wanted.value = n - len(out)
            if timeout is not None and time.perf_counter() - start > timeout:
                raise TimeoutError(f"the actor gave {len(out)} of {n} groups for step {step} in {timeout:.0f} s")
            group = self._pull(self.poll_s)
            if group is None:
                continue
            with self.counters.current.get_lock():  # one lock for both: the actor never sees one without the other
                self.counters.taken.value += 1
                self.counters.current.value += 1
            lag = step - group.version
            if lag < 0:
                raise ActorError(f"a group of version {group.version} reached learner step {step}: not yet published")
            if lag > self.max_staleness:
                self.stats.dropped += 1
                continue
            out.append(group)
        self.counters.wanted.value = 0
        self.stats.wait_s += time.perf_counter() - start
        for g in out:
            self.stats.staleness[step - g.version] += 1
        return out

    def step_collected(self) -> None:
        """The learner has all groups of one step: admission moves on by one step."""
        with self.counters.current.get_lock():
            self.counters.collected.value += 1
            self.counters.current.value = 0
