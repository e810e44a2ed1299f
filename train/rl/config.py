"""Options of the GRPO recipe (training options are trl's ``GRPOConfig``), and where a run resumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from transformers.trainer_utils import get_last_checkpoint
from trl import ModelConfig

from train.core.args import DataArguments
from train.core.configs import GRPOConfig
from train.rl.queue import QueueConfig


@dataclass
class GRPOScriptArguments(DataArguments):
    """Data, mode and reward options of the GRPO recipe (training options are trl's ``GRPOConfig``)."""

    mode: str | None = field(
        default=None,
        metadata={
            "help": "Mode tag for prompts without one: slow (/think), fast (/no_think), auto (/auto_think); "
            "None keeps prompts as they are (slow is the template's default)."
        },
    )
    system_prompt: str | None = field(default=None, metadata={"help": "System message added to prompts without one."})
    mars: dict | str | None = field(
        default=None,
        metadata={
            "help": "MARS router config (rewards.router.MARSConfig): a mapping, a YAML file path, or a JSON object. "
            "None: the defaults."
        },
    )
    reward_layout: str = field(
        default="combined",
        metadata={
            "help": "`combined`: the router is one reward function; `separate`: one function per (task, source) "
            "with their weights as trl's reward_weights (trl then logs each as rewards/mars/<task>/<source>)."
        },
    )
    auto_resume: bool = field(
        default=True, metadata={"help": "Resume from the last checkpoint in output_dir when there is one."}
    )
    # Dynamic sampling and the prompt queue (train/rl/trainer.py, train/rl/queue.py; docs/grpo.md)
    dynamic_sampling: bool = field(
        default=False,
        metadata={
            "help": "DAPO dynamic sampling: drop groups whose rewards do not vary (or are unscorable) and generate "
            "fresh prompts' groups until the batch holds only informative groups."
        },
    )
    max_resample_rounds: int = field(
        default=4,
        metadata={
            "help": "Dynamic sampling: extra generation rounds per batch at most; when they run out the batch is "
            "trained with the missing groups masked out (logged as dynamic_sampling/exhausted)."
        },
    )
    pass_rate_file: str | None = field(
        default=None,
        metadata={
            "help": "JSONL of per-prompt pass rates keyed by id: the distillation stage's complexity.jsonl "
            "(complexity = 1 - pass rate) or records {id, pass_rate}. Feeds pass_rate_range and the queue's start."
        },
    )
    pass_rate_range: list[float] | None = field(
        default=None,
        metadata={
            "help": "[lo, hi]: train only on prompts whose pass rate in pass_rate_file lies in this band (inclusive; "
            "unlisted prompts are dropped). None: no filter."
        },
    )
    prompt_queue: bool = field(
        default=False,
        metadata={
            "help": "Draw prompts by priority p(1-p) + exploration + age from an EMA pass rate per prompt, mastered "
            "ones in a replay pool; its state is saved in each checkpoint (queue_state.json)."
        },
    )
    queue_ema: float = field(default=0.3, metadata={"help": "Queue: EMA weight of a new group's success rate."})
    queue_prior: float = field(
        default=0.5, metadata={"help": "Queue: starting pass rate of a prompt pass_rate_file does not list."}
    )
    queue_mastered: float = field(
        default=0.9, metadata={"help": "Queue: EMA pass rate from which a prompt is in the replay pool."}
    )
    queue_replay_prob: float = field(
        default=0.05, metadata={"help": "Queue: share of each draw's slots given to the replay pool."}
    )
    queue_exploration: float = field(
        default=0.05, metadata={"help": "Queue: bonus exploration / sqrt(1 + times drawn) for rarely drawn prompts."}
    )
    queue_age: float = field(
        default=0.05,
        metadata={"help": "Queue: weight added per pass over the queue a prompt has waited (nothing starves)."},
    )
    queue_success_threshold: float = field(
        default=0.5,
        metadata={
            "help": "Queue: a reply counts as a success when its weighted total reward exceeds this (use an "
            "unnormalised 0/1 accuracy source, `normalize: false` in mars, for a true pass rate)."
        },
    )

    # Bounded-staleness rollouts (train/rl/ssp.py, train/rl/actor.py; docs/grpo.md "Bounded-staleness rollouts")
    rollout_mode: str = field(
        default="sync",
        metadata={
            "help": "`sync`: trl generates each batch with the current weights; `ssp`: an actor generates groups with "
            "the last published weights while the learner trains, at most max_staleness versions ahead (on GPU with "
            "use_vllm: trl's AsyncGRPOTrainer and a vLLM server, train/rl/async_trl.py)."
        },
    )
    max_staleness: int = field(
        default=0,
        metadata={
            "help": "ssp: s, the most optimizer steps a group may lag the learner; staler groups are dropped "
            "(0: synchronous, nothing generated while the learner trains)."
        },
    )
    importance_cap: float = field(
        default=2.0,
        metadata={
            "help": "ssp: C in the per-token weight min(exp(logp_learner - logp_actor), C) on stale groups' "
            "advantages (trl's token_truncate importance sampling; its vllm_importance_sampling_clip_max)."
        },
    )
    rollout_actor: str = field(
        default="thread",
        metadata={
            "help": "ssp on CPU: `thread` (in-process weights) or `process` (a supervised child; weights through an "
            "atomically replaced file under output_dir/ssp)."
        },
    )
    actor_heartbeat_timeout: float = field(
        default=60.0,
        metadata={"help": "ssp: seconds without the actor child's heartbeat before the learner fails (and kills it)."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()  # the data source's keys: a bad preset or column mapping is refused here
        if self.pass_rate_range is not None:
            band = self.pass_rate_range
            if len(band) != 2 or not 0.0 <= band[0] <= band[1] <= 1.0:
                raise ValueError(f"pass_rate_range={band}: expected [lo, hi] with 0 <= lo <= hi <= 1")
            if self.pass_rate_file is None:
                raise ValueError("pass_rate_range needs pass_rate_file (the pass rates to filter by)")
        if self.max_resample_rounds < 0:
            raise ValueError(f"max_resample_rounds={self.max_resample_rounds}: expected a count >= 0")
        if self.rollout_mode not in ("sync", "ssp"):
            raise ValueError(f"rollout_mode={self.rollout_mode!r}: expected sync or ssp")
        if self.max_staleness < 0 or self.importance_cap <= 0:
            raise ValueError(f"max_staleness={self.max_staleness} (>= 0), importance_cap={self.importance_cap} (> 0)")
        if self.rollout_actor not in ("thread", "process"):
            raise ValueError(f"rollout_actor={self.rollout_actor!r}: expected thread or process")

    def queue_config(self, seed: int) -> QueueConfig:
        """The prompt queue's knobs from the ``queue_*`` keys."""
        return QueueConfig(
            ema=self.queue_ema,
            prior=self.queue_prior,
            mastered=self.queue_mastered,
            replay_prob=self.queue_replay_prob,
            exploration=self.queue_exploration,
            age=self.queue_age,
            seed=seed,
        )


# The config dataclasses of the GRPO recipe, in the order TrlParser fills them.
ARG_CLASSES = (GRPOScriptArguments, GRPOConfig, ModelConfig)


def resume_checkpoint(training_args: GRPOConfig, auto_resume: bool) -> str | None:
    """The checkpoint to resume from: the one asked for, else (``auto_resume``) the last in ``output_dir``."""
    if training_args.resume_from_checkpoint:
        return training_args.resume_from_checkpoint
    if auto_resume and Path(training_args.output_dir).is_dir():
        return get_last_checkpoint(training_args.output_dir)
    return None
