"""The MARS router: routing per task, exact combined values, normalisation maths, metrics, config loading."""

from __future__ import annotations

import math
import pickle

import pytest

from rewards.base import ThinkFormatNotSet
from rewards.length import CosineLengthReward
from rewards.math import MathReward
from rewards.router import MARSConfig, MARSRouter, RunningStats
from train.core.modes import PANGU_THINK, QWEN3_THINK, ThinkFormat, completion_text


class Fixed:
    """A reward with fixed outputs per completion text; records what it was called with."""

    def __init__(self, name: str, table: dict[str, float | None], fail: bool = False):
        self.__name__ = name
        self.table = table
        self.fail = fail
        self.calls: list[tuple[list[str], dict]] = []

    def __call__(self, completions, **columns):
        self.calls.append(([completion_text(c) for c in completions], columns))
        if self.fail:
            raise RuntimeError("sandbox exploded")
        return [self.table.get(completion_text(c)) for c in completions]

    def seen(self) -> list[str]:
        return [c for completions, _ in self.calls for c in completions]


CONFIG = {
    "tasks": {
        "math": [{"name": "accuracy", "rewards": ["rule", "judge_eq"], "weight": 1.0}],
        "code": [{"name": "tests", "rewards": ["exec"], "weight": 2.0}],
        "general": [{"name": "accuracy", "rewards": ["rule", "judge_rubric"], "weight": 1.0}],
    },
    "shared": [{"name": "format", "rewards": ["fmt"], "weight": 0.5}],
    "normalize": False,
}

# One mixed batch: completion text -> task.
BATCH = [("m1", "math"), ("m2", "math"), ("m3", "math"), ("c1", "code"), ("c2", "code"), ("g1", "general")]


def fixed_rewards(**fail):
    return {
        "rule": Fixed("rule", {"m1": 1.0, "m2": None, "m3": 0.0, "g1": None}),
        "judge_eq": Fixed("judge_eq", {"m2": 1.0}),
        "judge_rubric": Fixed("judge_rubric", {"g1": 0.7}),
        "exec": Fixed("exec", {"c1": 1.0, "c2": 0.25}, fail=fail.get("exec", False)),
        "fmt": Fixed("fmt", {"m1": 1.0, "m2": 0.0, "m3": 1.0, "c1": 1.0, "c2": 0.0, "g1": 1.0}),
    }


def call(router, batch=BATCH, **extra):
    completions = [text for text, _ in batch]
    columns = {
        "task": [task for _, task in batch],
        "prompts": [f"prompt of {text}" for text, _ in batch],
        "answer": [f"ref {text}" for text, _ in batch],
        **extra,
    }
    return router(completions, **columns)


def test_mixed_batch_exact_values_and_routing():
    rewards = fixed_rewards()
    router = MARSRouter(CONFIG, rewards=rewards)
    logged = []
    out = call(router, log_metric=lambda k, v: logged.append((k, v)))
    # math: rule then judge only where the rule returned None; code: execution, weight 2; general: judge.
    assert out == pytest.approx([1.0 + 0.5, 1.0 + 0.0, 0.0 + 0.5, 2.0 + 0.5, 0.5 + 0.0, 0.7 + 0.5])
    assert rewards["rule"].seen() == ["m1", "m2", "m3", "g1"]
    assert rewards["judge_eq"].seen() == ["m2"]  # the fallback sees only what the rule could not decide
    assert rewards["judge_rubric"].seen() == ["g1"]
    assert rewards["exec"].seen() == ["c1", "c2"]
    assert rewards["fmt"].seen() == ["m1", "m2", "m3", "c1", "c2", "g1"]  # shared: one call for the batch
    # Columns are sliced to the routed samples; the task column is the router's business only.
    _, columns = rewards["exec"].calls[0]
    assert columns["prompts"] == ["prompt of c1", "prompt of c2"] and columns["answer"] == ["ref c1", "ref c2"]
    assert "task" not in columns and "log_metric" not in columns
    metrics = dict(logged)
    assert metrics == pytest.approx(
        {
            "mars/math/fraction": 0.5,
            "mars/math/reward": (1.5 + 1.0 + 0.5) / 3,
            "mars/math/accuracy": (1.0 + 1.0 + 0.0) / 3,
            "mars/math/accuracy/fallback": 1 / 3,
            "mars/math/format": 2 / 3,
            "mars/code/fraction": 2 / 6,
            "mars/code/reward": (2.5 + 0.5) / 2,
            "mars/code/tests": 0.625,
            "mars/code/format": 0.5,
            "mars/general/fraction": 1 / 6,
            "mars/general/reward": 1.2,
            "mars/general/accuracy": 0.7,
            "mars/general/accuracy/fallback": 1.0,
            "mars/general/format": 1.0,
        }
    )
    assert router.last_metrics == metrics


def test_none_when_nothing_applies_and_unknown_tasks():
    rewards = fixed_rewards()
    rewards["fmt"] = Fixed("fmt", {})  # format n/a everywhere
    router = MARSRouter(CONFIG, rewards=rewards)
    out = call(router, batch=[("m3", "math"), ("zz", "math"), ("x", "poetry"), ("g1", None)])
    assert out == [0.0, None, None, None]  # zz: no source applies; poetry: unknown task; None: no default task
    assert "x" not in rewards["rule"].seen()
    with pytest.raises(ValueError, match=r"poetry.*configured tasks"):
        router.check_tasks(["math", "poetry"], where="train.jsonl")
    router.check_tasks(["math", "code", "general"])

    with_default = MARSRouter({**CONFIG, "default_task": "general"}, rewards=fixed_rewards())
    assert call(with_default, batch=[("g1", None)]) == pytest.approx([1.2])


def test_a_broken_batch_scores_none_instead_of_crashing(caplog):
    router = MARSRouter(CONFIG, rewards=fixed_rewards())
    assert router(["m1", "m2"], task=["math"]) == [None, None]  # task column too short
    assert "MARS router failed" in caplog.text


def test_a_failing_reward_falls_through_and_never_raises():
    rewards = fixed_rewards(exec=True)
    router = MARSRouter(CONFIG, rewards=rewards)
    out = call(router)
    assert out[3:5] == pytest.approx([0.5, 0.0])  # code samples keep their format term only
    assert out[0] == pytest.approx(1.5)


def test_running_stats_cumulative_is_exact():
    batches = [[1.0, 0.0, 1.0], [0.5], [], [0.25, 0.75, -1.0, 2.0]]
    stats = RunningStats()
    for b in batches:
        stats.merge(len(b), sum(b), sum(x * x for x in b))
    everything = [x for b in batches for x in b]
    mean = sum(everything) / len(everything)
    var = sum((x - mean) ** 2 for x in everything) / len(everything)
    assert stats.count == 8
    assert stats.mean == pytest.approx(mean, abs=1e-12)
    assert stats.var == pytest.approx(var, abs=1e-12)


def test_running_stats_ema_is_the_mixture_formula():
    stats = RunningStats()
    stats.merge(2, 2.0, 2.0, momentum=0.9)  # [1, 1]: mean 1, var 0 (first batch taken as is)
    stats.merge(2, 0.0, 0.0, momentum=0.9)  # [0, 0]
    assert stats.mean == pytest.approx(0.9 * 1.0 + 0.1 * 0.0)
    assert stats.var == pytest.approx(0.9 * 0.0 + 0.1 * 0.0 + 0.9 * 0.1 * 1.0)
    assert stats.count == 4


def test_router_normalisation_exact_with_warmup_and_clip():
    config = {
        "tasks": {"math": [{"name": "accuracy", "rewards": ["rule"], "weight": 2.0}]},
        "shared": [],
        "normalize": True,
        "warmup": 4,
        "clip": 1.5,
    }
    table = {"a": 1.0, "b": 0.0, "c": 1.0, "d": 1.0}
    router = MARSRouter(config, rewards={"rule": Fixed("rule", table)})
    # Batch 1: 2 samples seen < warm-up 4: raw values, weighted.
    assert call(router, batch=[("a", "math"), ("b", "math")]) == [2.0, 0.0]
    # Batch 2: stats over [1, 0, 1, 1]: mean 0.75, std sqrt(0.1875); values standardised, then clipped.
    out = call(router, batch=[("c", "math"), ("d", "math")])
    std = math.sqrt(0.1875)
    z = (1.0 - 0.75) / (std + 1e-6)
    assert out == pytest.approx([2.0 * z, 2.0 * z])
    stats = router.stats[("math", "accuracy")]
    assert (stats.count, stats.mean, stats.var) == (4, pytest.approx(0.75), pytest.approx(0.1875))
    out = call(router, batch=[("b", "math")])  # stats now [1,0,1,1,0]: mean 0.6, var 0.24
    z = (0.0 - 0.6) / (math.sqrt(0.24) + 1e-6)
    assert z < -1.2 and out == pytest.approx([2.0 * max(z, -1.5)])


def test_per_source_normalisation_puts_sources_on_one_scale():
    """Two sources on very different scales end up with unit variance each (so the weights decide)."""
    config = {
        "tasks": {"math": [{"name": "big", "rewards": ["big"]}, {"name": "small", "rewards": ["small"]}]},
        "shared": [],
        "warmup": 0,
    }
    big = Fixed("big", {str(i): 100.0 * (i % 2) for i in range(8)})
    small = Fixed("small", {str(i): 0.01 * (i % 2) for i in range(8)})
    router = MARSRouter(config, rewards={"big": big, "small": small})
    out = call(router, batch=[(str(i), "math") for i in range(8)])
    # Each source standardises to +-1 (mean 0.5*scale, std 0.5*scale): the sum is +-2, not dominated by `big`.
    assert out == pytest.approx([-2.0, 2.0] * 4, abs=1e-3)


def test_as_reward_functions_sum_to_the_router():
    config = {**CONFIG, "normalize": True, "warmup": 0}
    combined = MARSRouter(config, rewards=fixed_rewards())
    expected = call(combined)
    separate = MARSRouter(config, rewards=fixed_rewards())
    funcs, weights = separate.as_reward_functions()
    assert [f.__name__ for f in funcs] == [
        "mars/math/accuracy",
        "mars/code/tests",
        "mars/general/accuracy",
        "mars/shared/format",
    ]
    assert weights == [1.0, 2.0, 1.0, 0.5]
    logged = []
    columns = {"task": [t for _, t in BATCH], "log_metric": lambda k, v: logged.append(k)}
    outputs = [f([c for c, _ in BATCH], **columns) for f in funcs]
    assert outputs[1][:3] == [None, None, None]  # code source: None on non-code samples
    total = [sum(w * o[i] for w, o in zip(weights, outputs) if o[i] is not None) for i in range(len(BATCH))]
    assert total == pytest.approx(expected)
    assert "mars/code/tests" in logged and "mars/general/format" in logged


def test_config_from_yaml_and_clear_errors(tmp_path):
    path = tmp_path / "mars.yaml"
    path.write_text(
        "tasks:\n  math:\n    - {name: accuracy, rewards: [math, judge_equivalence], weight: 2}\n"
        "shared: []\nwarmup: 8\njudge: {base_url: 'http://127.0.0.1:1/v1'}\n"
    )
    config = MARSConfig.from_yaml(path)
    assert config.tasks["math"][0].rewards == ["math", "judge_equivalence"]
    assert config.tasks["math"][0].weight == 2.0 and config.warmup == 8
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['warmpu'\]"):
        MARSConfig.from_dict({"warmpu": 3})
    with pytest.raises(ValueError, match=r"tasks\['math'\]\[0\]: unknown source key"):
        MARSConfig.from_dict({"tasks": {"math": [{"name": "a", "rewards": ["math"], "wieght": 1}]}})
    with pytest.raises(ValueError, match=r"key 'weight'"):
        MARSConfig.from_dict({"tasks": {"math": [{"name": "a", "rewards": ["math"], "weight": "heavy"}]}})
    with pytest.raises(ValueError, match="also in `shared`"):
        MARSConfig.from_dict({"tasks": {"math": [{"name": "format", "rewards": ["math"]}]}})
    with pytest.raises(ValueError, match="default_task"):
        MARSConfig(default_task="poetry")
    with pytest.raises(FileNotFoundError, match="no such MARS config"):
        MARSConfig.from_yaml(tmp_path / "missing.yaml")
    for f in MARSConfig.__dataclass_fields__.values():
        assert f.metadata.get("help"), f"MARSConfig.{f.name} has no help"


def test_router_pickles_with_its_state():
    router = MARSRouter({**CONFIG, "normalize": True, "warmup": 0}, rewards=fixed_rewards())
    call(router)
    clone = pickle.loads(pickle.dumps(router))
    assert clone.__name__ == "mars"
    assert clone.stats[("math", "accuracy")] == router.stats[("math", "accuracy")]
    assert call(clone) == pytest.approx(call(router))


def test_default_config_with_the_registered_rewards(monkeypatch):
    """The default sources build from the registry and score a mixed batch end to end (judge unreachable)."""
    pytest.importorskip("rewards.code")
    judge = {"base_url": "http://127.0.0.1:9/v1", "max_retries": 0, "timeout": 0.5}
    router = MARSRouter(judge=judge, warmup=10**9, think=QWEN3_THINK)
    fast = "<think>\n\n</think>\n\n"
    completions = [fast + "\\boxed{4}", fast + "\\boxed{5}", fast + "Paris is the capital."]
    out = router(
        completions,
        prompts=["2+2? /no_think", "2+2? /no_think", "Capital of France? /no_think"],
        task=["math", "math", "general"],
        answer=["4", "4", "Paris"],
        completion_ids=[[1] * 5, [1] * 5, [1] * 20],
    )
    m = router.last_metrics
    assert m["mars/math/accuracy"] == 0.5  # rule layer: one right, one wrong; the judge was not needed
    assert "mars/math/accuracy/fallback" in m and m["mars/math/accuracy/fallback"] == 0.0
    assert out[0] > out[1]
    assert m["mars/math/format"] == 1.0


def test_state_round_trip_and_think_delimiters(tmp_path):
    router = MARSRouter({**CONFIG, "normalize": True, "warmup": 0}, rewards=fixed_rewards())
    call(router)
    path = router.save_state(tmp_path)
    assert path.name == "mars_state.json"
    fresh = MARSRouter({**CONFIG, "normalize": True, "warmup": 0}, rewards=fixed_rewards())
    assert fresh.load_state(tmp_path) and fresh.stats == router.stats
    assert not fresh.load_state(tmp_path / "nowhere")
    assert call(fresh) == pytest.approx(call(router))

    math_reward = MathReward()
    pangu = MARSRouter(
        {"tasks": {"math": [{"name": "accuracy", "rewards": ["math"]}]}, "shared": [], "normalize": False},
        rewards={"math": math_reward},
        think_start="[unused16]",
        think_end="[unused17]",
    )
    closed = "[unused16]\nadd\n[unused17]\n\n\\boxed{4}"
    unclosed = "[unused16]\nthe answer is \\boxed{4}"  # read as an answer if the delimiters were unknown
    assert pangu([closed, unclosed], task=["math"] * 2, answer=["4"] * 2) == [1.0, 0.0]
    assert math_reward.think == PANGU_THINK  # the MARS config's keys reached the sub-reward


@pytest.mark.parametrize(
    ("answer", "reference", "expected"),
    [
        ("Canberra", "Canberra.", 1.0),
        ("I think...\n**Canberra**", "Canberra.", 1.0),  # the last line
        ("The answer is \\boxed{Canberra}", "Canberra", 1.0),
        ("The capital is Canberra.", "Canberra.", None),  # phrased differently: the judge decides
        ("Sydney", "Canberra.", None),  # the rule only confirms; a mismatch goes to the judge
        ("0.5", "1/2", 1.0),  # bare numbers are verified with math-verify
        ("7", "8", 0.0),
        ("anything", "A whole number greater than 1 with no divisors", None),  # prose: not checkable
        ("x", None, None),
    ],
)
def test_short_answer_rule_layer_for_general(answer, reference, expected):
    from rewards.router import ShortAnswerReward

    assert ShortAnswerReward(think=QWEN3_THINK)(["<think>\n\n</think>\n\n" + answer], answer=[reference]) == [expected]
    assert ShortAnswerReward(think=QWEN3_THINK)(["<think>never closed"], answer=["Canberra"]) == [0.0]


def test_general_falls_back_to_the_judge_only_when_the_rule_cannot_confirm():
    from rewards.router import ShortAnswerReward

    judge = Fixed("judge_rubric", {"<think>\n\n</think>\n\nIt is Canberra.": 0.9})
    router = MARSRouter(
        {"tasks": {"general": [{"name": "accuracy", "rewards": ["short_answer", "judge_rubric"]}]}, "shared": []},
        rewards={"short_answer": ShortAnswerReward(think=QWEN3_THINK), "judge_rubric": judge},
        normalize=False,
    )
    fast = "<think>\n\n</think>\n\n"
    out = router([fast + "Canberra", fast + "It is Canberra."], task=["general"] * 2, answer=["Canberra."] * 2)
    assert out == [1.0, 0.9]
    assert judge.seen() == [fast + "It is Canberra."]
    assert router.last_metrics["mars/general/accuracy/fallback"] == 0.5


def test_set_think_format_reaches_every_source_and_leaves_the_config_keys():
    cosine = CosineLengthReward(max_length=100)
    router = MARSRouter(
        {"tasks": {"math": [{"name": "accuracy", "rewards": ["math", "rule"]}]}, "shared": [], "normalize": False},
        rewards={"math": MathReward(), "rule": Fixed("rule", {}), "cosine": cosine},
    )
    assert router.think is None and router.config.think is None
    router.set_think_format(PANGU_THINK)
    assert router.think == router.rewards["math"].think == PANGU_THINK
    assert cosine.think == cosine.math.think == PANGU_THINK  # the inner correctness check reads the same replies
    assert not hasattr(router.rewards["rule"], "think")  # a plain callable is left alone
    assert router.config.think is None  # the user's keys stay what the user wrote
    with pytest.raises(TypeError, match="takes a ThinkFormat"):
        router.set_think_format(("<think>", "</think>"))


def test_think_keyword_wins_over_the_config_keys_and_the_keys_come_in_pairs():
    config = {"tasks": {"math": [{"name": "accuracy", "rewards": ["math"]}]}, "shared": []}
    keys = {"think_start": "[unused16]", "think_end": "[unused17]"}
    assert MARSConfig.from_dict({**config, **keys}).think == PANGU_THINK
    assert MARSRouter({**config, **keys}, think=QWEN3_THINK).rewards["math"].think == QWEN3_THINK
    with pytest.raises(ValueError, match="set both"):
        MARSConfig.from_dict({**config, "think_start": "[unused16]"})
    with pytest.raises(ValueError, match="must differ"):
        MARSConfig.from_dict({**config, "think_start": "<t>", "think_end": "<t>"})
    assert MARSRouter(config, think=ThinkFormat("<r>", "</r>")).think == ThinkFormat("<r>", "</r>")


def test_a_router_without_a_think_format_stops_the_run_instead_of_scoring_none():
    router = MARSRouter({"tasks": {"math": [{"name": "accuracy", "rewards": ["math"]}]}, "shared": []})
    with pytest.raises(ThinkFormatNotSet, match="reward 'math' has no think format"):
        router(["<think></think>\\boxed{4}"], task=["math"], answer=["4"])


_RANK_SCRIPT = """
import json, sys
import torch.distributed as dist
from rewards.router import MARSRouter

rank = int(sys.argv[1])
dist.init_process_group("gloo", init_method="file://" + {store!r}, rank=rank, world_size=2)
values = {{0: [1.0, 0.0, 1.0], 1: [0.0, 0.0, 0.0, 0.0, 1.0]}}[rank]
rule = lambda completions, **_: [float(c) for c in completions]
router = MARSRouter(
    {{"tasks": {{"math": [{{"name": "accuracy", "rewards": ["rule"]}}]}}, "shared": [], "warmup": 0}},
    rewards={{"rule": rule}},
)
out = router([str(v) for v in values], task=["math"] * len(values))
stats = router.stats[("math", "accuracy")]
print(json.dumps({{"count": stats.count, "mean": stats.mean, "var": stats.var, "out": out}}))
dist.destroy_process_group()
"""


def test_normalisation_statistics_are_identical_across_ranks(tmp_path):
    """Two gloo processes with different batches end up with the statistics of the union of both batches."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "rank.py"
    root = str(Path(__file__).resolve().parents[1])
    script.write_text(_RANK_SCRIPT.format(root=root, store=str(tmp_path / "store")))
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(r)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for r in (0, 1)
    ]
    results = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=120)
        assert p.returncode == 0, stderr[-2000:]
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    union = [1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    mean = sum(union) / 8
    var = sum((x - mean) ** 2 for x in union) / 8
    for r in results:
        assert r["count"] == 8
        assert r["mean"] == pytest.approx(mean) and r["var"] == pytest.approx(var)
    z_one = (1.0 - mean) / (math.sqrt(var) + 1e-6)
    assert results[0]["out"] == pytest.approx([z_one, -mean / (math.sqrt(var) + 1e-6), z_one])
