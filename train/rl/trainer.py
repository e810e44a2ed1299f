"""``FastslowGRPOTrainer``: trl's ``GRPOTrainer`` plus DAPO-style dynamic sampling and a prioritized prompt queue.

trl 1.16 gives the losses, clipping, truncation masking and the ``frac_reward_zero_std`` metric; it trains on every
group it generates, including those whose rewards are all equal (zero advantage: no gradient, yet they count in
the token normaliser). This subclass changes one thing, the generation batch that
``_generate_and_score_completions`` returns:

* **Dynamic sampling** (``dynamic_sampling=True``): a group is *informative* when at least two of its completions
  were scored and their total rewards differ (:func:`informative_groups`). Uninformative groups are dropped and
  fresh prompts are generated and scored, up to ``max_resample_rounds`` rounds, until the batch holds
  ``generation_batch_size`` completions of informative groups. When the rounds run out the batch is filled with
  dropped groups whose loss mask is zeroed (a warning and ``dynamic_sampling/exhausted`` say so): shapes stay what
  trl expects and training goes on. ``num_items_in_batch`` (dapo/cispo's token normaliser) is recomputed over the
  kept tokens only. With several ranks every rank runs the same number of rounds: the shortfall is gathered and the
  ranks resample while any rank is short, since generation and scoring hold collective calls.
* **Prompt queue** (``prompt_queue=...``, :class:`train.rl.queue.PromptQueue`): the prompts of every generation round
  come from the queue instead of the dataloader's batch, and every scored group updates its prompt's pass rate.
  Every rank holds the same queue: it draws the global batch and takes its slice, and the updates are gathered
  and applied in the same order everywhere. The queue's state is saved in every checkpoint
  (``queue_state.json``) and restored by ``train(resume_from_checkpoint=...)``.

* **Bounded-staleness rollouts** (``rollout_mode="ssp"``, ``max_staleness=s``; train/rl/ssp.py, train/rl/actor.py):
  an actor (a thread, or a supervised child process) generates groups with the published weights while the
  learner trains; the weights are published after every optimizer step (version = ``global_step``). Every
  generation round's groups are taken from the actor (dropping any staler than s) instead of generated here, and
  trl scores them (``rollout_func`` hands trl the actor's tokens and sampling log-probs). In the loss the
  advantages are weighted per token by ``min(exp(logp_learner - logp_actor), importance_cap)`` (advantages become
  ``(B, T)``, which trl's loss accepts: a non-negative weight on the advantage scales each token's clipped loss
  term exactly as trl's ``importance_sampling_ratio`` would). ``logp_learner`` is the loss's own forward pass,
  detached (or trl's ``old_per_token_logps`` where trl computed them): no extra forward per step. Metrics ``ssp/*``.

Metrics (train mode, per generation batch): ``dynamic_sampling/zero_std_frac_raw`` (share of uninformative groups
among all generated), ``dynamic_sampling/zero_std_frac_trained`` (in the trained batch: 0 when enough were found),
``dynamic_sampling/resample_rounds``, ``dynamic_sampling/extra_completions`` (the resampling cost),
``dynamic_sampling/exhausted``, and the queue's ``queue/*``.
"""

from __future__ import annotations

import copy
import logging
import math
import threading
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate.utils import gather_object
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint
from trl import GRPOTrainer

from train.rl.actor import (
    ActorSettings,
    GroupGenerator,
    ProcessActor,
    ProcessSpec,
    SeededOrder,
    ThreadActor,
    actor_loop,
    load_generator,
)
from train.rl.queue import PromptQueue
from train.rl.ssp import (
    ROLLOUT_MODES,
    FileWeightStore,
    Group,
    StalenessQueue,
    WeightStore,
    truncated_importance_weights,
)
from train.sampling.params import SamplingParams

logger = logging.getLogger(__name__)

# Output keys of trl's _generate_and_score_completions, by how a row is padded when rounds are merged.
LEFT_PADDED = ("prompt_ids", "prompt_mask")
RIGHT_PADDED = (
    "completion_ids",
    "completion_mask",
    "tool_mask",
    "old_per_token_logps",
    "ref_per_token_logps",
    "sampling_per_token_logps",
    "importance_sampling_ratio",
)
PER_ROW = ("advantages",)
RECOMPUTED = ("num_items_in_batch",)


def informative_groups(rewards: torch.Tensor, group_size: int, atol: float = 1e-6) -> torch.Tensor:
    """Which groups carry a learning signal: at least two scored (non-NaN) rewards that differ by more than ``atol``.

    ``rewards`` holds one total reward per completion, groups of ``group_size`` consecutive rows; a NaN is a
    completion no reward function could score. Returns one bool per group.
    """
    grouped = rewards.view(-1, group_size)
    scored = ~torch.isnan(grouped)
    high = torch.where(scored, grouped, torch.full_like(grouped, -math.inf)).max(dim=1).values
    low = torch.where(scored, grouped, torch.full_like(grouped, math.inf)).min(dim=1).values
    return (scored.sum(dim=1) >= 2) & (high - low > atol)


class QueueStateCallback(TrainerCallback):
    """Writes the prompt queue's state into every checkpoint folder (main process; atomically)."""

    def __init__(self, queue: PromptQueue):
        self.queue = queue

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.queue.save(Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")


class SSPCallback(TrainerCallback):
    """Starts the actor once the trainer's state is loaded, publishes the weights after every optimizer step, and
    stops the actor at the end (the trainer's ``train`` also stops it when training raises)."""

    def __init__(self, trainer: FastslowGRPOTrainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer._start_actor()

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer._publish(state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        self.trainer._stop_actor()


class FastslowGRPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` with dynamic sampling and a prioritized prompt queue (see the module docstring)."""

    def __init__(
        self,
        *args: Any,
        dynamic_sampling: bool = False,
        max_resample_rounds: int = 4,
        prompt_queue: PromptQueue | None = None,
        success_threshold: float = 0.5,
        rollout_mode: str = "sync",
        max_staleness: int = 0,
        importance_cap: float = 2.0,
        actor: str = "thread",
        heartbeat_timeout: float = 60.0,
        groups_per_call: int | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        if max_resample_rounds < 0:
            raise ValueError(f"max_resample_rounds={max_resample_rounds}: expected a count >= 0")
        self.dynamic_sampling = dynamic_sampling
        self.max_resample_rounds = max_resample_rounds
        self.prompt_queue = prompt_queue
        self.success_threshold = success_threshold
        local = self.args.per_device_train_batch_size * self.args.steps_per_generation
        whole_groups = dynamic_sampling or prompt_queue is not None or rollout_mode == "ssp"
        if whole_groups and local % self.num_generations:
            raise ValueError(
                f"dynamic sampling, the prompt queue and ssp keep whole groups on each rank: "
                f"per_device_train_batch_size x steps_per_generation ({local}) must be a multiple of num_generations "
                f"({self.num_generations})"
            )
        if prompt_queue is not None:
            if len(prompt_queue) != len(self.train_dataset):
                n, m = len(prompt_queue), len(self.train_dataset)
                raise ValueError(f"the prompt queue has {n} prompts, the training dataset {m}")
            self.add_callback(QueueStateCallback(prompt_queue))
        self._stream = SeededOrder(len(self.train_dataset), self.args.seed + 1)  # apart from trl's sampler order
        self._last_rewards_per_func: torch.Tensor | None = None
        self._init_ssp(rollout_mode, max_staleness, importance_cap, actor, heartbeat_timeout, groups_per_call)

    # -- resume: the queue's state comes back with the checkpoint

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any):
        checkpoint = resume_from_checkpoint
        if checkpoint is True:
            checkpoint = get_last_checkpoint(self.args.output_dir)
        if self.prompt_queue is not None and checkpoint and self.prompt_queue.load(checkpoint):
            logger.info("prompt queue restored from %s", checkpoint)
        try:
            return super().train(resume_from_checkpoint, *args, **kwargs)
        finally:
            self._stop_actor()  # also when training raised: no actor thread or child outlives train()

    # -- bounded-staleness rollouts (rollout_mode="ssp")

    def _init_ssp(self, mode: str, s: int, cap: float, actor: str, heartbeat: float, per_call: int | None) -> None:
        if mode not in ROLLOUT_MODES:
            raise ValueError(f"rollout_mode={mode!r}: expected one of {ROLLOUT_MODES}")
        if s < 0 or cap <= 0 or heartbeat <= 0:
            raise ValueError(f"max_staleness >= 0, importance_cap > 0, heartbeat_timeout > 0 needed: {s}, {cap}")
        if actor not in ("thread", "process"):
            raise ValueError(f"actor={actor!r}: expected 'thread' or 'process'")
        self.ssp = mode == "ssp"
        self.staleness_bound, self.is_cap, self.actor_kind = s, cap, actor
        self.heartbeat_timeout = heartbeat
        self.batch_groups = self.args.generation_batch_size // self.num_generations
        self.groups_per_call = per_call or self.batch_groups
        self._actor: ThreadActor | ProcessActor | None = None
        self._ssp_queue: StalenessQueue | None = None
        self._ssp_pending: list[Group] = []
        self._ssp_loss_inputs: dict[str, Any] | None = None  # the batch whose advantages the loss's forward weights
        self._prompt_lock = threading.Lock()  # the actor thread draws from the prompt queue the learner updates
        if not self.ssp:
            return
        if self.accelerator.num_processes > 1 or self.use_vllm:
            raise NotImplementedError("rollout_mode=ssp runs one learner process with a transformers actor here; on "
                                      "GPU use trl's AsyncGRPOTrainer (train/rl/async_trl.py)")  # fmt: skip
        if self.rollout_func is not None:
            raise NotImplementedError("rollout_mode=ssp brings its own rollouts: it cannot take a rollout_func")
        if actor == "process" and self.prompt_queue is not None:
            raise NotImplementedError("the prompt queue needs the thread actor (a process actor draws its own order)")
        self.add_callback(SSPCallback(self))

    def _sampling(self) -> tuple[SamplingParams, dict[str, Any]]:
        """The actor samples the distribution trl's loss scores: softmax(logits / temperature), trl's top-k/p."""
        params = SamplingParams(
            n=self.num_generations,
            temperature=self.temperature,
            top_p=self.top_p,
            max_new_tokens=self.max_completion_length,
        )
        extra = {"top_k": self.top_k or None, "min_p": self.min_p, "repetition_penalty": self.repetition_penalty}
        return params, extra

    def _draw_positions(self, n: int) -> list[int]:
        with self._prompt_lock:
            return self.prompt_queue.draw(n) if self.prompt_queue is not None else self._stream(n)

    def _start_actor(self) -> None:
        if not self.ssp or self._actor is not None:
            return
        settings = ActorSettings(self.staleness_bound, self.batch_groups, self.groups_per_call)
        params, generate_kwargs = self._sampling()
        prompts = self.train_dataset["prompt"]
        template = dict(self.chat_template_kwargs or {})
        model = self.accelerator.unwrap_model(self.model)
        if self.actor_kind == "thread":
            store = WeightStore()
            store.publish(model.state_dict(), self.state.global_step)
            actor_model = copy.deepcopy(model).eval()
            generator = GroupGenerator(actor_model, self._tokenizer, prompts, params,
                                       chat_template_kwargs=template, generate_kwargs=generate_kwargs)  # fmt: skip
            queue = StalenessQueue(self.staleness_bound, self.batch_groups)
            run = partial(actor_loop, generator, store, queue.counters, queue.put, self._draw_positions, settings)
            self._actor = ThreadActor(run)
        else:
            root = Path(self.args.output_dir) / "ssp"
            model.save_pretrained(root / "model")  # architecture and start weights for the child
            self._tokenizer.save_pretrained(root / "model")
            store = FileWeightStore(root / "weights.pt")
            store.publish(model.state_dict(), self.state.global_step)
            remote = bool(getattr(self.args, "trust_remote_code", False))
            factory = partial(load_generator, str(root / "model"), prompts, params, template, generate_kwargs, remote)
            spec = ProcessSpec(factory, str(store.path), len(self.train_dataset), self.args.seed + 1, settings,
                               torch_threads=torch.get_num_threads())  # fmt: skip
            self._actor = ProcessActor(spec, heartbeat_timeout=self.heartbeat_timeout)
            queue = StalenessQueue(self.staleness_bound, self.batch_groups, self._actor.counters, self._actor.groups)
        queue.health = self._actor.check_health
        self._ssp_store, self._ssp_queue = store, queue
        self._actor.start()
        logger.info("ssp: %s actor started (max_staleness %d, %d groups a step)", self.actor_kind,
                    self.staleness_bound, self.batch_groups)  # fmt: skip

    def _publish(self, version: int) -> None:
        if self._actor is not None:
            self._ssp_store.publish(self.accelerator.unwrap_model(self.model).state_dict(), version)

    def _stop_actor(self) -> None:
        if self._actor is not None:
            self._actor.stop()
            self._actor = None

    def _ssp_rollout(self, prompts: list, trainer: GRPOTrainer) -> dict[str, list]:
        """trl's ``rollout_func``: the pending actor groups of this round, as token ids and sampling log-probs."""
        G = self.num_generations
        groups, self._ssp_pending = self._ssp_pending[: len(prompts) // G], self._ssp_pending[len(prompts) // G :]
        if len(groups) * G != len(prompts):
            raise RuntimeError(f"ssp: {len(groups)} actor groups for {len(prompts)} prompts")
        return {
            "prompt_ids": [g.prompt_ids for g in groups for _ in range(G)],
            "completion_ids": [c for g in groups for c in g.completion_ids],
            "logprobs": [lp for g in groups for lp in g.logprobs],
        }

    def _ssp_collected(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The round's batch is complete: the actor may run ahead for the next step. Weighting happens in the loss."""
        self._ssp_queue.step_collected()
        return batch

    def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        if not (self.ssp and model.training):
            return super()._compute_loss(model, inputs)
        # A copy: trl reuses its buffered batch when num_iterations > 1, and the weighting must not compound.
        self._ssp_loss_inputs = dict(inputs)
        try:
            loss = super()._compute_loss(model, self._ssp_loss_inputs)
            if self._ssp_loss_inputs is not None:  # trl's loss changed shape: never train stale groups unweighted
                raise RuntimeError("ssp: trl's loss did not compute per-token log-probs with entropies; the "
                                   "importance weights could not be applied")  # fmt: skip
            return loss
        finally:
            self._ssp_loss_inputs = None

    def _get_per_token_logps_and_entropies(self, model: Any, *args: Any, **kwargs: Any) -> Any:
        out = super()._get_per_token_logps_and_entropies(model, *args, **kwargs)
        inputs = self._ssp_loss_inputs
        if inputs is not None and kwargs.get("compute_entropy"):  # the loss's forward: trl reads advantages next
            self._ssp_loss_inputs = None
            self._ssp_weight(inputs, out[0].detach())
        return out

    def _ssp_weight(self, inputs: dict[str, Any], current: torch.Tensor) -> None:
        """Weight the advantages per token by the truncated importance weight of the learner against the actor.

        The learner's log-probs are the loss's own forward (detached): with one optimisation pass per generation
        they are the collection-time policy's, so no second forward is needed; trl's ``old_per_token_logps`` (the
        collection-time policy, when trl computed them) take precedence.
        """
        mask = inputs["completion_mask"] * inputs["tool_mask"] if "tool_mask" in inputs else inputs["completion_mask"]
        old = inputs.get("old_per_token_logps")
        learner = current if old is None else old
        weights = truncated_importance_weights(learner, inputs["sampling_per_token_logps"], mask, self.is_cap)
        advantages = inputs["advantages"]
        self._ssp_last = {"advantages": advantages, "weights": weights, "learner_logps": learner,
                          "actor_logps": inputs["sampling_per_token_logps"], "mask": mask}  # fmt: skip
        inputs["advantages"] = (advantages.unsqueeze(1) if advantages.dim() == 1 else advantages) * weights
        self._log_ssp(weights, mask)

    def _log_ssp(self, weights: torch.Tensor, mask: torch.Tensor) -> None:
        metrics, kept = self._metrics["train"], weights[mask.bool()]
        if kept.numel():
            metrics["ssp/is_weight_mean"].append(kept.mean().item())
            metrics["ssp/is_weight_min"].append(kept.min().item())
            metrics["ssp/is_truncated_frac"].append((kept >= self.is_cap).float().mean().item())
        if self._ssp_queue is None:  # a loss computed outside train() (tests): no actor, no queue
            return
        stats = self._ssp_queue.stats
        lags = [lag for lag, n in stats.staleness.items() for _ in range(n)]
        metrics["ssp/staleness_max"].append(float(max(lags, default=0)))
        metrics["ssp/staleness_mean"].append(float(np.mean(lags)) if lags else 0.0)
        metrics["ssp/dropped_groups"].append(float(stats.dropped))
        metrics["ssp/learner_wait_s"].append(stats.wait_s)

    # -- scoring hooks

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        # Kept for the keep mask and the queue: trl folds the rewards into advantages and does not return them.
        self._last_rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        return self._last_rewards_per_func

    def _local_totals(self, n_local: int) -> torch.Tensor:
        """This rank's completions' weighted total rewards, NaN where no reward function scored (as trl sums them)."""
        rpf = self._last_rewards_per_func
        totals = (rpf * self.reward_weights.to(rpf.device).unsqueeze(0)).nansum(dim=1)
        totals[torch.isnan(rpf).all(dim=1)] = math.nan
        start = self.accelerator.process_index * n_local
        return totals[start : start + n_local].float().cpu()

    def _draw(self, n_groups_local: int) -> tuple[list[dict[str, Any]], list[int]]:
        """Fresh prompts for ``n_groups_local`` groups per rank (the queue's or the seeded stream's global draw,
        this rank's slice of it): the rows, each repeated num_generations times, and their dataset positions."""
        if self.ssp:  # the actor's groups: their prompts are the rows
            groups = self._ssp_queue.take(n_groups_local, step=self.state.global_step)
            self._ssp_pending.extend(groups)
            rows = [dict(self.train_dataset[g.position]) for g in groups for _ in range(self.num_generations)]
            return rows, [g.position for g in groups]
        n = n_groups_local * self.accelerator.num_processes
        positions = self.prompt_queue.draw(n) if self.prompt_queue is not None else self._stream(n)
        start = self.accelerator.process_index * n_groups_local
        mine = positions[start : start + n_groups_local]
        return [dict(self.train_dataset[i]) for i in mine for _ in range(self.num_generations)], mine

    def _score_round(self, inputs: list[dict[str, Any]], positions: list[int] | None) -> tuple[dict, torch.Tensor]:
        """One trl generation round, its informative-group mask, and the queue's update from it."""
        previous = self.rollout_func
        if self.ssp:
            self.rollout_func = self._ssp_rollout  # only for this round: evaluation still generates here
        try:
            output = super()._generate_and_score_completions(inputs)
        finally:
            self.rollout_func = previous
        totals = self._local_totals(len(inputs))
        keep = informative_groups(totals, self.num_generations)
        if self.prompt_queue is not None and positions is not None:
            grouped = totals.view(-1, self.num_generations)
            scored = (~torch.isnan(grouped)).sum(dim=1)
            wins = (torch.nan_to_num(grouped, nan=-math.inf) > self.success_threshold).sum(dim=1)
            local = list(zip(positions, wins.tolist(), scored.tolist(), strict=True))
            with self._prompt_lock:
                for i, s, t in gather_object(local):  # every rank applies every rank's groups, in rank order
                    self.prompt_queue.update(i, s, t)
        return output, keep

    # -- the generation batch

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        if not self.model.training or (not self.dynamic_sampling and self.prompt_queue is None and not self.ssp):
            return super()._generate_and_score_completions(inputs)
        batch = self._generation_batch(inputs)
        return self._ssp_collected(batch) if self.ssp else batch

    def _generation_batch(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        target = len(inputs) // self.num_generations
        positions = None
        if self.prompt_queue is not None or self.ssp:
            inputs, positions = self._draw(target)
        output, keep = self._score_round(inputs, positions)
        if not self.dynamic_sampling:
            self._log_queue()
            return output
        rounds, outputs, keeps = 0, [output], [keep]
        while True:
            kept, generated = self._global_counts(keeps)
            short = self._global_max(max(target - int(sum(int(k.sum()) for k in keeps)), 0))
            if short == 0 or rounds == self.max_resample_rounds:
                break
            rounds += 1
            # Draw for the shortfall, scaled up by the informative share so far (at most one full batch).
            rate = kept / generated
            n = target if rate == 0 else min(target, max(short, math.ceil(short / rate)))
            round_inputs, positions = self._draw(n)
            output, keep = self._score_round(round_inputs, positions)
            outputs.append(output)
            keeps.append(keep)
        batch, filler = self._assemble(outputs, keeps, target)
        self._log_dynamic(keeps, rounds, filler, target, short)
        self._log_queue()
        return batch

    def _global_counts(self, keeps: list[torch.Tensor]) -> tuple[int, int]:
        counts = [sum(int(k.sum()) for k in keeps), sum(len(k) for k in keeps)]
        local = torch.tensor(counts, device=self.accelerator.device)
        kept, generated = self.accelerator.gather(local).view(-1, 2).sum(dim=0).tolist()
        return int(kept), int(generated)

    def _global_max(self, value: int) -> int:
        return int(self.accelerator.gather(torch.tensor([value], device=self.accelerator.device)).max().item())

    def _assemble(self, outputs: list[dict], keeps: list[torch.Tensor], target: int) -> tuple[dict[str, Any], int]:
        """The first ``target`` informative groups of all rounds, padded to one width; short: dropped groups, masked.

        Returns the batch and how many of its groups are such fillers.
        """
        unknown = set(outputs[0]) - set(LEFT_PADDED + RIGHT_PADDED + PER_ROW + RECOMPUTED)
        if unknown:
            raise NotImplementedError(f"dynamic sampling cannot merge generation outputs with keys {sorted(unknown)}")
        chosen = [(r, g) for r, keep in enumerate(keeps) for g in torch.nonzero(keep).flatten().tolist()][:target]
        filler = target - len(chosen)
        if filler:
            dropped = [(r, g) for r, keep in enumerate(keeps) for g in torch.nonzero(~keep).flatten().tolist()]
            chosen += dropped[:filler]
        G = self.num_generations
        rows = [(r, g * G + j) for r, g in chosen for j in range(G)]
        is_filler = torch.tensor([k >= target - filler for k in range(len(chosen)) for _ in range(G)])
        batch: dict[str, Any] = {}
        for key in outputs[0]:
            if key in RECOMPUTED:
                continue
            pieces = [outputs[r][key][i] for r, i in rows]
            batch[key] = self._stack(key, pieces, outputs)
        device = batch["completion_mask"].device
        is_filler = is_filler.to(device)
        for key in ("completion_mask", "tool_mask"):
            if key in batch:
                batch[key] = batch[key] * (~is_filler).unsqueeze(1).to(batch[key].dtype)
        batch["advantages"] = batch["advantages"].masked_fill(
            is_filler.view(-1, *[1] * (batch["advantages"].dim() - 1)), 0.0
        )
        loss_mask = batch["completion_mask"] * batch["tool_mask"] if "tool_mask" in batch else batch["completion_mask"]
        batch["num_items_in_batch"] = self.accelerator.gather(loss_mask.sum()).sum()  # kept loss tokens only
        return batch, filler

    def _stack(self, key: str, pieces: list[torch.Tensor], outputs: list[dict]) -> torch.Tensor:
        """Rows from several rounds as one tensor: sequences padded to the widest round (prompts on the left)."""
        if key in PER_ROW or pieces[0].dim() == 0:
            return torch.stack(pieces)
        width = max(p.size(-1) for p in pieces)
        if key in RIGHT_PADDED and pieces[0].size(-1) == 1 and outputs[0]["completion_ids"].size(1) != 1:
            return torch.stack(pieces)  # a sequence-level importance ratio: one value per row
        value = self._tokenizer.pad_token_id if key in ("prompt_ids", "completion_ids") else 0
        padded = [
            F.pad(p, (width - p.size(-1), 0) if key in LEFT_PADDED else (0, width - p.size(-1)), value=value)
            for p in pieces
        ]
        return torch.stack(padded)

    # -- metrics

    def _log_dynamic(self, keeps: list[torch.Tensor], rounds: int, filler: int, target: int, short: int) -> None:
        kept, generated = self._global_counts(keeps)
        groups_trained = target * self.accelerator.num_processes
        filler_total = self._global_sum(filler)
        metrics = self._metrics["train"]
        metrics["dynamic_sampling/zero_std_frac_raw"].append(1.0 - kept / generated)
        metrics["dynamic_sampling/zero_std_frac_trained"].append(filler_total / groups_trained)
        metrics["dynamic_sampling/resample_rounds"].append(float(rounds))
        extra = (generated - groups_trained) * self.num_generations  # completions beyond the first round
        metrics["dynamic_sampling/extra_completions"].append(float(extra))
        metrics["dynamic_sampling/exhausted"].append(float(short > 0))
        if short > 0:
            logger.warning(
                "dynamic sampling: %d resample round(s) found %d informative group(s) of %d needed; training on "
                "them with %d uninformative group(s) masked out of the loss (raise max_resample_rounds, or filter "
                "prompts by pass rate)",
                rounds,
                groups_trained - filler_total,
                groups_trained,
                filler_total,
            )

    def _global_sum(self, value: int) -> int:
        return int(self.accelerator.gather(torch.tensor([value], device=self.accelerator.device)).sum().item())

    def _log_queue(self) -> None:
        if self.prompt_queue is not None:
            for name, value in self.prompt_queue.stats().items():
                self._metrics["train"][name].append(value)
