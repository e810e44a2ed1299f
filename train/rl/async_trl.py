"""``rollout_mode: ssp`` on GPU: trl's experimental ``AsyncGRPOTrainer`` with a vLLM server.

On a CPU the recipe runs :class:`~train.rl.trainer.FastslowGRPOTrainer` with a transformers actor
(train/rl/actor.py). With ``use_vllm: true`` the same keys build trl 1.16's ``AsyncGRPOTrainer``
(``trl.experimental.async_grpo``): its ``AsyncRolloutWorker`` child sends prompts to a ``trl vllm-serve`` server,
its ``RolloutQueueDataset`` drops samples more than ``max_staleness`` versions old, and its
``WeightTransferClient`` streams the weights to the server over NCCL after every step. It needs CUDA, vLLM and a
flash/tree-attention kernel, so **it has not been run here** (no GPU): :func:`async_grpo_config` is checked by a test
against a fake config class only.

Mapping (ours -> trl):

* ``max_staleness`` -> ``AsyncGRPOConfig.max_staleness``; ``actor_heartbeat_timeout`` -> ``heartbeat_stale_after_s``;
  ``weight_sync_steps = 1`` (publish after every optimizer step, as on CPU);
* GRPOConfig's ``vllm_server_base_url`` (else ``http://{vllm_server_host}:{vllm_server_port}``) and
  ``vllm_server_timeout``; sampling (``num_generations``, ``max_completion_length``, ``temperature``, ``top_p``,
  ``top_k``, ``min_p``, ``repetition_penalty``, ``chat_template_kwargs``), clipping (``epsilon``, ``epsilon_high``)
  and the Trainer keys below, unchanged.
* :func:`build_async_trainer` makes trl's rollout worker spawn :class:`train.rl.async_worker.FastslowRolloutLoop`,
  a subclass of its child loop that hands the rewards the whole reply (trl would parse the think block out, and
  refuses an unknown chat template such as ours), and with ``dynamic_sampling`` and ``prompt_queue`` (with
  ``queue_success_threshold`` and the queue's state in checkpoints) draws prompts from the queue and drops groups
  without a learning signal (``max_resample_rounds`` has no meaning there: the worker generates continuously and
  simply sends fewer groups).
* Not mapped: ``importance_cap`` (AsyncGRPOTrainer has no truncated importance weight: its loss clips the ratio to
  the vLLM sampling log-probs, PPO-style, with ``epsilon``/``epsilon_high``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from train.rl.async_worker import AsyncQueueStateCallback, FastslowAsyncGRPOTrainer, use_fastslow_loop

logger = logging.getLogger(__name__)

# TrainingArguments keys copied as they are.
TRAINER_KEYS = (
    "output_dir",
    "seed",
    "learning_rate",
    "lr_scheduler_type",
    "warmup_steps",
    "max_grad_norm",
    "logging_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "max_steps",
    "num_train_epochs",
    "save_strategy",
    "save_steps",
    "save_total_limit",
    "report_to",
    "bf16",
    "gradient_checkpointing",
)
SAMPLING_KEYS = (
    "num_generations",
    "max_completion_length",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "chat_template_kwargs",
    "epsilon",
    "epsilon_high",
    "log_completions",
)


def async_grpo_kwargs(script_args: Any, training_args: Any) -> dict[str, Any]:
    """The ``AsyncGRPOConfig`` keyword arguments for our GRPOScriptArguments and GRPOConfig (see the module doc)."""
    if script_args.rollout_mode != "ssp":
        raise ValueError(f"the async trainer is rollout_mode: ssp, not {script_args.rollout_mode!r}")
    url = training_args.vllm_server_base_url or (
        f"http://{training_args.vllm_server_host}:{training_args.vllm_server_port}"
    )
    kwargs = {k: getattr(training_args, k) for k in TRAINER_KEYS + SAMPLING_KEYS}
    kwargs.update(
        max_staleness=script_args.max_staleness,
        heartbeat_stale_after_s=script_args.actor_heartbeat_timeout,
        weight_sync_steps=1,
        vllm_server_base_url=url,
        vllm_server_timeout=training_args.vllm_server_timeout,
    )
    return kwargs


def async_grpo_config(script_args: Any, training_args: Any, config_cls: type | None = None) -> Any:
    """An ``AsyncGRPOConfig`` (or ``config_cls``, for tests) built by :func:`async_grpo_kwargs`."""
    if config_cls is None:
        from trl.experimental.async_grpo import AsyncGRPOConfig  # experimental: imported only when used

        config_cls = AsyncGRPOConfig
    return config_cls(**async_grpo_kwargs(script_args, training_args))


def build_async_trainer(
    model_path: str,
    reward_funcs: list,
    config: Any,
    train_dataset: Any,
    tokenizer: Any,
    callbacks: list | None = None,
    trainer_cls: type | None = None,
    *,
    dynamic_sampling: bool = False,
    prompt_queue: Any = None,
    success_threshold: float = 0.5,
    resume: str | None = None,
) -> Any:
    """trl's ``AsyncGRPOTrainer`` (our subclass, whose checkpoints resume after dropped groups; or ``trainer_cls``) on
    ``model_path`` (it loads the model itself, by path).

    Its rollout worker runs :class:`train.rl.async_worker.FastslowRolloutLoop`: the whole reply reaches the rewards,
    and ``dynamic_sampling`` and the ``prompt_queue`` (restored from ``resume``'s ``queue_state.json`` when there is
    one) work as on the CPU path (module docstring).
    """
    trainer_cls = trainer_cls or FastslowAsyncGRPOTrainer
    trainer = trainer_cls(
        model=model_path,
        reward_funcs=reward_funcs,
        args=config,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    _install_loop(trainer, config, dynamic_sampling, prompt_queue, success_threshold, resume)
    return trainer


def _install_loop(trainer: Any, config: Any, dynamic: bool, queue: Any, threshold: float, resume: str | None) -> None:
    worker = getattr(trainer, "rollout_worker", None)
    accelerator = getattr(trainer, "accelerator", None)
    if worker is None:
        if accelerator is None or accelerator.is_main_process:  # only rank 0 holds trl's worker
            raise RuntimeError("the async trainer has no rollout worker on the main process to run fastslow's loop")
        return
    queue_dir = None
    if queue is not None:  # the child writes the queue's state there; each checkpoint gets a copy
        queue_dir = Path(config.output_dir) / "rollout_queue"
        queue_dir.mkdir(parents=True, exist_ok=True)
        if resume and queue.load(resume):
            logger.info("prompt queue restored from %s", resume)
        trainer.add_callback(AsyncQueueStateCallback(queue_dir))
    use_fastslow_loop(worker, dynamic_sampling=dynamic, prompt_queue=queue, success_threshold=threshold,
                      queue_dir=str(queue_dir) if queue_dir else None)  # fmt: skip
