"""The SSP rollout actor: a loop that generates groups with the published weights, as a thread or a supervised process.

:func:`actor_loop` is the loop both run: read the published version (load it when it is newer), wait until
admission (train/rl/ssp.py) lets it start groups, draw prompts, generate their groups, hand them over. The model
side is a :class:`GroupGenerator` (``train.sampling``'s :class:`TransformersSampler` with ``logprobs=True``).

* :class:`ThreadActor`: the loop in a thread of the learner's process, weights through an in-process
  :class:`~train.rl.ssp.WeightStore`. An exception in the thread is kept and re-raised in the learner by
  :meth:`ThreadActor.check_health`.
* :class:`ProcessActor`: the loop in a spawned child process, weights through a
  :class:`~train.rl.ssp.FileWeightStore`, groups through a ``multiprocessing`` queue. Supervision: the child beats a
  heartbeat (a shared wall-clock time, from a daemon thread, so a long generate call does not look like a hang);
  :meth:`ProcessActor.check_health` raises :class:`~train.rl.ssp.ActorError` when the child has exited (with its
  traceback when it raised) or its heartbeat is older than ``heartbeat_timeout`` (a hung or stopped process, which is
  then killed; before the first beat, while the child imports torch, the limit is ``start_timeout``);
  :meth:`ProcessActor.stop` asks the child to stop, kills it if it does not within ``join_timeout`` and always reaps
  it by pid, so no process (not even a zombie) is left behind.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue as queue_lib
import signal
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from train.core.loading import load_model, load_tokenizer
from train.rl.ssp import ActorError, Counters, FileWeightStore, Group, WeightStore
from train.sampling.params import SamplingParams
from train.sampling.transformers import TransformersSampler, build_prompts

logger = logging.getLogger(__name__)


class Generator(Protocol):
    """The model side of an actor: loads published weights and generates groups."""

    def load(self, state_dict: dict) -> None: ...

    def __call__(self, positions: list[int], version: int, call: int) -> list[Group]: ...


class GroupGenerator:
    """Groups of ``params.n`` completions with their sampling log-probs, from a transformers model.

    ``prompts`` holds every training prompt (a string or a message list) by dataset position. ``generate_kwargs`` must
    make ``generate`` sample from the distribution the learner scores, ``softmax(logits / temperature)`` (trl's
    ``top_k=0``, no repetition penalty), or the importance weights compare different distributions.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        prompts: Sequence[Any],
        params: SamplingParams,
        *,
        chat_template_kwargs: dict[str, Any] | None = None,
        generate_kwargs: dict[str, Any] | None = None,
        batch_size: int = 64,
    ) -> None:
        self.model, self.tokenizer, self.prompts, self.params = model, tokenizer, list(prompts), params
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.sampler = TransformersSampler(
            model,
            tokenizer,
            batch_size,
            chat_template_kwargs=self.chat_template_kwargs,
            generate_kwargs=generate_kwargs,
            logprobs=True,
        )

    def load(self, state_dict: dict) -> None:
        self.model.load_state_dict(state_dict)

    def __call__(self, positions: list[int], version: int, call: int) -> list[Group]:
        start = time.perf_counter()
        prompts = [self.prompts[i] for i in positions]
        replies = self.sampler.sample(prompts, self.params)
        texts = build_prompts(self.tokenizer, prompts, None, self.chat_template_kwargs)
        prompt_ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        seconds = time.perf_counter() - start
        return [
            Group(
                position=i,
                prompt_ids=list(ids),
                completion_ids=[list(r.token_ids) for r in group],
                logprobs=[list(r.logprobs) for r in group],
                version=version,
                seconds=seconds,
                call=call,
            )
            for i, ids, group in zip(positions, prompt_ids, replies, strict=True)
        ]


def load_generator(
    model_dir: str,
    prompts: Sequence[Any],
    params: SamplingParams,
    chat_template_kwargs: dict[str, Any],
    generate_kwargs: dict[str, Any],
    trust_remote_code: bool = False,
) -> GroupGenerator:
    """A :class:`GroupGenerator` on a model loaded from ``model_dir`` (a process actor's factory, with ``partial``);
    ``trust_remote_code`` as the learner's (a checkpoint with its own modelling code, e.g. openPangu, needs it)."""
    tokenizer = load_tokenizer(model_dir, trust_remote_code=trust_remote_code)
    model = load_model(model_dir, tokenizer=tokenizer, trust_remote_code=trust_remote_code).eval()
    return GroupGenerator(
        model, tokenizer, prompts, params, chat_template_kwargs=chat_template_kwargs, generate_kwargs=generate_kwargs
    )


class SeededOrder:
    """Dataset positions in a seeded random order, epoch after epoch: a process actor's own prompt draw, and the
    fresh prompts of the learner's resample rounds."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.rng, self.order = size, np.random.default_rng(seed), []

    def __call__(self, n: int) -> list[int]:
        out = []
        while len(out) < n:
            if not self.order:
                self.order = self.rng.permutation(self.size).tolist()
            out.append(self.order.pop())
        return out


@dataclass
class ActorSettings:
    """How the actor paces itself: ``max_staleness`` s, ``batch_groups`` B (groups per learner step),
    ``groups_per_call`` (groups decoded together by one generate call) and ``poll_s`` (admission poll interval)."""

    max_staleness: int
    batch_groups: int
    groups_per_call: int
    poll_s: float = 0.005


def actor_loop(
    generator: Generator,
    store: WeightStore | FileWeightStore,
    counters: Counters,
    put: Callable[[Group], None],
    draw: Callable[[int], list[int]],
    settings: ActorSettings,
    stop: Any,
    beat: Callable[[], None] = lambda: None,
) -> None:
    """Generate groups until ``stop`` is set (see the module docstring). ``beat`` marks progress."""
    loaded, call = -1, 0
    while not stop.is_set():
        beat()
        if store.version() > loaded:
            loaded, state = store.latest()
            generator.load(state)
        budget = counters.budget(loaded, settings.max_staleness, settings.batch_groups)
        if budget == 0:
            time.sleep(settings.poll_s)  # s versions ahead: wait for the learner to publish
            continue
        groups = generator(draw(min(budget, settings.groups_per_call)), loaded, call)
        call += 1
        Counters.add(counters.produced, len(groups))  # before the put: the learner never sees a negative buffer
        for group in groups:
            put(group)


class ThreadActor:
    """:func:`actor_loop` in a daemon thread; its exception is re-raised in the learner by :meth:`check_health`."""

    def __init__(self, run: Callable[[threading.Event], None]) -> None:
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self._run = run
        self.thread = threading.Thread(target=self._main, name="ssp-actor", daemon=True)

    def _main(self) -> None:
        try:
            self._run(self.stop_event)
        except BaseException as exc:  # kept for the learner: a thread's exception is otherwise only printed
            self.error = exc

    def start(self) -> None:
        self.thread.start()

    def check_health(self) -> None:
        if self.error is not None:
            raise ActorError(f"the rollout actor thread failed: {self.error!r}") from self.error
        if not self.thread.is_alive() and not self.stop_event.is_set():
            raise ActorError("the rollout actor thread stopped")

    def stop(self, timeout: float = 30.0) -> None:
        self.stop_event.set()
        if self.thread.is_alive():
            self.thread.join(timeout)


@dataclass
class ProcessSpec:
    """What a spawned actor child needs (picklable): ``factory()`` builds its generator in the child."""

    factory: Callable[[], Generator]
    weights_path: str
    n_prompts: int
    seed: int
    settings: ActorSettings
    heartbeat_s: float = 0.5
    torch_threads: int | None = None  # a spawned child starts with torch's default (all cores), not the parent's


def _child_main(spec: ProcessSpec, counters: Counters, out: Any, stop: Any, heartbeat: Any, errors: Any) -> None:
    """The actor child: heartbeat thread, then :func:`actor_loop`; an exception goes to ``errors`` and exits 1."""

    def beat_forever() -> None:
        while True:
            heartbeat.value = time.time()  # wall clock: monotonic clocks are per process
            time.sleep(spec.heartbeat_s)

    threading.Thread(target=beat_forever, daemon=True).start()
    if spec.torch_threads:
        torch.set_num_threads(spec.torch_threads)
    code = 0
    try:
        generator = spec.factory()
        store = FileWeightStore(spec.weights_path)
        actor_loop(generator, store, counters, out.put, SeededOrder(spec.n_prompts, spec.seed), spec.settings, stop)
    except BaseException:
        errors.put(traceback.format_exc())
        code = 1
    # Exit at once, past the interpreter's shutdown (which can stall on torch's and the queues' threads): the
    # traceback is flushed to its pipe first; groups the learner will not read are abandoned.
    errors.close()
    errors.join_thread()
    out.cancel_join_thread()
    os._exit(code)


class ProcessActor:
    """:func:`actor_loop` in a spawned, supervised child process (see the module docstring)."""

    def __init__(
        self,
        spec: ProcessSpec,
        heartbeat_timeout: float = 30.0,
        join_timeout: float = 10.0,
        start_timeout: float = 300.0,
    ) -> None:
        self.spec, self.heartbeat_timeout, self.join_timeout = spec, heartbeat_timeout, join_timeout
        self.start_timeout = start_timeout
        ctx = mp.get_context("spawn")  # never fork a process holding torch's threads
        self.counters = Counters(ctx)
        self.groups = ctx.Queue()
        self.stop_event = ctx.Event()
        self.heartbeat = ctx.Value("d", 0.0)
        self.errors = ctx.Queue()
        args = (spec, self.counters, self.groups, self.stop_event, self.heartbeat, self.errors)
        self.process = ctx.Process(target=_child_main, args=args, name="ssp-actor", daemon=True)
        self.pid: int | None = None

    def start(self) -> None:
        self.started_at = time.time()
        self.process.start()
        self.pid = self.process.pid

    def check_health(self) -> None:
        """Raise :class:`ActorError` if the child exited or its heartbeat is older than ``heartbeat_timeout``."""
        if not self.process.is_alive():
            code = self.process.exitcode
            detail = self._error_text()
            self.stop()
            raise ActorError(f"the rollout actor (pid {self.pid}) exited with code {code}" + detail)
        if self.heartbeat.value == 0.0:  # still importing torch: the first beat gets start_timeout
            age, limit = time.time() - self.started_at, self.start_timeout
        else:
            age, limit = time.time() - self.heartbeat.value, self.heartbeat_timeout
        if age > limit:
            self.stop(graceful=False)  # a hung child does not answer a stop request
            raise ActorError(
                f"the rollout actor (pid {self.pid}) sent no heartbeat for {age:.1f} s (limit {limit:g} s); "
                "it was killed"
            )

    def _error_text(self) -> str:
        try:
            return ":\n" + self.errors.get(timeout=1.0)
        except queue_lib.Empty:
            return " (no traceback: killed by a signal or os._exit)"

    def stop(self, graceful: bool = True) -> None:
        """Stop the child: ask (``graceful``), then SIGKILL after ``join_timeout``; always reap it (join) so no
        zombie remains."""
        if self.pid is None:
            return
        self.stop_event.set()
        if graceful:
            self.process.join(self.join_timeout)
        if self.process.is_alive():
            logger.warning("rollout actor pid %d is still running: killing it", self.pid)
            try:
                os.kill(self.pid, signal.SIGKILL)  # SIGKILL also ends a SIGSTOPped process
            except ProcessLookupError:
                pass
            self.process.join(self.join_timeout)
        for q in (self.groups, self.errors):
            q.cancel_join_thread()
            q.close()


def pid_alive(pid: int) -> bool:
    """Is ``pid`` a process, zombies included (a zombie still has a /proc entry)? psutil-free."""
    return Path(f"/proc/{pid}").exists()
