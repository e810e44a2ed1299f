"""Repeated rows tokenised once: the same prepared data set as trl's, in the same order, for fewer rows tokenised."""

from __future__ import annotations

import torch
from datasets import Dataset, concatenate_datasets
from trl import ModelConfig, SFTTrainer

from train.core.configs import SFTConfig
from train.core.data import read_records
from train.core.unique_rows import dataset_rows, expand, unique_rows
from train.sft import build_sft_trainer, load_for_training, sft_dataset


def test_unique_rows_and_their_expansion():
    rows = [{"a": 1}, {"a": 2}, {"a": 1}, {"a": [3]}, {"a": 2}]
    first, inverse = unique_rows(rows)
    assert first == [0, 1, 3] and inverse == [0, 1, 0, 2, 1]
    assert all(rows[i] == rows[first[u]] for i, u in enumerate(inverse))
    assert unique_rows([{"b": 1, "a": 2}, {"a": 2, "b": 1}])[0] == [0]  # key order is not content
    assert expand(inverse, [0, 1, 2]) == inverse
    # preparation dropped distinct row 1 (no trained token left): its copies go, the rest keep their order
    assert expand(inverse, [0, 2]) == [0, 0, 1]
    assert expand([], []) == []


def test_dataset_rows_reads_every_row_in_order_a_batch_at_a_time():
    data = Dataset.from_list([{"x": i, "m": [{"role": "user", "content": str(i)}]} for i in range(7)])
    assert list(dataset_rows(data, batch_size=3)) == data.to_list()
    assert unique_rows(dataset_rows(data.select([0, 1, 0, 2]), batch_size=3)) == ([0, 1, 3], [0, 1, 0, 2])
    # a numpy format would print long lists abbreviated: rows differing only far into a list must stay apart
    long = Dataset.from_list([{"v": [0] * 2000}, {"v": [0] * 1999 + [1]}]).with_format("numpy")
    assert unique_rows(dataset_rows(long)) == ([0, 1], [0, 1])


def prepared(trainer_class: type, model_dir, data, out, **options) -> tuple[list, list, int]:
    """The prepared rows' input_ids and labels, and how many times the chat template was rendered."""
    args = SFTConfig(output_dir=str(out), max_length=128, report_to="none", assistant_only_loss=True,
                     per_device_train_batch_size=4, save_strategy="no", **options)  # fmt: skip
    model_args = ModelConfig(model_name_or_path=str(model_dir), dtype="float32")
    model, tokenizer = load_for_training(model_args, None, None, training_args=args)
    calls = []
    apply = tokenizer.apply_chat_template

    def counting(*a, **k):
        calls.append(1)
        return apply(*a, **k)

    tokenizer.apply_chat_template = counting
    if trainer_class is SFTTrainer:
        trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    else:
        trainer = build_sft_trainer(model, tokenizer, args, model_args, data)
    rows = trainer.train_dataset
    return rows["input_ids"], rows["labels"], len(calls)


def test_repeated_rows_prepare_into_trls_rows_with_fewer_tokenised(tiny_model_dir, arithmetic_data_dir, tmp_path):
    distinct = sft_dataset(read_records(arithmetic_data_dir / "train.jsonl")).select(range(12))
    data = concatenate_datasets([distinct] * 4).shuffle(seed=0)  # 48 rows, each row 4 times, mixed
    trl_ids, trl_labels, trl_calls = prepared(SFTTrainer, tiny_model_dir, data, tmp_path / "trl")
    ids, labels, calls = prepared(build_sft_trainer, tiny_model_dir, data, tmp_path / "ours")
    assert len(ids) == 48 and ids == trl_ids and labels == trl_labels
    assert any(torch.tensor(x).ne(-100).sum() < len(x) for x in labels)  # the prompts stay masked
    assert trl_calls - calls == 48 - 12  # each distinct row tokenised once (trl renders one more, either way)
    # shuffle_dataset: trl shuffles its prepared rows last, and so do we, into the same order
    trl_ids, _, _ = prepared(SFTTrainer, tiny_model_dir, data, tmp_path / "trl-s", shuffle_dataset=True, seed=3)
    ids, _, _ = prepared(build_sft_trainer, tiny_model_dir, data, tmp_path / "ours-s", shuffle_dataset=True, seed=3)
    assert ids == trl_ids and ids != prepared(SFTTrainer, tiny_model_dir, data, tmp_path / "trl-u")[0]
