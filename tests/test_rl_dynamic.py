"""Dynamic sampling in FastslowGRPOTrainer: the keep mask, full batches of informative groups, the token normaliser,
and running out of resample rounds."""

from __future__ import annotations

import logging
import math
import zlib

import torch
from datasets import Dataset

from train.core.configs import GRPOConfig
from train.core.loading import load_model, load_tokenizer
from train.rl.trainer import FastslowGRPOTrainer, informative_groups

NAN = math.nan
G = 2  # num_generations
LOCAL_BATCH = 8  # per_device_train_batch_size (steps_per_generation 1): 4 groups per generation batch


def test_keep_mask_on_fixed_rewards_with_unscorable_rows():
    rewards = torch.tensor(
        [
            [1.0, 1.0, 1.0],  # all equal: no signal
            [0.0, 1.0, 1.0],  # differ: kept
            [NAN, NAN, NAN],  # unscorable: dropped
            [NAN, 1.0, NAN],  # a single scored reply: no variance to learn from
            [NAN, 0.0, 1.0],  # two scored replies that differ: kept
            [0.5, 0.5 + 1e-9, 0.5],  # float noise is not a signal
            [NAN, 2.0, 2.0],  # scored ones equal: dropped
        ]
    ).flatten()
    assert informative_groups(rewards, 3).tolist() == [False, True, False, False, True, False, False]


def completion_text(completion) -> str:
    return completion[0]["content"] if isinstance(completion, list) else completion


def scripted_reward(prompts, completions, kind, **_):
    """flat prompts: every reply 1.0 (zero variance); nan prompts: unscorable; live prompts: a value per reply text."""
    out = []
    for completion, k in zip(completions, kind, strict=True):
        if k == "flat":
            out.append(1.0)
        elif k == "nan":
            out.append(None)
        else:
            out.append(zlib.crc32(completion_text(completion).encode()) / 2**32)
    return out


def prompts(kinds: list[str]) -> Dataset:
    rows = [
        {"prompt": [{"role": "user", "content": f"add {i} {i + 1}"}], "id": f"p{i}", "kind": k}
        for i, k in enumerate(kinds)
    ]
    return Dataset.from_list(rows)


class Recording(FastslowGRPOTrainer):
    """Keeps every generation batch handed to training."""

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        if self.model.training:
            self.batches = [*getattr(self, "batches", []), out]
        return out


def make_trainer(model_dir, out, dataset, **kwargs) -> Recording:
    args = GRPOConfig(
        output_dir=str(out),
        max_steps=2,
        per_device_train_batch_size=LOCAL_BATCH,
        num_generations=G,
        max_completion_length=8,
        temperature=1.0,
        learning_rate=1e-4,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=0,
        use_cpu=True,
        dataloader_num_workers=0,
    )
    return Recording(
        model=load_model(model_dir),
        reward_funcs=[scripted_reward],
        args=args,
        train_dataset=dataset,
        processing_class=load_tokenizer(model_dir),
        **kwargs,
    )


def logged(trainer, key: str) -> list[float]:
    return [e[key] for e in trainer.state.log_history if key in e]


def test_batches_are_full_of_informative_groups(tiny_model_dir, tmp_path):
    # 4 of 12 prompts give informative groups; the rest are flat or unscorable.
    kinds = ["flat", "nan", "live", "flat", "live", "nan", "flat", "live", "flat", "nan", "live", "flat"]
    trainer = make_trainer(tiny_model_dir, tmp_path, prompts(kinds), dynamic_sampling=True, max_resample_rounds=30)
    trainer.args.max_steps = 1
    trainer.train()
    assert len(trainer.batches) == 1
    for batch in trainer.batches:
        assert batch["completion_ids"].shape[0] == LOCAL_BATCH == trainer.args.generation_batch_size
        # Every group is informative: its rewards differ, so group-scaled advantages are not all zero.
        groups = batch["advantages"].view(-1, G)
        assert bool((groups.abs().sum(dim=1) > 0).all())
        # The token normaliser counts exactly the loss tokens trained on.
        assert batch["num_items_in_batch"].item() == batch["completion_mask"].sum().item() > 0
        assert batch["prompt_ids"].shape[0] == batch["completion_mask"].shape[0] == batch["advantages"].shape[0]
    assert logged(trainer, "dynamic_sampling/zero_std_frac_trained") == [0.0]
    [raw] = logged(trainer, "dynamic_sampling/zero_std_frac_raw")
    [rounds] = logged(trainer, "dynamic_sampling/resample_rounds")
    [extra] = logged(trainer, "dynamic_sampling/extra_completions")
    assert rounds >= 1 and extra > 0 and 0 < raw < 1
    # Every generated group is either trained or counted as uninformative: (raw groups) x (1 - raw share) = 4 kept.
    generated_groups = LOCAL_BATCH // G + extra / G
    assert round(generated_groups * (1 - raw)) >= LOCAL_BATCH // G
    assert logged(trainer, "dynamic_sampling/exhausted") == [0.0]


def test_running_out_of_rounds_is_logged_and_trains_on_what_there_is(tiny_model_dir, tmp_path, caplog):
    kinds = ["flat"] * 10 + ["live"]  # one informative prompt in eleven: two rounds cannot fill four groups
    trainer = make_trainer(tiny_model_dir, tmp_path, prompts(kinds), dynamic_sampling=True, max_resample_rounds=1)
    with caplog.at_level(logging.WARNING, logger="train.rl.trainer"):
        trainer.train()  # no crash
    assert "dynamic sampling: 1 resample round(s) found" in caplog.text
    assert logged(trainer, "dynamic_sampling/exhausted") == [1.0, 1.0]
    assert logged(trainer, "dynamic_sampling/resample_rounds") == [1.0, 1.0]
    for batch, trained_zero in zip(trainer.batches, logged(trainer, "dynamic_sampling/zero_std_frac_trained")):
        assert batch["completion_ids"].shape[0] == LOCAL_BATCH
        groups = batch["completion_mask"].view(-1, G, batch["completion_mask"].shape[1]).sum(dim=(1, 2))
        masked = int((groups == 0).sum())
        assert trained_zero == masked / (LOCAL_BATCH // G) > 0  # filler groups are masked out of the loss
        assert batch["num_items_in_batch"].item() == batch["completion_mask"].sum().item()


def test_without_dynamic_sampling_the_trainer_is_trls(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path, prompts(["flat", "live"] * 4))
    trainer.args.max_steps = 1
    trainer.train()
    assert not logged(trainer, "dynamic_sampling/resample_rounds")
    batch = trainer.batches[0]
    assert batch["num_items_in_batch"].item() == batch["completion_mask"].sum().item()
