"""The one sampler: the reply type, batched transformers sampling, pass rates, the endpoint client, make_sampler."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from conftest import send_json

from train.core.loading import load_model, load_tokenizer
from train.core.modes import PANGU_THINK, QWEN3_THINK
from train.sampling import (
    PassRate,
    Reply,
    SamplerConfig,
    SamplingParams,
    add_sampler_arguments,
    make_sampler,
    pass_rates,
    sampler_config_from_args,
)
from train.sampling.endpoint import EndpointClient, EndpointSampler, RateLimiter
from train.sampling.self_repair import RepairingSampler
from train.sampling.transformers import TransformersSampler

PROMPTS = ["Compute 7+5.", "hi", "Compute 123+456. Show every step of the sum.", "Compute 9*9.", "ok then"]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    return load_model(tiny_model_dir, tokenizer=tok), tok


def test_reply_truncated_follows_the_finish_reason():
    assert Reply("a", 1).truncated is False
    assert Reply("a", 1, "length").truncated is True
    assert Reply("a", 1, "stop", token_ids=(5,)).as_sample() == {"text": "a", "num_tokens": 1, "truncated": False}


def test_sampling_params_are_checked():
    assert SamplingParams().greedy and not SamplingParams(temperature=0.7).greedy
    with pytest.raises(ValueError):
        SamplingParams(n=0)
    with pytest.raises(ValueError):
        SamplingParams(top_p=0.0)


# ----------------------------------------------------------------------------------------------- transformers


def test_length_sorted_batches_come_back_in_order_and_equal_unbatched_greedy(tiny):
    model, tok = tiny
    params = SamplingParams(n=2, max_new_tokens=12)
    batched = TransformersSampler(model, tok, batch_size=2).sample(PROMPTS, params)
    alone = [TransformersSampler(model, tok, batch_size=1).sample([p], params)[0] for p in PROMPTS]
    assert [[r.text for r in rs] for rs in batched] == [[r.text for r in rs] for rs in alone]
    assert [[r.token_ids for r in rs] for rs in batched] == [[r.token_ids for r in rs] for rs in alone]
    for rs in batched:  # greedy n > 1 repeats one reply
        assert len(rs) == 2 and rs[0] == rs[1]
        r = rs[0]
        assert r.num_tokens == len(r.token_ids) <= 12 and r.truncated == (tok.eos_token_id not in r.token_ids)
        assert r.text == tok.decode(list(r.token_ids), skip_special_tokens=True) and r.logprobs is None
    # Another batch size (3: a batch of unequal lengths, then a smaller last batch) gives the same replies.
    by_three = TransformersSampler(model, tok, batch_size=3).sample(PROMPTS, params)
    assert [[r.text for r in rs] for rs in by_three] == [[r.text for r in rs] for rs in batched]


def test_seeded_sampling_is_reproducible_and_logprobs_are_those_of_the_sampled_tokens(tiny):
    model, tok = tiny
    sampler = TransformersSampler(model, tok, batch_size=2, logprobs=True)
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=10, seed=123)
    first, second = sampler.sample(PROMPTS, params), sampler.sample(PROMPTS, params)
    assert first == second
    other = sampler.sample(PROMPTS, SamplingParams(n=3, temperature=1.0, max_new_tokens=10, seed=124))
    assert other != first
    texts = {r.text for rs in first for r in rs}
    assert len(texts) > len(PROMPTS)  # sampled, not repeated
    for r in (r for rs in first for r in rs):
        assert len(r.logprobs) == r.num_tokens and all(lp <= 0.0 for lp in r.logprobs)
    assert sampler.think == QWEN3_THINK


def test_greedy_logprobs_are_the_models_top_choice(tiny):
    import torch

    model, tok = tiny
    sampler = TransformersSampler(model, tok, logprobs=True)
    (reply,) = sampler.sample(["Compute 7+5."], SamplingParams(max_new_tokens=3))[0]
    prompt = tok.apply_chat_template([{"role": "user", "content": "Compute 7+5."}], tokenize=False,
                                     add_generation_prompt=True)  # fmt: skip
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(ids).logits[0, -1].float().log_softmax(-1)
    assert reply.token_ids[0] == int(logits.argmax())
    assert reply.logprobs[0] == pytest.approx(float(logits.max()), abs=1e-4)


# --------------------------------------------------------------------------------------------------- pass rates


class FixedSampler:
    """A fake sampler: prompt -> its fixed replies (the first n)."""

    think = PANGU_THINK

    def __init__(self, replies: dict[str, list[str]]):
        self.replies, self.calls = replies, []

    def sample(self, prompts, params, mode=None):
        self.calls.append((list(prompts), params, mode))
        return [[Reply(t, len(t)) for t in self.replies[p][: params.n]] for p in prompts]


def test_pass_rates_on_fixed_replies_are_exact():
    right, wrong = "[unused16]\nsteps\n[unused17]\n\n12", "[unused16]\nsteps\n[unused17]\n\n13"
    sampler = FixedSampler({"a": [right, wrong, right, right], "b": [wrong] * 4, "c": ["<think>\n</think>\n\n12"] * 4})
    records = [{"prompt": p, "answer": "12"} for p in ("a", "b", "c")]
    rates = pass_rates(sampler, records, 4, lambda answer, record: answer == record["answer"], mode="slow", seed=3)
    assert [p.rate for p in rates] == [0.75, 0.0, 0.0]  # c's answer is not read with another model's tags
    assert [p.complexity for p in rates] == [0.25, 1.0, 1.0]
    assert rates[0].correct == [True, False, True, True] and isinstance(rates[0], PassRate)
    _, params, mode = sampler.calls[0]
    assert (params.n, params.temperature, params.seed, mode) == (4, 1.0, 3, "slow")
    pass_rates(sampler, records, 1, lambda a, r: True)
    assert sampler.calls[1][1].temperature == 0.0  # one reply: greedy


def test_pass_rates_sample_a_loaded_model_and_take_only_a_sampler(tiny):
    model, tok = tiny
    rates = pass_rates(TransformersSampler(model, tok), [{"prompt": "hi", "answer": "x"}], 2, max_new_tokens=2)
    assert len(rates) == 1 and len(rates[0].replies) == 2 and rates[0].rate == 0.0
    assert not hasattr(rates[0], "generations")  # one name for the replies
    with pytest.raises(TypeError, match="Sampler"):
        pass_rates(model, tok, [{"prompt": "hi", "answer": "x"}])  # the old (model, tokenizer, records) form


# ----------------------------------------------------------------------------------------------- the endpoint


class ChatServer:
    """A chat-completions server on 127.0.0.1; ``behaviour(request_json, attempt) -> (status, body)``."""

    def __init__(self, behaviour: Callable[[dict, int], tuple[int, object]]):
        self.behaviour, self.requests, self.lock = behaviour, [], threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests.append(body)
                    attempt = len(outer.requests)
                status, payload = outer.behaviour(body, attempt)
                send_json(self, payload, status)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True

    def config(self, **kw) -> SamplerConfig:
        port = self.server.server_address[1]
        params = dict(backend="endpoint", model="m", base_url=f"http://127.0.0.1:{port}/v1", backoff=0.01, timeout=5)
        return SamplerConfig(**{**params, **kw})

    def __enter__(self) -> ChatServer:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def completion(content: str, reasoning: str | None = None, finish: str = "stop", tokens: int = 5) -> dict:
    message = {"role": "assistant", "content": content}
    if reasoning is not None:
        message["reasoning_content"] = reasoning
    return {"choices": [{"message": message, "finish_reason": finish}], "usage": {"completion_tokens": tokens}}


def test_endpoint_retries_a_503_then_succeeds_and_puts_reasoning_back_in_the_runs_format():
    def flaky(body, attempt):
        return (503, {"error": "busy"}) if attempt == 1 else (200, completion("12", "7+5=12", "length", 9))

    with ChatServer(flaky) as server:
        client = EndpointClient(server.config(max_retries=2), PANGU_THINK)
        reply = client.chat([{"role": "user", "content": "Compute 7+5."}], temperature=0.5, max_tokens=9, seed=1)
    assert len(server.requests) == 2
    assert reply == Reply("[unused16]\n7+5=12\n[unused17]\n\n12", 9, "length")
    assert PANGU_THINK.parse(reply.text).answer == "12" and reply.truncated
    body = server.requests[-1]
    assert (body["model"], body["temperature"], body["max_tokens"], body["seed"]) == ("m", 0.5, 9, 1)


def test_endpoint_does_not_retry_a_client_error():
    with ChatServer(lambda body, attempt: (400, {"error": "bad request"})) as server:
        client = EndpointClient(server.config(max_retries=3), PANGU_THINK)
        assert client.chat([{"role": "user", "content": "x"}]) is None
    assert len(server.requests) == 1


def test_endpoint_sampler_tags_prompts_and_keeps_order():
    def echo(body, attempt):
        return 200, completion(body["messages"][-1]["content"] + f" #{body.get('seed')}")

    with ChatServer(echo) as server:
        sampler = make_sampler(server.config(concurrency=4), think=QWEN3_THINK)
        assert isinstance(sampler, EndpointSampler)
        out = sampler.sample(["a", "b", "c"], SamplingParams(n=2, temperature=1.0, seed=10), mode="fast")
        greedy = sampler.sample(["a"], SamplingParams(n=3))
    assert [[r.text for r in rs] for rs in out] == [
        ["a /no_think #10", "a /no_think #11"],
        ["b /no_think #12", "b /no_think #13"],
        ["c /no_think #14", "c /no_think #15"],
    ]
    assert len(server.requests) == 6 + 1 and len(greedy[0]) == 3  # greedy: one request, its reply repeated


def test_rate_limiter_spaces_request_starts():
    limiter = RateLimiter(50.0)
    start = time.monotonic()
    for _ in range(6):
        limiter.wait()
    assert time.monotonic() - start >= 5 / 50 - 1e-3


# --------------------------------------------------------------------------------------------------- make_sampler


def test_make_sampler_picks_the_backend_by_config(tiny, tiny_model_dir):
    model, tok = tiny
    assert type(make_sampler(SamplerConfig(), model=model, tokenizer=tok)) is TransformersSampler
    assert isinstance(make_sampler(SamplerConfig(self_repair=True), model=model, tokenizer=tok), RepairingSampler)
    loaded = make_sampler(SamplerConfig(model=str(tiny_model_dir), batch_size=3))
    assert type(loaded) is TransformersSampler and loaded.batch_size == 3 and loaded.think == QWEN3_THINK
    endpoint = make_sampler(SamplerConfig(backend="endpoint", model="m"), think=PANGU_THINK)
    assert isinstance(endpoint, EndpointSampler) and endpoint.think == PANGU_THINK
    with pytest.raises(ValueError, match="think"):
        make_sampler(SamplerConfig(backend="endpoint", model="m"))  # an endpoint's format is never guessed
    with pytest.raises(ValueError, match="backend"):
        SamplerConfig(backend="tgi")
    with pytest.raises(ValueError, match="self_repair"):
        SamplerConfig(backend="vllm", self_repair=True)
    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(ImportError, match="fastslow\\[vllm\\]"):
            make_sampler(SamplerConfig(backend="vllm", model=str(tiny_model_dir)), think=QWEN3_THINK)


# --------------------------------------------------------------------------------------------- shared flags


def test_scripts_share_the_sampler_config_flags():
    """add_sampler_arguments: one flag per SamplerConfig field, both spellings, its help and checks."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--model")
    add_sampler_arguments(parser, skip=("model",), defaults={"batch_size": 8})
    args = parser.parse_args(["--model", "m", "--backend", "endpoint", "--base-url", "http://127.0.0.1:9/v1",
                              "--gpu_memory_utilization", "0.6", "--trust-remote-code", "--max_model_len", "none",
                              "--requests-per-second", "2.5", "--self_repair", "false"])  # fmt: skip
    config = sampler_config_from_args(args, concurrency=3)
    assert config == SamplerConfig(backend="endpoint", model="m", base_url="http://127.0.0.1:9/v1", batch_size=8,
                                   gpu_memory_utilization=0.6, trust_remote_code=True, requests_per_second=2.5,
                                   concurrency=3)  # fmt: skip
    flags = {a.dest for a in parser._actions} - {"help", "model"}
    assert flags == {f.name for f in dataclasses.fields(SamplerConfig)} - {"model"}
    assert "share of GPU memory" in parser.format_help()  # the dataclass's help
    with pytest.raises(SystemExit):
        parser.parse_args(["--backend", "grpc"])
    with pytest.raises(ValueError, match="not SamplerConfig fields"):
        add_sampler_arguments(argparse.ArgumentParser(), skip=("temperature",))
    cpu = sampler_config_from_args(parser.parse_args(["--backend", "auto"]))
    assert cpu.backend == ("vllm" if importlib.util.find_spec("vllm") and torch.cuda.is_available()
                           else "transformers")  # fmt: skip
