"""Mode-aware evaluation gives exact numbers on a fixed set of replies; benchmark files load in common formats."""

from __future__ import annotations

import json
import math

import pytest

from train.core.modes import PANGU_THINK, QWEN3_THINK, Mode
from train.eval import benchmarks
from train.eval.evaluation import (
    evaluate,
    evaluate_modes,
    markdown_table,
    pass_at_k,
    per_prompt_scores,
    results_from_scores,
    right_modes,
    score_generations,
    write_results,
)
from train.sampling.reply import Reply


def F(answer, tokens=5):
    return Reply(f"<think>\n\n</think>\n\n{answer}", tokens)


def S(answer, tokens=10):
    return Reply(f"<think>\nsteps\n</think>\n\n{answer}", tokens)


RECORDS = [
    {"id": "a", "answer": "2", "difficulty": 1},
    {"id": "b", "answer": "5", "difficulty": 1},
    {"id": "c", "answer": "579", "difficulty": 3},
]
GENS = {
    "fast": [[F(2), F(2)], [F(5), F(4)], [F(578, 7), F(578, 7)]],
    "slow": [[S(2), S(2)], [S(5), S(5)], [S(579, 20), Reply("<think>\nsteps", 30, "length")]],
    "auto": [[F(2), F(2)], [S(5), S(5)], [S(579, 20), F(578, 7)]],
}


def exact(answer, record):
    return answer == record["answer"]


@pytest.fixture
def results():
    scores = {m: per_prompt_scores(RECORDS, GENS[m], m, exact, think=QWEN3_THINK) for m in GENS}
    return results_from_scores(scores, k=2, max_new_tokens=30)


def test_pass_at_k_is_still_importable_from_evaluation():
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)


def test_exact_numbers_per_mode(results):
    fast, slow, auto = (results["modes"][m] for m in ("fast", "slow", "auto"))
    assert fast["avg@2"] == 0.5 and fast["pass@2"] == pytest.approx(2 / 3)
    assert fast["mean_tokens"] == pytest.approx(34 / 6) and fast["compliance"] == 1.0 and fast["fast_share"] == 1.0
    assert fast["truncation_rate"] == 0.0 and slow["truncation_rate"] == pytest.approx(1 / 6)
    assert slow["per_difficulty"]["3"]["truncation_rate"] == 0.5
    # budget 30 (the run's max_new_tokens) keeps every reply; below 20 tokens the slow 579s no longer fit
    curve = slow["budget_curve"]
    assert curve["budgets"][-1] == 30 and curve["accuracy"][-1] == pytest.approx(5 / 6)
    at = {b: a for b, a in zip(curve["budgets"], curve["accuracy"])}
    assert at[19] == pytest.approx(4 / 6) and at[2] == 0.0
    assert slow["avg@2"] == pytest.approx(5 / 6) and slow["pass@2"] == 1.0
    assert slow["mean_tokens"] == 15.0 and slow["compliance"] == pytest.approx(5 / 6) and slow["fast_share"] == 0.0
    assert auto["avg@2"] == pytest.approx(5 / 6) and auto["mean_tokens"] == 9.5
    assert auto["compliance"] == 1.0 and auto["fast_share"] == 0.5
    assert "right_mode_rate" not in fast


def test_fast_share_and_right_mode_per_difficulty(results):
    auto = results["modes"]["auto"]
    assert auto["right_mode_rate"] == pytest.approx(5 / 6)
    assert auto["per_difficulty"]["1"]["fast_share"] == 0.5 and auto["per_difficulty"]["3"]["fast_share"] == 0.5
    assert auto["per_difficulty"]["1"]["right_mode_rate"] == 1.0
    assert auto["per_difficulty"]["3"]["right_mode_rate"] == 0.5
    assert results["modes"]["fast"]["per_difficulty"]["3"]["avg@2"] == 0.0


def test_right_modes_follow_the_label_rule():
    scores = {m: per_prompt_scores(RECORDS, GENS[m], m, exact, think=QWEN3_THINK) for m in ("fast", "slow")}
    assert right_modes(scores["fast"], scores["slow"]) == ["fast", "slow", "slow"]
    with pytest.raises(ValueError, match="aligned"):
        right_modes(scores["fast"], scores["slow"][::-1])


def test_score_generations_keeps_its_contract():
    out = score_generations(RECORDS, GENS["slow"], Mode.SLOW, exact, think=QWEN3_THINK)
    assert out == {"accuracy": 5 / 6, "mean_tokens": 15.0, "compliance": 5 / 6, "fast_rate": 0.0}


def test_outputs_written(results, tmp_path):
    table = markdown_table(results)
    assert "| mode | avg@2 | pass@2 | mean tokens | truncated | compliance | fast share | right mode |" in table
    assert "| auto | 83.3% | 100.0% | 9.5 | 0.0% | 100.0% | 50.0% | 83.3% |" in table
    assert "| fast | 50.0% | 66.7% | 5.7 | 0.0% | 100.0% | 100.0% | - |" in table
    assert "| slow | 83.3% | 100.0% | 15.0 | 16.7% | 83.3% | 0.0% | - |" in table
    paths = write_results(results, tmp_path, "x")
    assert json.loads(paths["json"].read_text())["modes"]["slow"]["mean_tokens"] == 15.0
    assert paths["md"].read_text() == table
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"
    assert paths["budget_png"] == tmp_path / "x.budget.png" and paths["budget_png"].read_bytes()[:4] == b"\x89PNG"


class ScriptedSampler:
    """A sampler that answers each prompt with fixed replies per mode, written in ``think``'s tags."""

    def __init__(self, think, replies):
        self.think, self.replies, self.calls = think, replies, []

    def sample(self, prompts, params, mode=None):
        self.calls.append((Mode.parse(mode).value, params.n, params.temperature))
        return [list(self.replies[Mode.parse(mode).value][i])[: params.n] for i in range(len(prompts))]


def _in(think, replies):
    """The replies rewritten from Qwen3's tags into ``think``'s."""
    return {m: [[Reply(think.rewrite(r.text, QWEN3_THINK), r.num_tokens, r.finish_reason) for r in row]
                for row in rows] for m, rows in replies.items()}  # fmt: skip


def test_evaluate_reads_replies_in_the_samplers_think_format(results):
    records = [{**r, "prompt": f"p{r['id']}"} for r in RECORDS]
    sampler = ScriptedSampler(PANGU_THINK, _in(PANGU_THINK, GENS))
    pangu = evaluate(None, None, records, check=exact, k=2, sampler=sampler, max_new_tokens=30)
    assert pangu["modes"] == results["modes"]  # the same numbers as the <think> replies give
    assert pangu["sampling"]["think_start"] == "[unused16]"
    assert sampler.calls == [("fast", 2, 0.6), ("slow", 2, 0.6), ("auto", 2, 0.6)]
    # Read with the other model's tags, no reply has a think block: nothing complies and nothing is fast.
    misread = per_prompt_scores(records, _in(PANGU_THINK, GENS)["fast"], "fast", exact, think=QWEN3_THINK)
    assert not any(c for p in misread for c in p["compliant"]) and {m for p in misread for m in p["modes"]} == {"none"}
    greedy = evaluate_modes(None, None, records, modes=["slow"], check=exact, sampler=sampler)
    assert greedy["slow"]["compliance"] == 1.0 and sampler.calls[-1] == ("slow", 1, 0.0)


@pytest.fixture(scope="module")
def pangu_model(tmp_path_factory):
    from train.core.loading import load_model_and_tokenizer
    from train.world.tiny import make_tiny

    return load_model_and_tokenizer(make_tiny(tmp_path_factory.mktemp("pangu"), size="nano", think=PANGU_THINK))


def test_evaluate_a_pangu_model_reads_its_own_tags(pangu_model, monkeypatch):
    from train.eval import evaluation

    model, tok = pangu_model
    assert evaluation.default_sampler(model, tok).think == PANGU_THINK
    seen = []
    monkeypatch.setattr(evaluation, "per_prompt_scores", lambda *a, think: seen.append(think) or
                        per_prompt_scores(*a, think=think))  # fmt: skip
    records = [{"id": "a", "prompt": "Compute 1+1.", "answer": "2"}]
    out = evaluate(model, tok, records, modes=["fast"], max_new_tokens=2)
    assert seen == [PANGU_THINK] and out["modes"]["fast"]["samples"] == 1


# --------------------------------------------------------------------------------------------------- benchmarks


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_aime_and_math500_rows(tmp_path):
    aime = benchmarks.load_benchmark(_write(tmp_path / "aime.jsonl", [{"problem": "Find x.", "answer": 33}]))
    assert aime[0]["task"] == "math" and aime[0]["answer"] == "33" and "\\boxed{}" in aime[0]["prompt"]
    m500 = benchmarks.load_benchmark(
        _write(tmp_path / "m.jsonl", [{"problem": "p", "solution": "s", "answer": "\\frac12", "level": "Level 4"}])
    )
    assert benchmarks.detect_format({"problem": 1, "level": 2, "answer": 3}) == "math500"
    assert m500[0]["difficulty"] == 4.0 and m500[0]["answer"] == "\\frac12"
    assert benchmarks.check("\\boxed{\\frac{1}{2}}", m500[0]) is True
    assert benchmarks.check("\\boxed{0.3}", m500[0]) is False


def test_gpqa_rows_shuffle_deterministically(tmp_path):
    row = {
        "Question": "Pick",
        "Correct Answer": "right",
        "Incorrect Answer 1": "w1",
        "Incorrect Answer 2": "w2",
        "Incorrect Answer 3": "w3",
    }
    a = benchmarks.load_benchmark(_write(tmp_path / "g.jsonl", [row]))[0]
    b = benchmarks.load_benchmark(_write(tmp_path / "g2.jsonl", [row]))[0]
    assert a == b and a["task"] == "choice"
    letter = a["answer"]
    assert f"({letter}) right" in a["prompt"]
    assert benchmarks.check(f"The answer is ({letter}).", a) is True
    assert benchmarks.check(f"\\boxed{{{letter}}}", a) is True
    other = next(x for x in "ABCD" if x != letter)
    assert benchmarks.check(f"({other})", a) is False
    listed = benchmarks.convert_row({"question": "q", "choices": ["x", "y"], "answer": 1}, "gpqa", "row")
    assert listed["answer"] == "B"


def test_code_rows(tmp_path):
    he = {"prompt": "def f(x):\n", "test": "def check(c):\n    assert c(1) == 2", "entry_point": "f"}
    rec = benchmarks.load_benchmark(_write(tmp_path / "he.jsonl", [he]))[0]
    assert rec["task"] == "code" and "check(f)" in rec["tests"][0]["assert"]
    io = benchmarks.convert_row({"question": "echo", "tests": [{"input": "1", "output": "1"}]}, "code", "row")
    assert io["tests"] == [{"input": "1", "output": "1"}]
    with pytest.raises(benchmarks.DataError, match="needs tests"):
        benchmarks.convert_row({"question": "q", "tests": []}, "code", "f.jsonl, row 3")


def test_unknown_format_names_the_keys(tmp_path):
    with pytest.raises(benchmarks.DataError, match="cannot tell"):
        benchmarks.load_benchmark(_write(tmp_path / "x.jsonl", [{"foo": 1}]))


# ------------------------------------------------------------------------- n samples, settings, generations


class SeededSampler:
    """A fake sampler: reply j to prompt i is right when (i + j) % 4 < c_i, and hits the budget every 5th time."""

    think = QWEN3_THINK

    def __init__(self):
        self.params = []

    def sample(self, prompts, params, mode=None):
        self.params.append(params)
        out = []
        for i, _ in enumerate(prompts):
            row = []
            for j in range(params.n):
                truncated = (i * params.n + j) % 5 == 4
                text = "<think>\nlong" if truncated else S(RECORDS[i]["answer"] if (i + j) % 4 < i + 1 else "x").text
                row.append(Reply(text, params.max_new_tokens if truncated else 10, "length" if truncated else "stop"))
            out.append(row)
        return out


def test_n_samples_give_unbiased_pass_at_k_settings_and_generations(tmp_path):
    records = [{**r, "prompt": f"p{r['id']}"} for r in RECORDS]
    sampler = SeededSampler()
    path = tmp_path / "gen.jsonl"
    out = evaluate(None, None, records, modes=["slow"], check=exact, k=[1, 2], n=8, sampler=sampler,
                   temperature=0.7, top_p=0.9, max_new_tokens=40, seed=3, generations_path=path)  # fmt: skip
    params = sampler.params[0]
    assert (params.n, params.temperature, params.top_p, params.max_new_tokens, params.seed) == (8, 0.7, 0.9, 40, 3)
    assert out["sampling"] == {"n": 8, "temperature": 0.7, "top_p": 0.9, "max_new_tokens": 40, "seed": 3,
                               "greedy": False, "sampler": "SeededSampler", "self_repair": False,
                               "think_start": "<think>", "think_end": "</think>"}  # fmt: skip
    assert out["n"] == 8 and out["ks"] == [1, 2] and out["generations"] == str(path)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 24 and rows[0]["id"] == "a" and rows[0]["mode"] == "slow" and rows[0]["sample"] == 0
    slow = out["modes"]["slow"]
    correct = {}
    for r in rows:
        correct.setdefault(r["id"], []).append(r["correct"])
        assert r["truncated"] == (r["finish_reason"] == "length") and (r["num_tokens"] == 40) == r["truncated"]
    assert sum(r["truncated"] for r in rows) == 4 and slow["truncation_rate"] == pytest.approx(4 / 24)
    assert slow["avg@8"] == pytest.approx(sum(r["correct"] for r in rows) / 24) == slow["avg@1"] == slow["avg@2"]
    for k in (1, 2):
        expected = sum(1 - math.comb(8 - sum(c), k) / math.comb(8, k) for c in correct.values()) / 3
        assert slow[f"pass@{k}"] == pytest.approx(expected)
    assert "Sampling: n=8, temperature=0.7, top_p=0.9, max_new_tokens=40, seed=3." in markdown_table(out)
    with pytest.raises(ValueError, match="1 <= k <= n = 2"):
        evaluate(None, None, records, modes=["slow"], check=exact, k=[4], n=2, sampler=sampler)


def test_evaluate_script_writes_every_output(script, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    data = _write(tmp_path / "bench.jsonl", [{"prompt": "1+1=", "task": "math", "answer": "2"},
                                             {"prompt": "2+2=", "task": "math", "answer": "4"}])  # fmt: skip
    argv = ["--model", str(tiny_model_dir), "--n", "2", "--k", "1", "2", "--max-new-tokens", "3", "--device", "cpu",
            "--out", str(tmp_path / "out"), "--seed", "1", "--budget-points", "3"]  # fmt: skip
    out = script("scripts/evaluate.py").main([*argv, "--data", str(data)])
    assert out["sampling"]["n"] == 2 and out["sampling"]["seed"] == 1 and out["ks"] == [1, 2]
    assert out["modes"]["fast"]["budget_curve"]["budgets"] == [1, 2, 3]
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["eval.budget.png", "eval.generations.jsonl", "eval.json", "eval.md", "eval.png"]
    rows = (tmp_path / "out/eval.generations.jsonl").read_text().splitlines()
    assert len(rows) == 2 * 2 * 3  # prompts x samples x modes
    # a 3-token budget cuts the tiny model's replies: the truncation rate says so
    assert out["modes"]["slow"]["truncation_rate"] == pytest.approx(
        sum(json.loads(r)["truncated"] for r in rows if '"mode": "slow"' in r) / 4
    )
    same = script("scripts/evaluate.py").main([*argv, "--dataset-name", str(data), "--out", str(tmp_path / "o2")])
    assert same["data"] == str(data) and same["modes"]["slow"]["samples"] == 4
    with pytest.raises(SystemExit):
        script("scripts/evaluate.py").parse(["--model", "m"])  # neither --data nor --dataset-name
