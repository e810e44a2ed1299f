"""Options of the GRPO recipe (training options are trl's ``GRPOConfig``), and where a run resumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from transformers.trainer_utils import get_last_checkpoint
from trl import ModelConfig

from train.core.args import DataArguments
from train.core.configs import GRPOConfig


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


# The config dataclasses of the GRPO recipe, in the order TrlParser fills them.
ARG_CLASSES = (GRPOScriptArguments, GRPOConfig, ModelConfig)


def resume_checkpoint(training_args: GRPOConfig, auto_resume: bool) -> str | None:
    """The checkpoint to resume from: the one asked for, else (``auto_resume``) the last in ``output_dir``."""
    if training_args.resume_from_checkpoint:
        return training_args.resume_from_checkpoint
    if auto_resume and Path(training_args.output_dir).is_dir():
        return get_last_checkpoint(training_args.output_dir)
    return None
