"""Real data sets in: every preset on a small file in its real schema, column mappings, splits, offline hub ids.

Each fixture is written by the test in the data set's own column names (no downloads), converted with
:func:`train.core.sources.load_source`, and read by the SFT and GRPO data loaders; the code presets' tests run in
the real sandbox with a correct solution (reward 1) and a wrong one.
"""

from __future__ import annotations

import argparse
import base64
import json
import pickle
import zlib
from pathlib import Path

import datasets
import pytest
import yaml
from conftest import load_script
from datasets import Dataset
from transformers import HfArgumentParser

from rewards.code import CodeReward
from rewards.router import MARSConfig, ShortAnswerReward
from train.core.cli import check_value_types
from train.core.data import DataError, load_records, validate_record
from train.core.modes import QWEN3_THINK
from train.core.sources import (
    PRESETS,
    DatasetArguments,
    add_source_arguments,
    detect_preset,
    last_boxed,
    load_source,
    load_source_from,
    parse_column_mapping,
    preset_names,
    verified_generation,
)
from train.eval import benchmarks
from train.rl.config import GRPOScriptArguments
from train.rl.data import load_grpo_data
from train.sft import SFTScriptArguments, load_sft_data

ROOT = Path(__file__).resolve().parents[1]
LIMITS = {"timeout_s": 3, "cpu_s": 2, "memory_mb": 256, "uid_base": 62300, "uid_count": 16}


def write(path, rows):
    """``rows`` in the file type ``path`` names (JSONL, CSV or Parquet, as the data sets ship)."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif path.suffix == ".csv":
        Dataset.from_list(rows).to_csv(str(path), index=False)
    else:
        Dataset.from_list(rows).to_parquet(str(path))
    return path


# ---------------------------------------------------------------------------------------------- fixtures

OPENR1 = [
    {
        "problem": "Find $x$ if $2x + 3 = 13$.",
        "solution": "Subtract 3 and halve: $x = \\boxed{5}$.",
        "answer": "5",
        "problem_type": "Algebra",
        "question_type": "math-word-problem",
        "source": "olympiads",
        "uuid": "0d2f5c1e-1",
        "is_reasoning_complete": [True, True],
        "generations": ["<think>2x = 16</think>\n\n$x = \\boxed{8}$", "<think>2x = 10, x = 5</think>\n\n$\\boxed{5}$"],
        "correctness_math_verify": [False, True],
        "correctness_count": 1,
        "finish_reasons": [None, None],
    },
    {
        "problem": "Compute $7 \\cdot 6$.",
        "solution": "$7 \\cdot 6 = \\boxed{42}$.",
        "answer": "42",
        "problem_type": "Arithmetic",
        "question_type": "math-word-problem",
        "source": "cn_contest",
        "uuid": "0d2f5c1e-2",
        "is_reasoning_complete": [False],
        "generations": ["<think>7 times 6 is 42 but I keep going"],
        "correctness_math_verify": [True],
        "correctness_count": 1,
        "finish_reasons": ["length"],
    },
]

NUMINA = [
    {
        "source": "synthetic_math",
        "problem": "What is $3^2 + 4^2$?",
        "solution": "$9 + 16 = \\boxed{25}$.",
        "messages": [{"role": "user", "content": "What is $3^2 + 4^2$?"}, {"role": "assistant", "content": "25"}],
    },
    {
        "source": "olympiads",
        "problem": "Simplify $\\frac{2}{4}$.",
        "solution": "It is $\\boxed{\\frac{1}{2}}$.",
        "messages": [],
    },
]

GSM8K_TRAIN = [
    {
        "question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
        "How many clips did Natalia sell altogether in April and May?",
        "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips "
        "altogether in April and May.\n#### 72",
    },
    {
        "question": "A shop sold 1,200 pens on Monday and 300 on Tuesday. How many pens in all?",
        "answer": "1200 + 300 = <<1200+300=1500>>1500\n#### 1,500",
    },
]
GSM8K_TEST = [
    {
        "question": "Janet has 3 apples and buys 2 more. How many apples does she have?",
        "answer": "3 + 2 = <<3+2=5>>5\n#### 5",
    }
]

MATH500 = [
    {
        "problem": "Convert the point $(0,3)$ in rectangular coordinates to polar coordinates.",
        "solution": "We get $r = 3$ and $\\theta = \\frac{\\pi}{2}$: $\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}$",
        "answer": "\\left( 3, \\frac{\\pi}{2} \\right)",
        "subject": "Precalculus",
        "level": 2,
        "unique_id": "test/precalculus/807.json",
    }
]

AIME = [
    {
        "ID": "2024-I-1",
        "Problem": "Every morning Aya goes for a $9$-kilometer-long walk ... Find the number of minutes.",
        "Solution": "... so the walk takes $\\boxed{204}$ minutes.",
        "Answer": 204,
    }
]

SUM_STDIN = "a, b = map(int, input().split())\nprint(a + b)"
APPS = [
    {
        "problem_id": 4001,
        "question": "Read two integers and print their sum.\n\n-----Input-----\nTwo integers a b.",
        "solutions": json.dumps([SUM_STDIN, "print(sum(map(int, input().split())))"]),
        "input_output": json.dumps({"inputs": ["1 2\n", "10 -3\n"], "outputs": ["3\n", "7\n"]}),
        "difficulty": "introductory",
        "url": "https://codeforces.com/problemset/problem/1/A",
        "starter_code": "",
    },
    {
        "problem_id": 4002,
        "question": "Return the largest element of the list and its index.",
        "solutions": json.dumps(["def largest(xs):\n    i = xs.index(max(xs))\n    return (xs[i], i)"]),
        # APPS wraps a call's expected value in a list; a returned tuple compares as a list.
        "input_output": json.dumps(
            {"fn_name": "largest", "inputs": [[[1, 5, 2]], [[7]]], "outputs": [[[5, 1]], [[7, 0]]]}
        ),
        "difficulty": "interview",
        "url": "https://www.codewars.com/kata/largest",
        "starter_code": "def largest(xs):\n\t",
    },
]

TACO = [
    {
        "question": "Given two numbers a and b, return their product.",
        "solutions": json.dumps(["class Solution:\n    def multiply(self, a, b):\n        return a * b\n"]),
        "starter_code": "class Solution:\n    def multiply(self, a, b):\n        # code here\n",
        "input_output": json.dumps({"fn_name": "multiply", "inputs": [[2, 3], [0, 9]], "outputs": [6, 0]}),
        "difficulty": "EASY",
        "raw_tags": "['Mathematical']",
        "name": None,
        "source": "geeksforgeeks",
        "tags": "['Mathematics']",
        "skill_types": "[]",
        "url": "https://practice.geeksforgeeks.org/problems/multiply",
        "Expected Auxiliary Space": "O(1)",
        "time_limit": None,
        "date": None,
        "picture_num": None,
        "memory_limit": None,
        "Expected Time Complexity": "O(1)",
    },
    {
        "question": "Print the input line reversed.",
        "solutions": json.dumps(["print(input()[::-1])"]),
        "starter_code": "",
        # TACO sometimes stores a case's lines as a list
        "input_output": json.dumps({"inputs": [["abc"], "xy\n"], "outputs": [["cba"], "yx\n"]}),
        "difficulty": "VERY_HARD",
        "raw_tags": "['Strings']",
        "name": "reverse",
        "source": "codechef",
        "tags": "['String']",
        "skill_types": "[]",
        "url": None,
        "Expected Auxiliary Space": None,
        "time_limit": "1 seconds",
        "date": "2020-01-01",
        "picture_num": "0",
        "memory_limit": "256 megabytes",
        "Expected Time Complexity": None,
    },
]


def _lcb_private(cases):
    """LiveCodeBench's private-case encoding: base64 of zlib of a pickled JSON string."""
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(cases)))).decode()


LCB = [
    {
        "question_title": "Double",
        "question_content": "You are given an integer N. Print 2N.",
        "platform": "atcoder",
        "question_id": "abc300_a",
        "contest_id": "abc300",
        "contest_date": "2023-04-29T00:00:00",
        "starter_code": "",
        "difficulty": "easy",
        "public_test_cases": json.dumps([{"input": "3\n", "output": "6\n", "testtype": "stdin"}]),
        "private_test_cases": _lcb_private([{"input": "-4\n", "output": "-8\n", "testtype": "stdin"}]),
        "metadata": "{}",
    },
    {
        "question_title": "Max sum pair",
        "question_content": "Return the largest sum of two elements of nums with a gap of at least k.",
        "platform": "leetcode",
        "question_id": "3001",
        "contest_id": "weekly-contest-370",
        "contest_date": "2023-11-05T00:00:00",
        "starter_code": "class Solution:\n    def maxSum(self, nums: List[int], k: int) -> int:\n        ",
        "difficulty": "medium",
        "public_test_cases": json.dumps([{"input": "[1, 2, 3]\n1", "output": "5", "testtype": "functional"}]),
        "private_test_cases": _lcb_private([{"input": "[5, 1]\n1", "output": "6", "testtype": "functional"}]),
        "metadata": json.dumps({"func_name": "maxSum"}),
    },
]
LCB_MAXSUM = (
    "from typing import List\n\nclass Solution:\n    def maxSum(self, nums: List[int], k: int) -> int:\n"
    "        return max(nums[i] + nums[j] for i in range(len(nums)) for j in range(i + k, len(nums)))"
)

HUMANEVAL = [
    {
        "task_id": "HumanEval/0",
        "prompt": "from typing import List\n\n\n"
        "def has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
        '    """ Check if any two numbers are closer than threshold. """\n',
        "canonical_solution": "    for i, a in enumerate(numbers):\n        for j, b in enumerate(numbers):\n"
        "            if i != j and abs(a - b) < threshold:\n                return True\n    return False\n",
        "test": "\n\nMETADATA = {}\n\n\ndef check(candidate):\n    assert candidate([1.0, 2.0, 3.9], 0.3) is False\n"
        "    assert candidate([1.0, 2.8, 3.0], 0.3) is True\n",
        "entry_point": "has_close_elements",
    }
]

GPQA = [
    {
        "Pre-Revision Question": "old",
        "Question": "Which particle mediates the electromagnetic force?",
        "Correct Answer": "The photon",
        "Incorrect Answer 1": "The gluon",
        "Incorrect Answer 2": "The W boson",
        "Incorrect Answer 3": "The graviton",
        "Explanation": "Electromagnetism is carried by photons.",
        "Record ID": "rec06pnAkLOr2t2mp",
        "High-level domain": "Physics",
        "Subdomain": "Particle physics",
    }
]

MMLU = [{"question": "2 + 2 = ?", "subject": "elementary_mathematics", "choices": ["3", "4", "5", "22"], "answer": 1}]

CODE = [
    {
        "prompt": "Print hello.",
        "tests": [{"input": "", "output": "hello"}],
        "response": "```python\nprint('hello')\n```",
    }
]

RECORDS = [{"prompt": "1+1?", "task": "math", "answer": "2", "response": "<think>1+1</think>\n\n\\boxed{2}"}]

#: preset -> (file name, rows, task of its records, whether every record has a response for SFT)
FIXTURES = {
    "records": ("records.jsonl", RECORDS, "math", True),
    "openr1-math": ("openr1-math.parquet", OPENR1, "math", True),
    "numinamath": ("numinamath.jsonl", NUMINA, "math", True),
    "gsm8k": ("gsm8k.parquet", GSM8K_TRAIN, "math", True),
    "math500": ("math500.jsonl", MATH500, "math", True),
    "aime": ("aime.parquet", AIME, "math", True),
    "apps": ("apps.jsonl", APPS, "code", True),
    "taco": ("taco.parquet", TACO, "code", True),
    "livecodebench": ("lcb.jsonl", LCB, "code", False),
    "humaneval": ("humaneval.parquet", HUMANEVAL, "code", True),
    "code": ("code.jsonl", CODE, "code", True),
    "gpqa": ("gpqa.csv", GPQA, "general", True),
    "multiple-choice": ("mmlu.parquet", MMLU, "general", False),
}


def fixture(tmp_path, preset):
    name, rows, _, _ = FIXTURES[preset]
    return write(tmp_path / name, rows)


def test_every_preset_has_a_fixture():
    assert set(FIXTURES) == set(preset_names()) == set(PRESETS)


@pytest.mark.parametrize("preset", list(FIXTURES))
def test_preset_round_trips_into_records_the_recipes_accept(tmp_path, preset):
    path = fixture(tmp_path, preset)
    _, rows, task, has_response = FIXTURES[preset]
    records = load_source(str(path), preset=preset)
    assert len(records) == len(rows)
    assert {r["task"] for r in records} == {task}
    for i, rec in enumerate(records, 1):
        assert validate_record(rec, str(path), i) == rec  # already in normal form
    assert detect_preset(rows[0], rows[0]) == preset
    # GRPO: chat prompts with the reward columns; the default MARS router routes every task.
    train, _ = load_grpo_data(GRPOScriptArguments(dataset_name=str(path), dataset_preset=preset))
    assert len(train) == len(rows) and train[0]["prompt"][-1]["role"] == "user"
    assert set(train["task"]) <= set(MARSConfig().tasks)
    if task == "code":
        assert all(json.loads(t) for t in train["tests"])
    else:
        assert all(a for a in train["answer"])
    # SFT: the response becomes the assistant turn.
    if has_response:
        sft, _ = load_sft_data(SFTScriptArguments(dataset_name=str(path), dataset_preset=preset))
        assert [m["role"] for m in sft[0]["messages"]][-2:] == ["user", "assistant"]
        assert sft[0]["messages"][-1]["content"] == records[0]["response"]


def test_openr1_row_needs_its_preset_and_then_gives_the_verified_generation(tmp_path):
    path = fixture(tmp_path, "openr1-math")
    with pytest.raises(DataError, match="row 1, key 'prompt': missing required key"):
        load_records(path)  # the schema loader alone: the failure the presets exist for
    with pytest.raises(
        DataError, match=r"openr1-math\.parquet: column 'prompt' missing.*dataset_preset 'openr1-math'"
    ):
        load_source(str(path))
    first, second = load_source(str(path), preset="openr1-math")
    assert first["response"] == OPENR1[0]["generations"][1]  # the one math-verify marked correct
    assert second["response"] == OPENR1[1]["solution"]  # correct but incomplete reasoning: the solution instead
    assert (first["id"], first["source"], first["answer"]) == ("0d2f5c1e-1", "olympiads", "5")
    # of several verified generations, the shortest (the method's shortest-correct rule)
    long, short = "<think>2x = 10, so x = 10 / 2 = 5</think>\n\n$\\boxed{5}$", "<think>x = 5</think> $\\boxed{5}$"
    row = {**OPENR1[0], "generations": [long, short, "wrong"], "correctness_math_verify": [True, True, False],
           "is_reasoning_complete": [True, True, True]}  # fmt: skip
    assert verified_generation(row) == short
    assert verified_generation({**row, "is_reasoning_complete": [True, False, True]}) == long
    assert first["prompt"].startswith(OPENR1[0]["problem"]) and first["prompt"].endswith("\\boxed{}.")
    assert load_source(str(path), preset="openr1-math", hint=False)[0]["prompt"] == OPENR1[0]["problem"]


def test_math_presets_read_the_answer_where_each_set_keeps_it(tmp_path):
    numina = load_source(str(fixture(tmp_path, "numinamath")), preset="numinamath")
    assert [r["answer"] for r in numina] == ["25", "\\frac{1}{2}"]  # the solution's last \boxed{}
    gsm = load_source(str(fixture(tmp_path, "gsm8k")), preset="gsm8k")
    assert [r["answer"] for r in gsm] == ["72", "1500"]
    assert "<<" not in gsm[0]["response"] and gsm[0]["response"].endswith("The answer is \\boxed{72}.")
    m500 = load_source(str(fixture(tmp_path, "math500")), preset="math500")[0]
    assert (m500["difficulty"], m500["id"], m500["answer"]) == (2.0, "test/precalculus/807.json", MATH500[0]["answer"])
    aime = load_source(str(fixture(tmp_path, "aime")), preset="aime")[0]
    assert (aime["answer"], aime["id"]) == ("204", "2024-I-1") and aime["prompt"].startswith("Every morning")
    assert last_boxed("a \\boxed{\\frac{1}{2}} b \\boxed{x^{2}}") == "x^{2}" and last_boxed("none") is None


def test_code_presets_write_tests_the_code_reward_runs(tmp_path):
    apps = load_source(str(fixture(tmp_path, "apps")), preset="apps")
    taco = load_source(str(fixture(tmp_path, "taco")), preset="taco")
    lcb = load_source(str(fixture(tmp_path, "livecodebench")), preset="livecodebench")
    human = load_source(str(fixture(tmp_path, "humaneval")), preset="humaneval")
    assert apps[0]["tests"] == [{"input": "1 2\n", "output": "3\n"}, {"input": "10 -3\n", "output": "7\n"}]
    assert [r["difficulty"] for r in apps + taco + lcb] == [1.0, 2.0, 1.0, 5.0, 1.0, 2.0]
    assert taco[1]["tests"][0] == {"input": "abc", "output": "cba"}
    assert len(lcb[0]["tests"]) == 2 and len(lcb[1]["tests"]) == 2  # public and (decoded) private cases
    assert "```python" in human[0]["prompt"] and "check(has_close_elements)" in human[0]["tests"][0]["assert"]

    think = "<think>solve it</think>\n\n"
    right = [
        think + apps[0]["response"],  # stdin/stdout
        think + apps[1]["response"],  # call-based, expected value wrapped in a list, tuple returned
        think + taco[0]["response"],  # a Solution method
        think + taco[1]["response"],
        think + "```python\nprint(2 * int(input()))\n```",  # LiveCodeBench stdin
        think + f"```python\n{LCB_MAXSUM}\n```",  # LiveCodeBench functional
        think + human[0]["response"],  # HumanEval: the prompt plus its canonical solution
    ]
    wrong = [think + "```python\nprint(0)\n```"] * 2 + [think + "```python\ndef largest(xs):\n    return 0\n```"]
    records = [apps[0], apps[1], taco[0], taco[1], lcb[0], lcb[1], human[0]]
    reward = CodeReward(limits=LIMITS, think=QWEN3_THINK)
    assert reward(right, tests=[r["tests"] for r in records]) == [1.0] * len(records)
    scores = reward(wrong, tests=[apps[0]["tests"], lcb[0]["tests"], apps[1]["tests"]])
    assert scores == [0.0, 0.0, 0.0]


def test_multiple_choice_presets_shuffle_by_question_and_answer_with_the_letter(tmp_path):
    gpqa = load_source(str(fixture(tmp_path, "gpqa")), preset="gpqa")[0]
    letter = gpqa["answer"]
    assert f"({letter}) The photon" in gpqa["prompt"] and gpqa["id"] == "rec06pnAkLOr2t2mp"
    assert gpqa["response"].endswith(f"The answer is ({letter}).")
    again = benchmarks.load_benchmark(tmp_path / "gpqa.csv")[0]  # the benchmark reads it the same way
    assert again["prompt"] == gpqa["prompt"] and again["answer"] == letter and again["task"] == "choice"
    # Task general: the default MARS router's short-answer rule checks the letter.
    short = ShortAnswerReward(think=QWEN3_THINK)
    assert short.score(f"<think>photons</think>\n\nThe answer is ({letter}).", answer=letter) == 1.0
    assert short.score(f"<think>x</think>\n\n\\boxed{{{letter}}}", answer=letter) == 1.0
    # Evaluation reads a data set by its arguments as a benchmark: multiple choice is then scored on the letter.
    parser = argparse.ArgumentParser()
    add_source_arguments(parser)
    bench = benchmarks.load_benchmark_from(parser.parse_args(["--dataset-name", str(tmp_path / "gpqa.csv")]))[0]
    assert bench["task"] == "choice" and bench["prompt"] == gpqa["prompt"]
    assert benchmarks.check(f"The answer is ({letter}).", bench) is True
    mmlu = load_source(str(fixture(tmp_path, "multiple-choice")), preset="multiple-choice")[0]
    assert mmlu["answer"] == "B" and "(B) 4" in mmlu["prompt"]


# -------------------------------------------------------------------------------- mapping, errors, splits


def test_column_mapping_reads_fields_from_other_columns(tmp_path):
    path = write(tmp_path / "custom.jsonl", [{"query": "What is 6 * 7?", "final": 42, "instruction": "x"}])
    rec = load_source(str(path), preset="aime", column_mapping={"problem": "query", "answer": "final"})[0]
    assert rec["answer"] == "42" and rec["prompt"].startswith("What is 6 * 7?")
    same = load_source(str(path), preset="aime", column_mapping="problem=query,answer=final")
    assert (
        same
        == [rec]
        == load_source(str(path), preset="aime", column_mapping='{"problem": "query", "answer": "final"}')
    )
    plain = write(tmp_path / "plain.jsonl", [{"instruction": "Say hi", "output": "hi", "task": "general"}])
    rec = load_source(str(plain), column_mapping={"prompt": "instruction", "response": "output"})[0]
    assert (rec["prompt"], rec["response"], rec["task"]) == ("Say hi", "hi", "general")


def test_a_missing_column_is_an_error_naming_the_column_and_the_file(tmp_path):
    path = write(tmp_path / "custom.jsonl", [{"query": "q", "final": 1}])
    with pytest.raises(DataError, match=r"custom\.jsonl: column 'question' \(column_mapping 'problem'\) not found"):
        load_source(str(path), preset="aime", column_mapping={"problem": "question"})
    with pytest.raises(DataError, match=r"custom\.jsonl: column 'problem' \(or 'Problem', 'question'\) missing"):
        load_source(str(path), preset="aime")
    with pytest.raises(DataError, match=r"apps\.jsonl, row 1, key 'input_output': expected"):
        load_source(str(write(tmp_path / "apps.jsonl", [{"question": "q", "input_output": "{}"}])), preset="apps")
    with pytest.raises(DataError, match="unknown; expected one of"):
        load_source(str(path), preset="no-such-preset")
    with pytest.raises(DataError, match="column_mapping: expected field=column"):
        parse_column_mapping("problem")


def test_split_selection_in_a_folder_and_a_single_file_is_one_split(tmp_path):
    folder = tmp_path / "gsm8k"
    folder.mkdir()
    write(folder / "train.parquet", GSM8K_TRAIN)
    write(folder / "test.parquet", GSM8K_TEST)
    assert len(load_source(str(folder), preset="gsm8k")) == 2
    test = load_source(str(folder), split="test", preset="gsm8k")
    assert [r["answer"] for r in test] == ["5"]
    with pytest.raises(DataError, match="validation"):
        load_source(str(folder), split="validation", preset="gsm8k")
    with pytest.raises(DataError, match="a single file is one split"):
        load_source(str(folder / "test.parquet"), split="test", preset="gsm8k")
    assert len(load_source(str(folder), preset="gsm8k", limit=1)) == 1
    args = SFTScriptArguments(dataset_name=str(folder), dataset_preset="gsm8k", dataset_eval_split="test")
    train, evals = load_sft_data(args)
    assert (len(train), len(evals)) == (2, 1)
    with pytest.raises(FileNotFoundError, match="no such data file"):
        load_source(str(tmp_path / "missing.jsonl"))


def test_a_hub_id_offline_and_not_cached_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    with pytest.raises(DataError, match=r"fastslow-tests/not-cached: not in the local datasets cache.*HF_HUB_OFFLINE"):
        load_source("fastslow-tests/not-cached", config="main", preset="gsm8k")


def test_arguments_from_argparse_yaml_and_the_command_line(tmp_path):
    path = fixture(tmp_path, "gsm8k")
    parser = argparse.ArgumentParser()
    add_source_arguments(parser)
    ns = parser.parse_args(
        ["--dataset-name", str(path), "--dataset-preset", "gsm8k", "--column-mapping", "question=question"]
    )
    assert ns.column_mapping == {"question": "question"} and ns.dataset_split == "train" and ns.dataset_hint
    assert len(load_source_from(ns)) == 2
    with pytest.raises(SystemExit):
        parser.parse_args(["--column-mapping", "nonsense"])
    # A recipe config: a YAML mapping passes the type check, a command-line JSON object becomes a mapping.
    check_value_types({"column_mapping": {"prompt": "question"}}, [SFTScriptArguments], "sft.yaml")
    (args,) = HfArgumentParser((SFTScriptArguments,)).parse_args_into_dataclasses(
        ["--dataset_name", str(path), "--dataset_preset", "auto", "--column_mapping", '{"question": "question"}']
    )
    assert args.column_mapping == {"question": "question"}
    assert load_source_from(args)[0]["answer"] == "72"  # auto: guessed from the columns
    with pytest.raises(DataError, match="need dataset_name"):
        DatasetArguments(dataset_preset="gsm8k")


def test_train_files_and_a_data_set_mix_with_one_weight_each(tmp_path):
    files = write(tmp_path / "records.jsonl", RECORDS)
    path = fixture(tmp_path, "gsm8k")
    args = SFTScriptArguments(train_files=[str(files)], dataset_name=str(path), dataset_preset="gsm8k")
    train, _ = load_sft_data(args)
    assert len(train) == len(RECORDS) + len(GSM8K_TRAIN)
    args.train_weights = [1.0]
    with pytest.raises(DataError, match="1 weights for 2 sources"):
        load_sft_data(args)


def test_the_sft_recipe_trains_on_a_data_set_by_preset(tmp_path, tiny_model_dir):
    path = fixture(tmp_path, "openr1-math")
    config = tmp_path / "sft.yaml"
    config.write_text(
        f"model_name_or_path: {tiny_model_dir}\ndtype: float32\ndataset_name: {path}\ndataset_preset: openr1-math\n"
        f"output_dir: {tmp_path / 'out'}\nmax_steps: 2\nper_device_train_batch_size: 2\nmax_length: 64\n"
        "learning_rate: 1.0e-3\nsave_strategy: 'no'\nreport_to: none\nlogging_steps: 1\n"
    )
    out = load_script("recipes/sft.py").main(["--config", str(config)])
    assert (out / "model.safetensors").exists() or (out / "merged" / "model.safetensors").exists()


def test_the_grpo_recipe_trains_on_a_data_set_by_preset(tmp_path, tiny_model_dir):
    path = fixture(tmp_path, "apps")
    config = yaml.safe_load((ROOT / "recipes/configs/tiny/grpo.yaml").read_text())
    config.update(
        train_files=[],
        dataset_name=str(path),
        dataset_preset="apps",
        model_name_or_path=str(tiny_model_dir),
        output_dir=str(tmp_path / "out"),
        max_steps=1,
        per_device_train_batch_size=2,
        num_generations=2,
        max_completion_length=16,
        save_strategy="no",
        mars={"tasks": {"code": [{"name": "accuracy", "rewards": ["code"]}]}, "shared": [], "warmup": 0},
    )
    (tmp_path / "grpo.yaml").write_text(yaml.safe_dump(config))
    _, trainer = load_script("recipes/grpo.py").main(["--config", str(tmp_path / "grpo.yaml")])
    logged = {key for entry in trainer.state.log_history for key in entry}
    assert "mars/code/accuracy" in logged  # the converted tests reached the code reward


def test_grpo_config_refuses_a_bad_preset_when_parsed():
    from train.rl.config import GRPOScriptArguments

    with pytest.raises(Exception, match="no-such-preset"):
        GRPOScriptArguments(dataset_name="data.jsonl", dataset_preset="no-such-preset")
