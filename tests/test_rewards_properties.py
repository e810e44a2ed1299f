"""Properties every registered reward must have: no exception on arbitrary text, a value per completion (None or a
finite float, in the reward's range), pickle round trips that keep ``__name__`` and behaviour, and the same results
from worker threads and worker processes (fork and spawn) as in the main thread.

Rewards whose module is not there yet are skipped; judges get a local fake backend (no network), and the MARS
router runs with normalisation off so that its output does not depend on call history.
"""

from __future__ import annotations

import importlib
import math
import multiprocessing
import pickle
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rewards
from rewards.registry import registered
from rewards.repetition import repetition_ratio
from train.core.modes import QWEN3_THINK
from train.sampling.loops import LoopInfo, detect_loop


def _load_registry() -> dict[str, Any]:
    try:
        rewards.REWARDS  # noqa: B018 - imports every reward module
    except ModuleNotFoundError:
        for module in rewards._MODULES:  # some modules are not written yet: load those that are
            try:
                importlib.import_module(f"rewards.{module}")
            except ModuleNotFoundError as exc:
                if exc.name != f"rewards.{module}":
                    raise
    return registered()


REGISTRY = _load_registry()
NAMES = sorted(REGISTRY)

# Parameters that keep a reward local, deterministic and quick.
PARAMS: dict[str, dict[str, Any]] = {
    "math": {"timeout_s": 2.0},
    "cosine_length": {"timeout_s": 2.0, "max_length": 50},
    "overlong": {"max_length": 40, "cache": 10},
    "mode_length": {"fast_budget": 8, "slow_budget": 40},
    "code": {"max_workers": 1},
    "code_binary": {"max_workers": 1},
    "mars": {"normalize": False},
}
# Rewards that read replies take the run's think format (the others have no use for it).
READS_REPLIES = ("math", "cosine_length", "mode_length", "code", "code_binary", "format", "mode", "short_answer")
READS_REPLIES += ("mode_choice", "judge", "judge_rubric", "judge_equivalence", "mars")
for _name in READS_REPLIES:
    PARAMS[_name] = {**PARAMS.get(_name, {}), "think": QWEN3_THINK}
# Closed ranges of the rewards of this package's core (None is always allowed).
RANGES = {
    "math": (0.0, 1.0),
    "format": (0.0, 1.0),
    "mode": (0.0, 1.0),
    "repetition": (-1.0, 0.0),
    "overlong": (-1.0, 0.0),
    "cosine_length": (-1.0, 1.0),
    "mode_length": (-1.0, 0.0),
}


class FakeJudgeBackend:
    """A judge backend that answers from the request text: no network, deterministic, sometimes unreadable."""

    model_id = "fake:judge"
    reply_think = None  # the judge's own replies carry no think block
    replies = ("7", "Score: 10", "yes", "no", "The answers are equivalent. Verdict: 1", "unreadable", None)

    def generate(self, requests: list[list[dict]]) -> list[str | None]:
        return [self.replies[len(str(r)) % len(self.replies)] for r in requests]


def _patch_judges(reward: Any) -> Any:
    if hasattr(reward, "backend") and hasattr(reward, "kind"):
        reward.backend = FakeJudgeBackend()
        reward.cache = None
    for inner in getattr(reward, "rewards", {}).values() if isinstance(getattr(reward, "rewards", None), dict) else ():
        _patch_judges(inner)
    return reward


def build(name: str) -> Any:
    try:
        reward = rewards.get_reward(name, **PARAMS.get(name, {}))
    except ModuleNotFoundError:  # a reward module not written yet: build from what is registered
        reward = REGISTRY[name](**PARAMS.get(name, {}))
    return _patch_judges(reward)


@pytest.fixture(scope="module", params=NAMES)
def reward(request):
    try:
        return build(request.param)
    except Exception as exc:  # pragma: no cover - depends on other modules' defaults
        pytest.skip(f"reward {request.param!r} cannot be built with test parameters: {exc}")


# ------------------------------------------------------------------------------------------------------ batches

FRAGMENTS = [
    "<think>",
    "</think>",
    "\\boxed{",
    "}",
    "$",
    "42",
    "\\frac{1}{2}",
    "1<x<2",
    "(1,2)",
    " the the the ",
    "我",
    "/no_think",
    "/think",
    "/auto_think",
    "\n",
    "```python\nprint(input())\n```\n",
    "[unused16]",
    "\x00",
    "\\",
]
TEXT = st.lists(st.one_of(st.text(max_size=30), st.sampled_from(FRAGMENTS)), max_size=12).map("".join)
COMPLETION = st.one_of(TEXT, TEXT.map(lambda t: [{"role": "assistant", "content": t}]))
PROMPT = st.one_of(st.none(), TEXT, TEXT.map(lambda t: [{"role": "user", "content": t}]))
ANSWER = st.one_of(st.none(), st.integers(-5, 50), TEXT, st.sampled_from(["42", "\\frac12", "1<x<2", "(1,2)", ""]))
TASK = st.one_of(st.none(), st.sampled_from(["math", "code", "general", "MATH", ""]), st.text(max_size=8))
TESTS = st.one_of(
    st.none(), st.just([{"input": "5\n", "output": "5"}]), st.just("not json"), st.just([{"nonsense": 1}])
)
ROW = st.tuples(COMPLETION, PROMPT, ANSWER, TASK, TESTS, st.lists(st.integers(0, 1000), max_size=60))


def columns(rows: list[tuple]) -> tuple[list[Any], dict[str, list[Any]]]:
    completions = [r[0] for r in rows]
    cols = {
        "prompts": [r[1] for r in rows],
        "answer": [r[2] for r in rows],
        "task": [r[3] for r in rows],
        "tests": [r[4] for r in rows],
        "completion_ids": [r[5] for r in rows],
    }
    return completions, cols


FIXED_ROWS = [
    ("<think>6*7</think>\\boxed{42}", "6*7? /think", "42", "math", None, [1] * 30),
    ("<think>\n\n</think>\n\n42", "6*7? /no_think", "42", None, None, [1] * 9),
    ("<think>\\boxed{42}</think>41", [{"role": "user", "content": "6*7? /auto_think"}], "42", "math", None, [2] * 45),
    ("<think>never closed 42 42 42 42", None, "\\frac12", "math", None, list(range(80))),
    ("```python\nprint(input())\n```", "echo /no_think", None, "code", [{"input": "5\n", "output": "5"}], [3] * 12),
    ("the the the the the", "say the /auto_think", "no answer", "general", None, [4] * 5),
]


def check_values(name: str, values: Any, n: int) -> None:
    assert isinstance(values, list) and len(values) == n, f"{name} returned {values!r} for {n} completions"
    low, high = RANGES.get(name, (-math.inf, math.inf))
    for v in values:
        assert v is None or (isinstance(v, float) and math.isfinite(v) and low <= v <= high), f"{name}: {v!r}"


# ---------------------------------------------------------------------------------------------------- properties


def test_registry_has_the_core_rewards():
    for name in ("math", "format", "mode", "repetition", "overlong", "cosine_length", "mode_length"):
        assert name in REGISTRY
        assert build(name).__name__ == name


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(ROW, min_size=1, max_size=4))
def test_no_reward_raises_on_arbitrary_text(reward, rows):
    completions, cols = columns(rows)
    check_values(reward.__name__, reward(completions, **cols), len(completions))
    check_values(reward.__name__, reward(completions), len(completions))  # no columns at all


def test_pickle_round_trip_keeps_name_and_behaviour(reward):
    completions, cols = columns(FIXED_ROWS)
    expected = reward(completions, **cols)
    check_values(reward.__name__, expected, len(completions))
    copy = pickle.loads(pickle.dumps(reward))
    assert copy.__name__ == reward.__name__
    assert copy(completions, **cols) == expected


def test_same_results_from_worker_threads(reward):
    completions, cols = columns(FIXED_ROWS)
    expected = reward(completions, **cols)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: reward(completions, **cols), range(8)))
    assert results == [expected] * 8


@pytest.fixture(scope="module")
def process_pools():
    """A fork pool and a spawn pool (a fresh interpreter that unpickles the reward), started once."""
    pools = [ProcessPoolExecutor(1, mp_context=multiprocessing.get_context(m)) for m in ("fork", "spawn")]
    yield pools
    for pool in pools:
        pool.shutdown()


def test_same_results_from_worker_processes(reward, process_pools):
    completions, cols = columns(FIXED_ROWS)
    expected = reward(completions, **cols)
    futures = [pool.submit(reward, completions, **cols) for pool in process_pools for _ in range(2)]
    assert [f.result(timeout=120) for f in futures] == [expected] * 4


# ------------------------------------------------------------------------------------------- repetition helpers


def _brute_force_loop(seq: list[int], ngram: int, window: int, min_repeats: int) -> LoopInfo | None:
    n = len(seq)
    for period in range(1, min(window, n) // min_repeats + 1):
        need = period * -(-ngram // period) * min_repeats
        if need > min(window, n):
            continue
        start = n - period
        while start > 0 and seq[start - 1] == seq[start - 1 + period]:
            start -= 1
        if n - start >= need:
            return LoopInfo(start, period, n - start)
    return None


@settings(max_examples=300, deadline=None)
@given(
    seq=st.lists(st.integers(0, 2), max_size=40),
    unit=st.lists(st.integers(0, 2), min_size=1, max_size=4),
    copies=st.integers(0, 6),
    ngram=st.integers(1, 5),
    window=st.integers(1, 40),
    min_repeats=st.integers(2, 4),
)
def test_detect_loop_matches_brute_force(seq, unit, copies, ngram, window, min_repeats):
    seq = seq + unit * copies
    found = detect_loop(seq, ngram, window, min_repeats)
    assert found == _brute_force_loop(seq, ngram, window, min_repeats)
    if found is not None:
        tail = seq[found.start :]
        assert all(tail[i] == tail[i + found.period] for i in range(len(tail) - found.period))
    assert detect_loop("".join(map(str, seq)), ngram, window, min_repeats) == found  # strings work the same


@given(items=st.lists(st.integers(0, 3), max_size=30), ngram=st.integers(1, 4))
def test_repetition_ratio_is_a_fraction(items, ngram):
    assert 0.0 <= repetition_ratio(items, ngram) <= 1.0
