"""Bounded-staleness rollouts (train/rl/ssp.py, train/rl/actor.py, FastslowGRPOTrainer's rollout_mode="ssp"):
log-prob and loss parity at s=0, staleness never above s, exact importance truncation, untorn weight publication,
and a supervised actor child that fails loudly and leaves nothing behind."""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import queue
import random
import threading
import time
import zlib
from functools import partial
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from ssp_crash import make_crashing
from trl import GRPOTrainer

from train.core.configs import GRPOConfig
from train.core.loading import load_model, load_tokenizer
from train.rl.actor import ActorSettings, ProcessActor, ProcessSpec, actor_loop, pid_alive
from train.rl.ssp import (
    ActorError,
    FileWeightStore,
    Group,
    StalenessQueue,
    WeightStore,
    admission_budget,
    admitted,
    truncated_importance_weights,
)
from train.rl.trainer import FastslowGRPOTrainer

G = 2
LOCAL_BATCH = 8  # 4 groups a step


# ------------------------------------------------------------------------------------------- importance truncation


def test_importance_truncation_exact_on_toy_logits():
    learner_logits = torch.tensor([[[2.0, 0.0, -1.0], [0.5, 0.5, 0.0], [1.0, 3.0, 0.0]]])
    actor_logits = torch.tensor([[[0.0, 0.0, 0.0], [0.5, 0.5, 0.0], [3.0, 1.0, 0.0]]])
    tokens = torch.tensor([[0, 1, 1]])
    pick = lambda logits: logits.log_softmax(-1).gather(-1, tokens[..., None]).squeeze(-1)  # noqa: E731
    learner, actor = pick(learner_logits), pick(actor_logits)
    mask = torch.tensor([[1, 1, 0]])
    weights = truncated_importance_weights(learner, actor, mask, cap=2.0)
    p_l0 = math.exp(2) / (math.exp(2) + 1 + math.exp(-1))  # learner: token 0 at step 0
    ratio0 = p_l0 / (1 / 3)  # 2.63...: above the cap
    assert ratio0 > 2.0
    assert weights[0, 0].item() == 2.0  # truncated to C exactly
    assert weights[0, 1].item() == pytest.approx(1.0, abs=1e-7)  # same distribution: ratio 1
    assert weights[0, 2].item() == 1.0  # masked (padding): weight 1, whatever the ratio
    # Below the cap the weight is the ratio itself.
    low, high = torch.tensor([[math.log(0.3)]]), torch.tensor([[math.log(0.6)]])
    w = truncated_importance_weights(low, high, mask[:, :1], 2.0)
    assert w.item() == pytest.approx(0.5, rel=1e-6)
    nan = truncated_importance_weights(torch.tensor([[0.1]]), torch.tensor([[math.nan]]), mask[:, :1], 2.0)
    assert nan.item() == 1.0  # a missing sampling log-prob: no correction (trl's rule)
    with pytest.raises(ValueError):
        truncated_importance_weights(learner, actor, mask, cap=0.0)


# ------------------------------------------------------------------------------------------------ staleness bound


def test_admission_is_the_simulators():
    # s = 0: B groups of version v only once the learner has collected v steps; nothing more until it publishes.
    assert admitted(0, 0, 0, 0, 4) and admitted(3, 0, 0, 0, 4) and not admitted(4, 0, 0, 0, 4)
    assert not admitted(0, 0, 1, 0, 4)  # learner trains step 0 on version 0: wait for version 1
    assert admitted(0, 1, 1, 0, 4)
    # s = 2: three steps' worth ahead of version 0.
    assert admitted(11, 0, 0, 2, 4) and not admitted(12, 0, 0, 2, 4)
    # While the learner collects step c, what it has taken counts against the step (no second batch of version c).
    assert admission_budget(0, 0, 0, 0, 4, taken_current=4) == 0
    # A step that needs more than B groups (resample rounds) admits what the learner waits for: no deadlock at s=0.
    assert admission_budget(0, 0, 0, 0, 4, taken_current=4, wanted=3) == 3
    assert admission_budget(2, 0, 0, 0, 4, taken_current=4, wanted=3) == 1
    assert admission_budget(0, 0, 2, 2, 4) == 4 and admission_budget(0, 0, 3, 2, 4, wanted=9) == 0  # too old


@pytest.mark.parametrize("s", [0, 1, 2])
def test_fast_actor_slow_learner_never_trains_staler_than_s(s):
    B, steps = 4, 12
    store, stop = WeightStore(), threading.Event()
    sq = StalenessQueue(s, B)
    store.publish({"w": torch.zeros(1)}, 0)

    def instant(positions, version, call):  # a fast actor: groups cost nothing
        return [Group(p, [1], [[2]], [[-0.5]], version, call=call) for p in positions]

    instant.load = lambda state: None
    draw = partial(lambda n: list(range(n)))
    settings = ActorSettings(s, B, groups_per_call=3)
    actor = threading.Thread(target=actor_loop, args=(instant, store, sq.counters, sq.put, draw, settings, stop))
    actor.start()
    rng = random.Random(s)
    seen = []
    try:
        for step in range(steps):
            taken = sq.take(B, step, timeout=10)
            extra = sq.take(rng.choice([0, 0, 3]), step, timeout=10)  # resample rounds: more than B a step
            seen += [step - g.version for g in taken + extra]
            sq.step_collected()
            time.sleep(0.01)  # a slow learner
            store.publish({"w": torch.full((1,), float(step + 1))}, step + 1)
    finally:
        stop.set()
        actor.join(5)
    assert max(seen) <= s and min(seen) >= 0
    assert max(sq.stats.staleness) <= s
    if s == 0:
        assert set(seen) == {0}
    else:
        assert max(seen) == s  # the actor does run ahead, up to the bound


# -------------------------------------------------------------------------------------------------- publication


def test_in_process_publication_is_never_torn():
    store, stop, errors = WeightStore(), threading.Event(), []
    store.publish({f"t{i}": torch.zeros(64) for i in range(8)}, 0)

    def reader():
        while not stop.is_set():
            version, state = store.latest()
            if not all(bool((t == version).all()) for t in state.values()):
                errors.append(version)

    readers = [threading.Thread(target=reader) for _ in range(3)]
    for r in readers:
        r.start()
    live = {f"t{i}": torch.zeros(64) for i in range(8)}
    for v in range(1, 300):
        for t in live.values():  # the learner's tensors change in place, one by one
            t.fill_(v)
        store.publish(live, v)
    stop.set()
    for r in readers:
        r.join()
    assert errors == [] and store.version() == 299
    with pytest.raises(ValueError):
        store.publish(live, 5)  # versions only go up


def _read_file_store(path: str, until: int, results, ready) -> None:
    store, seen, torn = FileWeightStore(path), set(), 0
    ready.set()
    while True:
        try:
            version, state = store.latest()
        except LookupError:
            continue
        seen.add(version)
        torn += sum(not bool((t == version).all()) for t in state.values())
        if version >= until:
            break
    results.put((len(seen), torn))


def test_file_publication_is_never_torn_with_threads(tmp_path):
    path, last = str(tmp_path / "weights.pt"), 80
    store = FileWeightStore(path)
    store.publish({"a": torch.zeros(20000), "b": torch.zeros(20000)}, 0)
    results, ready = queue.Queue(), [threading.Event() for _ in range(2)]
    readers = [threading.Thread(target=_read_file_store, args=(path, last, results, e)) for e in ready]
    for r in readers:
        r.start()
    for v in range(1, last + 1):
        store.publish({"a": torch.full((20000,), float(v)), "b": torch.full((20000,), float(v))}, v)
        time.sleep(0.002)
    outcomes = [results.get(timeout=60) for _ in readers]
    for r in readers:
        r.join(10)
    assert all(torn == 0 for _, torn in outcomes) and all(n >= 2 for n, _ in outcomes)
    assert not list(tmp_path.glob(".weights.pt.tmp-*"))


@pytest.mark.slow
def test_file_publication_is_never_torn_across_processes(tmp_path):
    path, last = str(tmp_path / "weights.pt"), 60
    store = FileWeightStore(path)
    store.publish({"a": torch.zeros(20000), "b": torch.zeros(20000)}, 0)
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    ready = [ctx.Event() for _ in range(2)]
    readers = [ctx.Process(target=_read_file_store, args=(path, last, results, e)) for e in ready]
    for r in readers:
        r.start()
    for e in ready:
        assert e.wait(120)
    for v in range(1, last + 1):
        store.publish({"a": torch.full((20000,), float(v)), "b": torch.full((20000,), float(v))}, v)
        time.sleep(0.01)  # let the readers race several versions
    outcomes = [results.get(timeout=120) for _ in readers]
    for r in readers:
        r.join(30)
    assert all(torn == 0 for _, torn in outcomes)
    assert all(n >= 2 for n, _ in outcomes)  # the readers did race the writer (saw several versions)
    assert store.version() == last
    assert not list(tmp_path.glob(".weights.pt.tmp-*"))  # no temporary file left behind


# ------------------------------------------------------------------------------------------------ supervision


SLOW = pytest.mark.slow  # each spawns a child that imports torch (~20 s on the shared machine)


@pytest.mark.parametrize("how", ["raise", pytest.param("exit", marks=SLOW), pytest.param("hang", marks=SLOW)])
def test_actor_crash_raises_within_heartbeat_timeout_and_leaves_no_process(tmp_path, how):
    store = FileWeightStore(tmp_path / "weights.pt")
    store.publish({"w": torch.zeros(1)}, 0)
    # s = 0, two groups a call: the child generates step 0's groups, then fails on its next call (after version 1).
    spec = ProcessSpec(partial(make_crashing, 1, how), str(store.path), 10, 0, ActorSettings(0, 2, 2), heartbeat_s=0.1)
    timeout = 3.0
    actor = ProcessActor(spec, heartbeat_timeout=timeout, join_timeout=2.0)
    sq = StalenessQueue(0, 2, actor.counters, actor.groups, health=actor.check_health)
    actor.start()
    pid = actor.pid
    try:
        first = sq.take(2, 0, timeout=60)  # the child works before it fails
        assert [g.version for g in first] == [0, 0]
        sq.step_collected()
        store.publish({"w": torch.ones(1)}, 1)
        start = time.monotonic()
        with pytest.raises(ActorError) as err:
            sq.take(2, 1, timeout=60)
        elapsed = time.monotonic() - start
    finally:
        actor.stop()
    assert elapsed < timeout + 2.0  # surfaced within the heartbeat timeout (plus a poll)
    text = str(err.value)
    assert f"pid {pid}" in text
    assert {"raise": "actor boom", "exit": "exited with code 7", "hang": "no heartbeat"}[how] in text
    assert not pid_alive(pid)  # reaped: no /proc entry, not even a zombie
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


# ------------------------------------------------------------------------------------------ trainer integration


def live_reward(prompts, completions, **_):
    text = lambda c: c[0]["content"] if isinstance(c, list) else c  # noqa: E731
    return [zlib.crc32(text(c).encode()) / 2**32 for c in completions]


def dataset(n: int = 12) -> Dataset:
    return Dataset.from_list([{"prompt": [{"role": "user", "content": f"add {i} {i + 1}"}]} for i in range(n)])


class Recording(FastslowGRPOTrainer):
    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        if self.model.training:
            self.batches = [*getattr(self, "batches", []), dict(out)]
            self.actor_pid = getattr(self._actor, "pid", None)
        return out

    def _get_per_token_logps_and_entropies(self, *args, **kwargs):
        self.forwards = getattr(self, "forwards", 0) + 1
        return super()._get_per_token_logps_and_entropies(*args, **kwargs)


def grpo_args(out, **kw) -> GRPOConfig:
    base = dict(
        output_dir=str(out),
        max_steps=2,
        per_device_train_batch_size=LOCAL_BATCH,
        num_generations=G,
        max_completion_length=8,
        temperature=1.0,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=0,
        use_cpu=True,
        dataloader_num_workers=0,
        loss_type="dapo",
    )
    return GRPOConfig(**{**base, **kw})


def make(model_dir, out, cls=Recording, **kwargs):
    return cls(
        model=load_model(model_dir),
        reward_funcs=[live_reward],
        args=grpo_args(out),
        train_dataset=dataset(),
        processing_class=load_tokenizer(model_dir),
        **kwargs,
    )


def test_s0_actor_logprobs_match_learner_and_loss_equals_grpo(tiny_model_dir, tmp_path):
    trainer = make(tiny_model_dir, tmp_path / "ssp", rollout_mode="ssp", max_staleness=0)
    trainer.args.max_steps = 1
    trainer.train()
    [batch] = trainer.batches
    last = trainer._ssp_last  # the loss's micro-batch (trl shuffles the rows after collection)
    mask = last["mask"].bool()
    # The step's learner weights are version 0, the weights the actor sampled with: same log-probs (fp32).
    assert (last["learner_logps"][mask] - last["actor_logps"][mask]).abs().max().item() < 1e-5
    assert (last["weights"][mask] - 1).abs().max().item() < 1e-5
    assert trainer._ssp_queue.stats.staleness == {0: LOCAL_BATCH // G}
    assert trainer.forwards == 1  # the loss's own forward gives the weights: no extra no-grad pass
    # The collected batch (advantages unweighted) through trl's GRPOTrainer gives the ssp trainer's loss, whose
    # forward pass computes the weights (1 at s=0) and applies them.
    assert batch["advantages"].dim() == 1
    plain = make(tiny_model_dir, tmp_path / "plain", cls=GRPOTrainer)
    fresh = make(tiny_model_dir, tmp_path / "fresh", rollout_mode="ssp", max_staleness=0)
    raw = dict(batch)
    for t in (plain, fresh):
        t.model.train()
        t.current_gradient_accumulation_steps = 1  # set by Trainer.train; one micro-batch here
    with torch.no_grad():
        expected = plain.compute_loss(plain.model, dict(raw), num_items_in_batch=batch["num_items_in_batch"])
        got = fresh.compute_loss(fresh.model, dict(batch), num_items_in_batch=batch["num_items_in_batch"])
    assert got.item() == pytest.approx(expected.item(), rel=1e-4, abs=1e-6)
    assert abs(expected.item()) > 1e-4  # a batch with a learning signal
    # A staler actor: its log-probs log(1.5) and log(4) below the learner's give weights 1.5 and 2 (the cap), and
    # dapo's loss is linear in the advantages.
    with torch.no_grad():
        for shift, weight in ((math.log(1.5), 1.5), (math.log(4.0), 2.0)):
            stale = dict(batch, sampling_per_token_logps=batch["sampling_per_token_logps"] - shift)
            got = fresh.compute_loss(fresh.model, stale, num_items_in_batch=batch["num_items_in_batch"])
            assert got.item() == pytest.approx(weight * expected.item(), rel=1e-4, abs=1e-6)
    assert trainer._actor is None  # stopped at the end of training


def test_two_passes_over_a_batch_weight_it_from_trls_old_logps_and_never_twice(tiny_model_dir, tmp_path):
    seen = []

    class Watching(Recording):
        def _ssp_weight(self, inputs, current):
            seen.append((inputs["advantages"].dim(), "old_per_token_logps" in inputs))
            super()._ssp_weight(inputs, current)

    trainer = Watching(
        model=load_model(tiny_model_dir),
        reward_funcs=[live_reward],
        args=grpo_args(tmp_path, num_iterations=2),  # trl reuses its buffered batch for a second optimizer step
        train_dataset=dataset(),
        processing_class=load_tokenizer(tiny_model_dir),
        rollout_mode="ssp",
        max_staleness=1,
    )
    trainer.train()
    # One generation, two steps on it: trl computed the collection-time log-probs (the weights' reference), and the
    # second step got the advantages unweighted again (a weighted (B, T) tensor there would be weighted twice).
    assert len(trainer.batches) == 1 and seen == [(1, True), (1, True)]


def test_ssp_training_runs_stale_within_s_and_logs(tiny_model_dir, tmp_path):
    trainer = make(tiny_model_dir, tmp_path, rollout_mode="ssp", max_staleness=2, dynamic_sampling=True)
    trainer.args.max_steps = 4
    trainer.train()
    lags = trainer._ssp_queue.stats.staleness
    assert max(lags) <= 2 and sum(lags.values()) >= 4 * LOCAL_BATCH // G
    logged = [e["ssp/staleness_max"] for e in trainer.state.log_history if "ssp/staleness_max" in e]
    assert len(logged) == 4 and max(logged) <= 2
    # The loss weighted the last batch's advantages per token, from its own forward pass.
    assert trainer._ssp_last["weights"].shape == trainer.batches[-1]["completion_ids"].shape
    assert [e for e in trainer.state.log_history if "ssp/is_weight_mean" in e]


def test_rollout_mode_is_checked(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="rollout_mode"):
        make(tiny_model_dir, tmp_path, rollout_mode="async")
    with pytest.raises(ValueError, match="max_staleness"):
        make(tiny_model_dir, tmp_path, rollout_mode="ssp", max_staleness=-1)


# ------------------------------------------------------------------------------- GPU: trl's AsyncGRPOTrainer mapping


class FakeConfig:
    """Stands in for trl's AsyncGRPOConfig (whose real use needs CUDA and vLLM): records its arguments."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs


def test_async_grpo_config_maps_our_keys(script, tmp_path):
    from train.core.cli import parse_args
    from train.rl.async_trl import async_grpo_config, build_async_trainer

    recipe = script("recipes/grpo.py")
    config = "recipes/configs/embedded-7b/grpo_async.yaml"
    script_args, training_args, model_args = parse_args(recipe.ARG_CLASSES, ["--config", config])
    assert script_args.rollout_mode == "ssp" and training_args.use_vllm
    fake = async_grpo_config(script_args, training_args, config_cls=FakeConfig)
    kw = fake.kwargs
    assert kw["max_staleness"] == 2 and kw["heartbeat_stale_after_s"] == 300 and kw["weight_sync_steps"] == 1
    assert kw["vllm_server_base_url"] == "http://127.0.0.1:8000" and kw["vllm_server_timeout"] == 600
    assert kw["num_generations"] == 16 and kw["max_completion_length"] == 8192 and kw["epsilon_high"] == 0.28
    assert kw["learning_rate"] == 1e-6 and kw["output_dir"] == "outputs/embedded-7b/grpo-async"
    # Every key is a field of trl's AsyncGRPOConfig.
    import dataclasses

    from trl.experimental.async_grpo import AsyncGRPOConfig

    assert set(kw) <= {f.name for f in dataclasses.fields(AsyncGRPOConfig)}
    # The trainer gets the model by path, our config, rewards, data and tokenizer, and its rollout worker our loop.
    seen = {}

    class FakeWorker:
        _process = None
        _loop_kwargs = {"dataset": "d"}

    class FakeTrainer:
        def __init__(self, **kwargs):
            seen.update(kwargs)
            self.rollout_worker, self.callbacks = FakeWorker(), []

        def add_callback(self, callback):
            self.callbacks.append(callback)

    fake.output_dir = str(tmp_path)
    trainer = build_async_trainer(
        model_args.model_name_or_path,
        ["r"],
        fake,
        ["d"],
        "tok",
        ["cb"],
        trainer_cls=FakeTrainer,
        dynamic_sampling=True,
    )
    assert seen == {
        "model": "outputs/embedded-7b/distill/iteration_2/model",
        "reward_funcs": ["r"],
        "args": fake,
        "train_dataset": ["d"],
        "processing_class": "tok",
        "callbacks": ["cb"],
    }
    from train.rl.async_worker import FastslowRolloutLoop

    worker = trainer.rollout_worker
    assert worker._loop_cls is FastslowRolloutLoop and worker._loop_kwargs["dynamic_sampling"] is True
    assert worker._loop_kwargs["prompt_queue"] is None and not trainer.callbacks  # no queue: no queue state to save
    script_args.dynamic_sampling = True  # mapped: it is the loop's, not AsyncGRPOConfig's
    assert async_grpo_config(script_args, training_args, config_cls=FakeConfig).kwargs == kw


@pytest.mark.slow
def test_process_actor_trains_and_leaves_no_process(tiny_model_dir, tmp_path):
    trainer = make(tiny_model_dir, tmp_path, rollout_mode="ssp", max_staleness=1, actor="process")
    trainer.args.max_steps = 3
    trainer.train()
    lags = trainer._ssp_queue.stats.staleness
    assert max(lags) <= 1 and sum(lags.values()) == 3 * LOCAL_BATCH // G
    assert (tmp_path / "ssp" / "weights.pt.version").read_text() == "3"  # published after every step
    assert trainer.actor_pid is not None and not pid_alive(trainer.actor_pid)  # reaped: not even a zombie
    pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    children = [p for p in pids if _parent(p) == os.getpid() and "resource_tracker" not in _cmdline(p)]
    assert children == []  # no other child either (multiprocessing's resource tracker is not ours)


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
