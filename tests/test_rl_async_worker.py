"""trl's async rollout loop with our prompt queue and dynamic sampling, driven on a CPU (no vLLM server).

The loop is trl 1.16's real ``_AsyncRolloutLoop`` (subclassed): its constructor, its per-group iterator and its
scoring run as they would in the worker's child process; only the vLLM server and the spawn are missing.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import pickle
from types import SimpleNamespace

import pytest
from datasets import Dataset

from train.core.loading import load_tokenizer
from train.rl.queue import STATE_FILE, PromptQueue, QueueConfig

pytest.importorskip("trl.experimental.async_grpo.async_rollout_worker")
from trl.experimental.async_grpo import async_rollout_worker as trl_worker  # noqa: E402
from trl.experimental.async_grpo.async_rollout_worker import RolloutGroup, TrainingSequence  # noqa: E402

from train.rl.async_worker import (  # noqa: E402
    AsyncQueueStateCallback,
    FastslowRolloutLoop,
    conversation_rewards,
    use_fastslow_loop,
)

G = 4
PROMPTS = [f"Compute {i}+{i + 1}." for i in range(6)]


def table_reward(completions, **kwargs):
    """The reward written in the completion's text: a float, or None (unscorable) for 'x'."""
    return [None if c[0]["content"] == "x" else float(c[0]["content"]) for c in completions]


def dataset() -> Dataset:
    return Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in PROMPTS])


def queue(seed: int = 0) -> PromptQueue:
    return PromptQueue(PROMPTS, {p: 0.5 for p in PROMPTS}, QueueConfig(seed=seed))


def loop_kwargs(tokenizer, **extra) -> dict:
    ctx = mp.get_context("spawn")
    return dict(
        model_name="served",
        dataset=dataset(),
        reward_funcs=[table_reward],
        processing_class=tokenizer,
        eos_token_ids=[tokenizer.eos_token_id],
        num_generations=G,
        **extra,
    ), dict(
        rollout_buffer=ctx.Queue(),
        model_version_value=ctx.Value("i", 0),
        heartbeat_value=ctx.Value("d", 0.0),
        failed_event=ctx.Event(),
        exception_info_queue=ctx.Queue(maxsize=1),
        metrics_queue=ctx.Queue(),
    )


@pytest.fixture
def make_loop(tiny_model_dir):
    from accelerate.state import PartialState

    PartialState()  # trl's child does this before building the loop (its logger needs it)
    tokenizer = load_tokenizer(tiny_model_dir)

    def make(**extra) -> FastslowRolloutLoop:
        options, shared = loop_kwargs(tokenizer, **extra)
        return FastslowRolloutLoop(**options, **shared)

    return make


def group(group_id: int, texts: list[str], forks: int = 1) -> RolloutGroup:
    """A finished group: one conversation per text (its reward is the text), ``forks`` training rows each."""
    rows = [
        [TrainingSequence([1, 2, 3], [0, 1, 1], [0.0, -0.5, -0.5], f"r{i}-{f}") for f in range(forks)]
        for i in range(len(texts))
    ]
    return RolloutGroup(
        prompts=[[{"role": "user", "content": "p"}]] * len(texts),
        reward_kwargs={},
        completions=[[{"role": "assistant", "content": t}] for t in texts],
        completions_ids=[[2, 3]] * len(texts),
        completions_sequences=rows,
        tool_call_counts=[0] * len(texts),
        tool_failure_counts=[0] * len(texts),
        model_version=3,
        group_id=group_id,
        env_rewards=[None] * len(texts),
        rollout_rewards=[None] * len(texts),
    )


def score(loop: FastslowRolloutLoop, g: RolloutGroup) -> list:
    return loop._loop.run_until_complete(loop._score_group(g))


def test_the_queue_picks_each_groups_prompt_in_its_seeded_order(make_loop):
    loop = make_loop(prompt_queue=queue(seed=7))
    items = iter(loop._repeat_iterator())
    drawn = [next(items) for _ in range(5 * G)]
    twin = queue(seed=7)
    expected = [twin.draw(1)[0] for _ in range(5)]
    for g, position in enumerate(expected):
        assert drawn[g * G : (g + 1) * G] == [(g, loop.dataset[position])] * G  # G replies to one prompt per group
    assert [loop._positions[g] for g in range(5)] == expected
    plain = iter(make_loop()._repeat_iterator())  # no queue: trl's dataset order, unchanged
    assert [next(plain)[1]["prompt"][0]["content"] for _ in range(2 * G)] == [PROMPTS[0]] * G + [PROMPTS[1]] * G


def test_dynamic_sampling_drops_groups_without_a_signal_and_counts_them(make_loop):
    loop = make_loop(dynamic_sampling=True)
    loop._positions.update({0: 0, 1: 1, 2: 2})
    assert score(loop, group(0, ["1", "1", "1", "1"])) == []  # all equal: no gradient
    assert score(loop, group(1, ["1", "x", "x", "x"])) == []  # one scored reply: no group statistics
    kept = score(loop, group(2, ["1", "0", "1", "0"], forks=2))
    assert len(kept) == 2 * G and {s.model_version for s in kept} == {3}
    assert [s.advantage for s in kept[::2]] == pytest.approx([1, -1, 1, -1], abs=1e-6)
    assert loop._counters["dynamic_sampling/dropped_groups_total"] == 2
    assert loop._rates["dynamic_sampling/zero_std_frac_raw"] == [2.0, 3.0]
    keeping = make_loop()  # without dynamic sampling every group is trained; the share is still measured
    assert len(score(keeping, group(0, ["1", "1", "1", "1"]))) == G
    assert keeping._rates["dynamic_sampling/zero_std_frac_raw"] == [1.0, 1.0]


def test_conversation_rewards_read_one_value_per_conversation_across_forks(make_loop):
    loop = make_loop()
    g = group(0, ["1", "x", "0.5", "0"], forks=3)
    rewards = conversation_rewards(g, score(loop, g))
    assert rewards[0] == 1.0 and math.isnan(rewards[1]) and rewards[2:] == [0.5, 0.0]


def test_scored_groups_update_the_queue_which_survives_a_checkpoint(make_loop, tmp_path):
    start = queue()
    loop = make_loop(prompt_queue=start, queue_dir=str(tmp_path / "q"), queue_save_every=2)
    (tmp_path / "q").mkdir()
    items = iter(loop._repeat_iterator())
    first, second = next(items)[0], [next(items) for _ in range(G)][-1][0]
    p0, p1 = loop._positions[first], loop._positions[second]
    score(loop, group(first, ["1", "1", "0", "x"]))  # 2 of 3 scored replies succeed
    assert loop.prompt_queue.pass_rate[p0] == pytest.approx(0.5 / 2 + (2 / 3) / 2)  # prior weight 1, one update
    assert not (tmp_path / "q" / STATE_FILE).exists()  # saved every 2 groups
    score(loop, group(second, ["0", "0", "0", "1"]))
    assert loop._counters["queue/mean_pass_rate"] == pytest.approx(loop.prompt_queue.stats()["queue/mean_pass_rate"])
    saved = json.loads((tmp_path / "q" / STATE_FILE).read_text())
    assert saved["pass_rate"][p1] == pytest.approx(0.5 / 2 + 0.25 / 2) and saved["clock"] == 2
    # The trainer's checkpoint gets a copy; a resumed run's queue starts from it.
    out = tmp_path / "run"
    args, state = SimpleNamespace(output_dir=str(out)), SimpleNamespace(is_world_process_zero=True, global_step=7)
    AsyncQueueStateCallback(tmp_path / "q").on_save(args, state, None)
    resumed = queue()
    assert resumed.load(out / "checkpoint-7") and resumed.state_dict() == loop.prompt_queue.state_dict()


def test_trls_worker_spawns_our_loop_with_picklable_options(monkeypatch, tiny_model_dir):
    monkeypatch.setattr(trl_worker, "is_vllm_available", lambda: True)
    monkeypatch.setattr(trl_worker, "is_aiohttp_available", lambda: True)
    tokenizer = load_tokenizer(tiny_model_dir)
    options, _ = loop_kwargs(tokenizer)
    worker = trl_worker.AsyncRolloutWorker(**options)
    use_fastslow_loop(worker, dynamic_sampling=True, prompt_queue=queue(), queue_dir="/tmp/x")
    assert worker._loop_cls is FastslowRolloutLoop
    restored = pickle.loads(pickle.dumps((worker._loop_cls, worker._loop_kwargs)))  # what spawn sends the child
    assert restored[0] is FastslowRolloutLoop and restored[1]["dynamic_sampling"] is True
    assert restored[1]["prompt_queue"].state_dict() == queue().state_dict()
    worker._process = object()  # started
    with pytest.raises(RuntimeError, match="already running"):
        use_fastslow_loop(worker)


def test_the_queue_must_match_the_dataset(make_loop):
    with pytest.raises(ValueError, match="3 prompts, the training dataset 6"):
        make_loop(prompt_queue=PromptQueue(PROMPTS[:3], None, QueueConfig()))


def test_rewards_get_the_whole_reply_with_its_think_block(make_loop, tiny_model_dir):
    from trl.chat_template_utils import parse_response

    loop = make_loop()
    tok = loop.tokenizer
    prompt = tok.apply_chat_template([{"role": "user", "content": "Compute 1+2."}], add_generation_prompt=True,
                                     return_dict=False)  # fmt: skip
    for reply in ("<think>\n1+2+0=3\n</think>\n\n3", "<think>\n\n</think>\n\n3", "<think>\n1+2"):
        ids = tok(reply + tok.eos_token, add_special_tokens=False)["input_ids"]
        assert parse_response(tok, ids, prefix=prompt) == {"role": "assistant", "content": reply}
    # trl's own loop refuses the fastslow template outright (it parses known templates only).
    options, shared = loop_kwargs(load_tokenizer(tiny_model_dir))
    with pytest.raises(ValueError, match="Unrecognized chat template"):
        trl_worker._AsyncRolloutLoop(**options, **shared)


def test_a_checkpoint_resumes_after_the_last_trained_group_not_the_first_dropped(tmp_path, monkeypatch):
    from train.rl import async_trl
    from train.rl.async_worker import FastslowAsyncGRPOTrainer, record_resume_point

    # trl wrote its point: dataset start 10 + its first never-trained group id, 3, which dynamic sampling dropped.
    (tmp_path / "rollout_state.json").write_text(json.dumps({"prompt_index": 13, "model_version": 5}))
    assert record_resume_point(tmp_path, 10, {0, 1, 2, 4, 5}) == 16
    assert json.loads((tmp_path / "rollout_state.json").read_text()) == {"prompt_index": 16, "model_version": 5}
    assert record_resume_point(tmp_path / "none", 10, {0}) is None and record_resume_point(tmp_path, 10, set()) is None
    assert "_save_checkpoint" in FastslowAsyncGRPOTrainer.__dict__
    # The recipe's builder uses this subclass unless told otherwise.
    built = []

    class Recorder:
        def __init__(self, **kwargs):
            built.append(kwargs)
            self.rollout_worker = SimpleNamespace(_process=None, _loop_kwargs={})

    monkeypatch.setattr(async_trl, "FastslowAsyncGRPOTrainer", Recorder)
    trainer = async_trl.build_async_trainer("m", ["r"], SimpleNamespace(output_dir=str(tmp_path)), ["d"], "tok")
    assert isinstance(trainer, Recorder) and built[0]["model"] == "m"
    assert trainer.rollout_worker._loop_cls is FastslowRolloutLoop
