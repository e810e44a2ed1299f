"""Dynamic sampling and the prompt queue inside trl's async rollout worker (``rollout_mode: ssp``, ``use_vllm: true``).

trl 1.16's ``AsyncGRPOTrainer`` generates in a spawned child process (``_AsyncRolloutLoop``): one loop sends the
prompts of its dataset iterator to a vLLM server, one scores the finished groups and puts their samples on the
queue the trainer reads. It has no dynamic sampling and no prompt priority. :class:`FastslowRolloutLoop` adds both
where trl leaves room for them, in its two per-group hooks:

* ``_repeat_iterator`` (which prompt the next group answers): with a :class:`~train.rl.queue.PromptQueue`, the queue
  draws it by priority instead of the dataset order, one prompt per group as the worker asks (the synchronous
  trainer draws a round's prompts at once, distinct; here two groups in flight may share a prompt);
* ``_score_group`` (a group's samples): after trl scores the group, its success count updates the prompt's EMA pass
  rate, and with ``dynamic_sampling`` a group without a learning signal (fewer than two scored rewards, or all
  equal: :func:`~train.rl.trainer.informative_groups`) yields no samples. The generate loop keeps drawing, so the
  trainer's batches fill with informative groups only: DAPO's dynamic sampling without resample rounds.

It also fixes how the worker reads a reply. trl parses each generated turn with the tokenizer's response template
(``add_response_schema``: known chat templates only, an error for ours) and hands the reward functions the parsed
message, whose ``content`` excludes the think block for Qwen3-style templates. The MARS rewards read the whole reply
(the format reward checks the think block, the length reward counts it), as trl's synchronous trainer gives it to
them, so the loop sets a response template whose ``content`` is the whole reply up to the EOS token
(:func:`whole_reply_template`); tool calls are not parsed out (no fastslow recipe uses tools).

The child owns its copy of the queue (pickled at spawn). It writes the queue's state to ``queue_dir``
(``queue_state.json``, atomically) every ``queue_save_every`` groups and when the loop ends;
:class:`AsyncQueueStateCallback` copies that file into every checkpoint, and a resumed run starts the queue from the
checkpoint's copy. Because the worker runs ahead of the trainer, a checkpoint's queue has seen up to a few steps'
worth of groups more than the model was trained on; the queue is a sampling heuristic, so that lag changes which
prompts come next, not what is trained on them.

Metrics (through trl's metric queue): ``dynamic_sampling/zero_std_frac_raw`` (share of scored groups without a
signal), ``dynamic_sampling/dropped_groups_total``, ``queue/mean_pass_rate``, ``queue/mastered_frac``,
``queue/never_drawn_frac``.

It needs trl's async trainer, a vLLM server and a GPU to run for real; **it has not been run here**. The tests drive
the real ``_AsyncRolloutLoop`` subclass on a CPU: its iterator, its scoring of fixed groups, the queue's round trip.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl.chat_template_utils import _SUPPORTS_RESPONSE_TEMPLATE

with warnings.catch_warnings():  # the instability warning, on every recipe start; docs/grpo.md says what we rely on
    warnings.filterwarnings("ignore", message=".*trl.experimental")
    from trl.experimental.async_grpo import AsyncGRPOTrainer
    from trl.experimental.async_grpo.async_rollout_worker import RolloutGroup, RolloutSample, _AsyncRolloutLoop

from train.core.fingerprint import write_json_atomic
from train.rl.queue import STATE_FILE, PromptQueue
from train.rl.trainer import informative_groups

logger = logging.getLogger(__name__)


def whole_reply_template(tokenizer: Any) -> dict[str, Any]:
    """A response template (or, before transformers 5.13, a legacy response schema) that parses a generated turn
    into ``{"role": "assistant", "content": <the whole reply, think block included, EOS and what follows cut>}``."""
    eos = re.escape(tokenizer.eos_token)
    if _SUPPORTS_RESPONSE_TEMPLATE:
        close = {"close_pattern": rf"{eos}\s*", "content": "text"}
        return {"defaults": {"role": "assistant"}, "fields": {"content": close}}
    return {
        "x-regex": rf"^(?P<content>[\s\S]*?)\s*(?:{eos}[\s\S]*)?$",
        "type": "object",
        "properties": {"role": {"const": "assistant"}, "content": {"type": "string"}},
    }


def conversation_rewards(group: RolloutGroup, samples: list[RolloutSample]) -> list[float]:
    """One total reward per conversation of ``group`` (NaN where unscorable), read from trl's samples.

    trl writes one sample per training row and a conversation may fork into several rows (tool calls); every row
    of a conversation carries its reward.
    """
    rewards, row = [], 0
    for sequences in group.completions_sequences:
        rewards.append(samples[row].metrics["reward"] if sequences else math.nan)
        row += len(sequences)
    return rewards


class FastslowRolloutLoop(_AsyncRolloutLoop):
    """trl's rollout loop with the prompt queue and dynamic sampling (see the module docstring)."""

    def __init__(
        self,
        *,
        dynamic_sampling: bool = False,
        prompt_queue: PromptQueue | None = None,
        success_threshold: float = 0.5,
        queue_dir: str | None = None,
        queue_save_every: int = 16,
        **kwargs: Any,
    ):
        tokenizer = kwargs["processing_class"]  # the child's own (pickled) copy: the parent's is untouched
        attribute = "response_template" if _SUPPORTS_RESPONSE_TEMPLATE else "response_schema"
        setattr(tokenizer, attribute, whole_reply_template(tokenizer))
        super().__init__(**kwargs)
        if prompt_queue is not None and len(prompt_queue) != len(self.dataset):
            raise ValueError(
                f"the prompt queue has {len(prompt_queue)} prompts, the training dataset {len(self.dataset)}"
            )
        self.dynamic_sampling = dynamic_sampling
        self.prompt_queue = prompt_queue
        self.success_threshold = success_threshold
        self.queue_dir = queue_dir
        self.queue_save_every = max(1, queue_save_every)
        self._positions: dict[int, int] = {}  # group id -> dataset position, while the group is out
        self._groups_scored = 0

    def _repeat_iterator(self) -> Iterator[tuple[int, dict[str, Any]]]:
        if self.prompt_queue is None:
            yield from super()._repeat_iterator()
            return
        group_id = 0
        while True:
            (position,) = self.prompt_queue.draw(1)
            self._positions[group_id] = position
            row = self.dataset[position]
            for _ in range(self.num_generations):
                yield group_id, row
            group_id += 1

    async def _score_group(self, group: RolloutGroup) -> list[RolloutSample]:
        samples = await super()._score_group(group)
        rewards = conversation_rewards(group, samples)
        self._update_queue(group.group_id, rewards)
        keep = bool(informative_groups(torch.tensor(rewards, dtype=torch.float64), len(rewards))[0])
        rate = self._rates["dynamic_sampling/zero_std_frac_raw"]
        rate[0], rate[1] = rate[0] + (not keep), rate[1] + 1
        if self.dynamic_sampling and not keep:
            self._counters["dynamic_sampling/dropped_groups_total"] += 1
            return []
        return samples

    def _update_queue(self, group_id: int, rewards: list[float]) -> None:
        if self.prompt_queue is None:
            return
        position = self._positions.pop(group_id)
        scored = [r for r in rewards if not math.isnan(r)]
        self.prompt_queue.update(position, sum(r > self.success_threshold for r in scored), len(scored))
        for name, value in self.prompt_queue.stats().items():
            self._counters[name] = value  # a gauge: trl logs its mean over the logging window
        self._groups_scored += 1
        if self.queue_dir and self._groups_scored % self.queue_save_every == 0:
            self.prompt_queue.save(self.queue_dir)

    def run(self) -> None:
        try:
            super().run()
        finally:
            if self.prompt_queue is not None and self.queue_dir:
                self.prompt_queue.save(self.queue_dir)


def record_resume_point(checkpoint_dir: str | Path, start_index: int, trained_groups: set[int]) -> int | None:
    """Rewrite trl's ``rollout_state.json`` in ``checkpoint_dir`` to resume after the last trained group.

    trl resumes the dataset at its first group id that was never trained; a group the loop dropped (dynamic sampling)
    is never trained, so that point would stay at the first dropped group and a resumed run would replay the data
    from near the start. After the highest trained id instead: groups still in flight at the save are skipped, not
    replayed. Returns the new prompt index (None when there is no state file or nothing was trained).
    """
    path = Path(checkpoint_dir) / "rollout_state.json"
    if not (path.is_file() and trained_groups):
        return None
    state = json.loads(path.read_text(encoding="utf-8"))
    state["prompt_index"] = start_index + max(trained_groups) + 1
    write_json_atomic(path, state)
    return state["prompt_index"]


class FastslowAsyncGRPOTrainer(AsyncGRPOTrainer):
    """trl's ``AsyncGRPOTrainer`` whose checkpoints resume after the groups :class:`FastslowRolloutLoop` dropped."""

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        worker = self.rollout_worker
        if self.accelerator.is_main_process and getattr(worker, "_loop_kwargs", {}).get("dynamic_sampling"):
            folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            record_resume_point(folder, worker._loop_kwargs["dataset_start_index"], self._trained_groups)


def use_fastslow_loop(worker: Any, **options: Any) -> None:
    """Make trl's ``AsyncRolloutWorker`` (not yet started) spawn :class:`FastslowRolloutLoop` with ``options``.

    trl's worker reads its loop class (``_loop_cls``) and the loop's keyword arguments (``_loop_kwargs``) when it
    spawns the child at the start of training; both are set here, on the instance the trainer built.
    """
    if getattr(worker, "_process", None) is not None:
        raise RuntimeError("the rollout worker is already running: set the loop before training starts")
    worker._loop_cls = FastslowRolloutLoop
    worker._loop_kwargs.update(options)


class AsyncQueueStateCallback(TrainerCallback):
    """Copies the worker's ``queue_state.json`` into every checkpoint (main process)."""

    def __init__(self, queue_dir: str | Path):
        self.queue_dir = Path(queue_dir)

    def on_save(self, args, state, control, **kwargs):
        source = self.queue_dir / STATE_FILE
        if state.is_world_process_zero and source.is_file():
            target = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}" / STATE_FILE
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(".json.tmp")
            shutil.copyfile(source, tmp)
            tmp.replace(target)
