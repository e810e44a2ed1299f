"""The arithmetic world: correct traces, graded levels, and a teacher whose slips and padding are controlled."""

from __future__ import annotations

import random

import pytest

from train.core.modes import PANGU_THINK, QWEN3_THINK, Mode, parse_response
from train.world.arithmetic import (
    LEVELS,
    ArithmeticTeacher,
    addition_steps,
    corpus,
    make_dataset,
    make_mixed_problems,
    make_problem,
    make_problems,
    multiplication_steps,
)


def test_addition_trace_exact():
    lines, result = addition_steps(876, 530)
    assert lines == ["6+0+0=6", "7+3+0=10", "8+5+1=14", "carry 1"]
    assert result == 1406


def test_multiplication_trace_exact():
    lines, result = multiplication_steps(123, 45)
    assert result == 5535
    assert lines[:4] == ["3*5+0=15", "2*5+1=11", "1*5+1=6", "123*5=615"]
    assert "add 615+4920" in lines


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_every_level_is_solved_correctly(level):
    rng = random.Random(level)
    teacher = ArithmeticTeacher(QWEN3_THINK)
    for _ in range(50):
        p = make_problem(level, rng)
        for mode in (Mode.SLOW, Mode.FAST):
            parsed = parse_response(teacher.respond(p, mode), QWEN3_THINK)
            assert parsed.answer == p["answer"]
            assert parsed.mode == ("fast" if mode == Mode.FAST else "slow")


def test_problems_distinct_and_exclusion():
    test = make_problems(50, (1, 2), seed=1)
    train = make_problems(100, (1, 2), seed=0, exclude={p["id"] for p in test})
    assert len({p["id"] for p in train}) == 100
    assert not {p["id"] for p in train} & {p["id"] for p in test}
    assert [p["id"] for p in make_problems(10, (3,), seed=5)] == [p["id"] for p in make_problems(10, (3,), seed=5)]
    with pytest.raises(ValueError, match="distinct"):
        make_problems(200, (1,), seed=0)  # only 100 one-digit sums exist


def test_mixed_problems_have_the_asked_shares():
    test = make_problems(20, (3,), seed=1)
    shares = {1: 0.05, 3: 0.25, 7: 0.7}
    pool = make_mixed_problems(200, shares, seed=3, exclude={p["id"] for p in test})
    levels = [p["difficulty"] for p in pool]
    assert {lv: levels.count(lv) for lv in shares} == {1: 10, 3: 50, 7: 140}
    assert len({p["id"] for p in pool}) == 200 and not {p["id"] for p in pool} & {p["id"] for p in test}
    assert levels[:20] != sorted(levels[:20])  # shuffled, not in level blocks
    assert [p["id"] for p in make_mixed_problems(200, shares, seed=3)] == [p["id"] for p in pool]
    assert len(make_mixed_problems(7, {2: 1, 8: 1}, seed=0)) == 7  # the rounding remainder is still drawn
    assert all(len(p["a"].__str__()) == 6 for p in make_mixed_problems(5, {8: 1.0}))
    with pytest.raises(ValueError, match="shares"):
        make_mixed_problems(10, {1: 0.0})


def test_error_rate_and_verbosity():
    problems = make_problems(400, (3,), seed=2)
    sloppy = ArithmeticTeacher(QWEN3_THINK, error_rate=0.3, verbosity=0.5, seed=0)
    wrong = sum(parse_response(sloppy.respond(p), QWEN3_THINK).answer != p["answer"] for p in problems)
    assert 0.22 < wrong / len(problems) < 0.38
    clean = ArithmeticTeacher(QWEN3_THINK, seed=0)
    assert sum(len(sloppy.respond(p)) for p in problems) > 1.3 * sum(len(clean.respond(p)) for p in problems)
    with pytest.raises(ValueError, match="error_rate"):
        ArithmeticTeacher(QWEN3_THINK, error_rate=1.5)


def test_teacher_writes_the_format_it_is_given():
    problem = make_problem(3, random.Random(0))
    qwen3, pangu = ArithmeticTeacher(QWEN3_THINK, seed=1), ArithmeticTeacher(PANGU_THINK, seed=1)
    for mode in (Mode.SLOW, Mode.FAST):
        reply = pangu.respond(problem, mode)
        assert reply.startswith("[unused16]\n") and "<think>" not in reply
        assert reply == PANGU_THINK.rewrite(qwen3.respond(problem, mode), QWEN3_THINK)
        assert PANGU_THINK.parse(reply).answer == problem["answer"]
    with pytest.raises(TypeError, match="ThinkFormat"):
        ArithmeticTeacher("<think>")


def test_dataset_and_corpus_in_the_given_format():
    rows, _ = make_dataset(8, 4, [1, 2], ["slow", "fast"], think=PANGU_THINK)
    assert all(r["response"].startswith("[unused16]\n") for r in rows)
    assert {PANGU_THINK.parse(r["response"]).mode for r in rows} == {"slow", "fast"}
    assert any("[unused17]" in text for text in corpus(make_problems(3, (1,)), PANGU_THINK))
