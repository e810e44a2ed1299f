"""The record schema: loaders for every format, validation errors that name file, row and key, mixtures."""

from __future__ import annotations

import json

import pytest
from datasets import Dataset

from train.core.data import DataError, code_tests, load_records, mix, read_records, validate_record, write_jsonl

GOOD = [
    {"id": "m1", "prompt": "1+1?", "task": "math", "answer": 2, "difficulty": 1},
    {
        "prompt": [{"role": "user", "content": "Print hi"}],
        "task": "code",
        "tests": [{"input": "", "output": "hi"}, {"assert": "assert True"}],
    },
    {"prompt": "Capital of France?", "task": "General", "answer": "Paris", "source": "hand"},
]


def test_validate_normalises():
    rec = validate_record(GOOD[0], "f.jsonl", 1)
    assert rec == {
        "prompt": "1+1?",
        "task": "math",
        "answer": "2",
        "tests": None,
        "response": None,
        "difficulty": 1.0,
        "source": None,
        "id": "m1",
    }
    assert validate_record(GOOD[2])["task"] == "general"
    assert len(validate_record(GOOD[2])["id"]) == 12  # derived, stable
    assert validate_record(GOOD[2])["id"] == validate_record(dict(GOOD[2]))["id"]
    code = validate_record({**GOOD[1], "tests": json.dumps(GOOD[1]["tests"])})
    assert code["tests"] == GOOD[1]["tests"]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"task": "math"}, "row 3, key 'prompt': missing required key"),
        ({"prompt": "q"}, "row 3, key 'task': missing required key"),
        ({"prompt": "q", "task": "code", "tests": [{"in": 1}]}, "row 3, key 'tests': case 0 must be"),
        ({"prompt": "q", "task": "code", "tests": "[oops"}, "row 3, key 'tests': not valid JSON"),
        ({"prompt": [{"role": "bot", "content": "x"}], "task": "math"}, "row 3, key 'prompt': message 0"),
        ({"prompt": "q", "task": "math", "difficulty": "hard"}, "row 3, key 'difficulty': expected a number"),
        ({"prompt": "q", "task": 3}, "row 3, key 'task': expected a string"),
        ([1, 2], "row 3: a record must be a JSON object"),
    ],
)
def test_bad_rows_name_file_row_and_key(tmp_path, row, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [GOOD[0], GOOD[2], row]) + "\n")
    with pytest.raises(DataError) as err:
        read_records(path)
    assert str(err.value).startswith(str(path))
    assert message in str(err.value)


def test_malformed_json_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(GOOD[0]) + "\n{not json\n")
    with pytest.raises(DataError, match=r"broken.jsonl, row 2: malformed JSON"):
        read_records(path)


def test_every_format_loads_the_same(tmp_path):
    write_jsonl(tmp_path / "r.jsonl", GOOD)
    (tmp_path / "r.json").write_text(json.dumps(GOOD))
    flat = [
        {
            **r,
            "answer": None if r.get("answer") is None else str(r["answer"]),
            "prompt": r["prompt"] if isinstance(r["prompt"], str) else r["prompt"][0]["content"],
            "tests": json.dumps(r.get("tests")) if r.get("tests") else "",
        }
        for r in GOOD
    ]
    Dataset.from_list([{k: (None if v == "" else v) for k, v in r.items()} for r in flat]).to_parquet(
        str(tmp_path / "r.parquet")
    )
    import csv

    with (tmp_path / "r.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "prompt", "task", "answer", "tests", "difficulty", "source"])
        writer.writeheader()
        writer.writerows({k: r.get(k, "") for k in writer.fieldnames} for r in flat)
    a = load_records(tmp_path / "r.jsonl")
    assert len(a) == 3 and a[1]["prompt"][0]["content"] == "Print hi"
    assert code_tests(a[1]["tests"]) == GOOD[1]["tests"]
    for name in ("r.json", "r.parquet", "r.csv"):
        ds = load_records(tmp_path / name)
        assert [r["task"] for r in ds] == ["math", "code", "general"], name
        assert [r["answer"] for r in ds] == ["2", None, "Paris"], name
        assert code_tests(ds[1]["tests"]) == GOOD[1]["tests"], name


def test_csv_row_numbers_match_spreadsheet(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("prompt,task\nq,math\n,math\n")
    with pytest.raises(DataError, match=r"r.csv, row 3, key 'prompt'"):
        read_records(path)


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_records(tmp_path / "nope.jsonl")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataError, match="unsupported file type"):
        read_records(tmp_path / "x.txt")


def test_write_jsonl_is_atomic(tmp_path):
    path = tmp_path / "out.jsonl"
    write_jsonl(path, GOOD)

    def rows():
        yield GOOD[0]
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_jsonl(path, rows())
    assert len(read_records(path)) == 3  # the old file is intact


def test_mix_respects_weights_and_seed():
    a = Dataset.from_list([{"x": "a"}] * 10)
    b = Dataset.from_list([{"x": "b"}] * 4)
    m = mix([a, b], [0.25, 0.75], size=40, seed=1)
    assert len(m) == 40
    assert sum(r["x"] == "b" for r in m) == 30  # the small source is repeated to fill its share
    assert m["x"] == mix([a, b], [0.25, 0.75], size=40, seed=1)["x"]
    with pytest.raises(ValueError, match="one weight per dataset"):
        mix([a, b], [1.0])


def test_a_row_of_another_schema_points_to_the_dataset_presets(tmp_path):
    path = write_jsonl(tmp_path / "openr1.jsonl", [{"problem": "2+3?", "solution": "5", "answer": "5"}])
    with pytest.raises(DataError, match=r"row 1, key 'prompt': missing required key \(its keys: answer, problem, "
                       r"solution: .*dataset_preset, see docs/data\.md\)"):  # fmt: skip
        read_records(path)
