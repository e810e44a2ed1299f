"""scripts/export.py writes verl Parquet and OpenRLHF JSONL prompt files that the project's own adapters score: the
reference answers, as replies in the think format the export names, score 1.0 on every row."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from rewards import adapters
from rewards.adapters import openrlhf, verl
from train.core.data import write_jsonl
from train.core.loading import load_tokenizer
from train.core.modes import PANGU_THINK, QWEN3_THINK, THINK_FORMATS

MARS_YAML = """
tasks:
  math: [{name: accuracy, rewards: [math], weight: 1.0}]
  code: [{name: accuracy, rewards: [code], weight: 1.0}]
  general: [{name: accuracy, rewards: [short_answer], weight: 1.0}]
shared: []
normalize: false
"""
DOUBLE = "```python\nprint(int(input()) * 2)\n```"
ADD = "```python\ndef add(a, b):\n    return a + b\n```"
RECORDS = [
    {"prompt": "What is 2+2? Put the answer in \\boxed{}.", "task": "math", "answer": "4", "difficulty": 1},
    {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Half of 1? /no_think"}],
     "task": "math", "answer": "\\frac{1}{2}", "source": "my/math"},
    {"prompt": "Read n, print 2n.", "task": "code",
     "tests": [{"input": "3\n", "output": "6\n"}, {"input": "10\n", "output": "20\n"}]},
    {"prompt": "Write add(a, b).", "task": "code", "tests": [{"assert": "assert add(2, 3) == 5"}]},
    {"prompt": "Capital of France?", "task": "general", "answer": "Paris"},
]  # fmt: skip
REFERENCE = {0: "\\boxed{4}", 1: "\\boxed{\\frac{1}{2}}", 2: DOUBLE, 3: ADD, 4: "Paris"}
WRONG = {0: "\\boxed{5}", 1: "\\boxed{2}", 2: DOUBLE.replace("2", "3"), 3: ADD.replace("+", "-"), 4: "Rome"}


@pytest.fixture
def files(tmp_path):
    data = write_jsonl(tmp_path / "records.jsonl", RECORDS)
    base = tmp_path / "mars.yaml"
    base.write_text(MARS_YAML)
    adapters.reset()
    yield data, base, tmp_path
    adapters.reset()


def export(script, *argv):
    return script("scripts/export.py").main([str(a) for a in argv])


@pytest.mark.parametrize("fmt", ["qwen3", "pangu"])
def test_verl_parquet_read_back_scores_one_on_every_row(script, files, fmt):
    data, base, tmp = files
    out = tmp / f"train-{fmt}.parquet"
    manifest = export(script, "--to", "verl", "--data", data, "--out", out, "--think-format", fmt,
                      "--mars-config", base, "--mode", "slow", "--split", "train")  # fmt: skip
    think = THINK_FORMATS[fmt]
    mars = yaml.safe_load((tmp / f"train-{fmt}.mars.yaml").read_text())
    assert (mars["think_start"], mars["think_end"]) == (think.start, think.end) and mars["shared"] == []
    assert manifest["rows"] == 5 and manifest["tasks"] == {"math": 2, "code": 2, "general": 1}
    assert "reward.custom_reward_function.name=compute_score" in manifest["engine_keys"]
    assert any(k.startswith("reward.custom_reward_function.path=") for k in manifest["engine_keys"])

    table = pq.read_table(out)
    assert table.column_names == ["data_source", "prompt", "ability", "reward_model", "extra_info"]
    rows = table.to_pylist()
    assert rows[0]["prompt"] == [{"role": "user", "content": "What is 2+2? Put the answer in \\boxed{}. /think"}]
    assert rows[1]["prompt"][0] == {"role": "system", "content": "Be brief."}
    assert rows[1]["prompt"][1]["content"] == "Half of 1? /think"  # the export's mode replaces the record's tag
    assert rows[1]["data_source"] == "my/math" and rows[0]["data_source"] == "fastslow/math"
    assert rows[2]["reward_model"] == {"style": "rule", "ground_truth": json.dumps(RECORDS[2]["tests"])}
    assert rows[4]["extra_info"]["question"] == "Capital of France?" and rows[3]["extra_info"]["index"] == 3
    assert [r["ability"] for r in rows] == ["math", "math", "code", "code", "general"]

    frame = pd.read_parquet(out)  # what verl's RLHFDataset reads: numpy values inside
    config = str(tmp / f"train-{fmt}.mars.yaml")
    for replies, expected in ((REFERENCE, 1.0), (WRONG, 0.0)):
        for i, row in frame.iterrows():
            result = verl.compute_score(
                data_source=row["data_source"],
                solution_str=think.format(replies[i], thinking="work it out"),
                ground_truth=row["reward_model"]["ground_truth"],
                extra_info={**row["extra_info"], "num_turns": None, "rollout_reward_scores": {}},
                config=config,
            )
            assert (i, result["score"], result["acc"]) == (i, expected, expected)


def test_openrlhf_jsonl_scores_one_on_every_row(script, files, tiny_model_dir, monkeypatch):
    data, base, tmp = files
    out = tmp / "train.jsonl"
    export(script, "--to", "openrlhf", "--data", data, "--out", out, "--tokenizer", tiny_model_dir,
           "--mars-config", base)  # fmt: skip
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert set(rows[0]) == {"input", "label", "datasource"}
    assert json.loads(rows[2]["label"])["tests"] == RECORDS[2]["tests"]
    assert rows[1]["input"][1]["content"] == "Half of 1? /no_think"  # --mode keep (the default)
    tok = load_tokenizer(tiny_model_dir)
    monkeypatch.setenv(adapters.CONFIG_ENV, str(tmp / "train.mars.yaml"))
    # OpenRLHF 0.11.2: prompt = apply_chat_template(input, add_generation_prompt=True), query = decode(prompt +
    # response tokens) with special tokens kept, labels = the label column (openrlhf/datasets/prompts_dataset.py)
    prompts = [tok.apply_chat_template(r["input"], tokenize=False, add_generation_prompt=True) for r in rows]
    think = QWEN3_THINK
    queries = [p + think.format(REFERENCE[i], "steps") + "<|im_end|>" for i, p in enumerate(prompts)]
    out = openrlhf.reward_func(queries, prompts, [r["label"] for r in rows])
    assert out["rewards"].tolist() == [1.0] * 5 and out["scores"].tolist() == [1.0] * 5


def test_export_reads_data_sets_through_the_sources(script, files):
    data, base, tmp = files
    gsm8k = write_jsonl(tmp / "gsm8k.jsonl", [{"question": "1+3?", "answer": "1+3=4\n#### 4"}])
    out = tmp / "gsm.parquet"
    export(script, "--to", "verl", "--dataset-name", gsm8k, "--dataset-preset", "gsm8k", "--out", out,
           "--think-format", "pangu", "--mars-config", base)  # fmt: skip
    row = pq.read_table(out).to_pylist()[0]
    assert row["ability"] == "math" and row["reward_model"]["ground_truth"] == "4"
    score = verl.compute_score(row["data_source"], PANGU_THINK.format("\\boxed{4}"), "4", row["extra_info"],
                               config=str(tmp / "gsm.mars.yaml"))  # fmt: skip
    assert score["acc"] == 1.0
    with pytest.raises(SystemExit, match="exactly one"):
        export(
            script, "--to", "verl", "--data", data, "--dataset-name", gsm8k, "--out", out, "--think-format", "qwen3"
        )
