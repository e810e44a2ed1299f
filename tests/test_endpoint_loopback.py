"""The endpoint backend against a real OpenAI-compatible server on the loopback interface.

The server (written here with ``http.server``, bound to 127.0.0.1) answers ``/v1/chat/completions`` the way a vLLM
server does: it renders the messages with the model's chat template (with the request's ``chat_template_kwargs``),
decodes greedily with the tiny transformers model one request at a time, and reports ``usage.completion_tokens``
and ``finish_reason``. At temperature 0 the endpoint sampler then gives the same replies, and so the same
evaluation metrics, pass rates and fusion labels, as the batched transformers backend on the same model.

A random tiny model (initialised wide, so its greedy replies vary from prompt to prompt) writes arbitrary
characters, so the checker here accepts a reply by its answer's parity of length: a mix of right and wrong replies,
which makes every metric depend on every reply's exact text.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from conftest import load_script, send_json

from train.core.data import write_jsonl
from train.core.loading import load_model_and_tokenizer
from train.core.modes import QWEN3_THINK, ThinkFormat
from train.dual_system.fusion import FusionBuildConfig, build_fusion
from train.eval.evaluation import evaluate
from train.sampling import SamplerConfig, make_sampler, pass_rates
from train.world.arithmetic import make_problems
from train.world.tiny import make_tiny

MAX_NEW_TOKENS = 10


def parity_check(answer, record) -> bool:
    return answer is not None and len(answer.strip()) % 2 == len(record["answer"]) % 2


class _Handler(BaseHTTPRequestHandler):
    model = tokenizer = None
    lock = threading.Lock()
    requests: list[dict] = []

    def log_message(self, *args):  # keep the test output quiet
        pass

    def do_POST(self):
        if self.path != "/v1/chat/completions":
            self.send_error(404)
            return
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.requests.append(body)
        if body.get("temperature", 0) != 0:
            self.send_error(400, "this test server decodes greedily only")
            return
        text, n, finish = self.generate(body["messages"], body["max_tokens"], body.get("chat_template_kwargs") or {})
        reply = {
            "id": f"cmpl-{len(self.requests)}",
            "object": "chat.completion",
            "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
            "usage": {"completion_tokens": n},
        }
        send_json(self, reply)

    @classmethod
    def generate(cls, messages, max_tokens, template_kwargs):
        tok, model = cls.tokenizer, cls.model
        prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **template_kwargs)
        enc = tok(prompt, return_tensors="pt", add_special_tokens=False)
        with cls.lock, torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=max_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)  # fmt: skip
        ids = out[0, enc["input_ids"].shape[1] :].tolist()
        stopped = tok.eos_token_id in ids
        n = ids.index(tok.eos_token_id) + 1 if stopped else len(ids)
        return tok.decode(ids[:n], skip_special_tokens=True), n, "stop" if stopped else "length"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The tiny model, its tokenizer, and the base URL of a loopback server answering with it."""
    folder = make_tiny(tmp_path_factory.mktemp("served"), size="nano", seed=1, think=QWEN3_THINK,
                       initializer_range=0.5)  # fmt: skip
    model, tokenizer = load_model_and_tokenizer(folder)
    model.eval()
    _Handler.model, _Handler.tokenizer = model, tokenizer
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield model, tokenizer, f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def records():
    return make_problems(5, levels=(1, 2), seed=3)


def samplers(served):
    model, tokenizer, url = served
    local = make_sampler(SamplerConfig(backend="transformers", batch_size=8), model=model, tokenizer=tokenizer)
    config = SamplerConfig(backend="endpoint", model="tiny", base_url=url, concurrency=4, timeout=60, max_retries=0)
    remote = make_sampler(config, ThinkFormat.from_tokenizer(tokenizer))
    return local, remote


def test_evaluation_metrics_are_identical(served, records, tmp_path):
    local, remote = samplers(served)
    runs = {}
    for name, sampler in (("transformers", local), ("endpoint", remote)):
        runs[name] = evaluate(None, None, records, check=parity_check, max_new_tokens=MAX_NEW_TOKENS, sampler=sampler,
                              generations_path=tmp_path / f"{name}.jsonl")  # fmt: skip
    rows = {name: (tmp_path / f"{name}.jsonl").read_text().splitlines() for name in runs}
    assert rows["endpoint"] == rows["transformers"]  # every reply's text, tokens and finish reason
    texts = {json.loads(r)["text"] for r in rows["endpoint"]}
    assert len(texts) > 1 and all(texts)  # real, varied replies, not empty ones agreeing
    for run in runs.values():
        run.pop("generations")
        run["sampling"].pop("sampler")
    assert runs["endpoint"] == runs["transformers"]
    correct = {json.loads(r)["correct"] for r in rows["endpoint"]}
    assert correct == {True, False}  # both outcomes occur: the metrics say something


def test_pass_rates_are_identical(served, records):
    local, remote = samplers(served)
    got = {}
    for name, sampler in (("transformers", local), ("endpoint", remote)):
        rates = pass_rates(sampler, records, k=4, check=parity_check, temperature=0.0, max_new_tokens=MAX_NEW_TOKENS)
        got[name] = [(p.rate, [(r.text, r.num_tokens, r.finish_reason) for r in p.replies]) for p in rates]
    assert got["endpoint"] == got["transformers"]
    assert {rate for rate, _ in got["endpoint"]} == {0.0, 1.0}  # both outcomes occur: the rates say something


def test_fusion_labels_are_identical(served, records, tmp_path):
    """Fast replies are sampled with the empty think block prefilled: the endpoint sends chat_template_kwargs."""
    _, tokenizer, _ = served
    local, remote = samplers(served)
    config = FusionBuildConfig(num_samples=1, max_new_tokens=MAX_NEW_TOKENS, chunk_size=3, fast_threshold=0.5)
    for name, sampler in (("transformers", local), ("endpoint", remote)):
        build_fusion(None, tokenizer, records, config, tmp_path / name, check=parity_check, sampler=sampler, seed=0)
    labels = {name: (tmp_path / name / "labels.jsonl").read_text() for name in ("transformers", "endpoint")}
    assert labels["endpoint"] == labels["transformers"]
    rows = [json.loads(line) for line in labels["endpoint"].splitlines()]
    assert len(rows) == len(records) and {r["label"] for r in rows} == {"fast", "slow"}  # labels that differ
    assert (tmp_path / "endpoint" / "fusion.jsonl").read_text() == (
        tmp_path / "transformers" / "fusion.jsonl"
    ).read_text()
    assert any(r.get("chat_template_kwargs") == {"enable_thinking": False} for r in _Handler.requests)


def test_build_fusion_data_script_labels_the_same_through_either_backend(served, records, tmp_path):
    """scripts/build_fusion_data.py with --backend endpoint (the shared sampler flags) against the loopback server."""
    _, tokenizer, url = served
    folder = tmp_path / "model"
    _Handler.model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    write_jsonl(tmp_path / "prompts.jsonl", records)
    main = load_script("scripts/build_fusion_data.py").main
    common = ["--model", str(folder), "--data", str(tmp_path / "prompts.jsonl"), "--num_samples", "1",
              "--max_new_tokens", str(MAX_NEW_TOKENS), "--check", "exact", "--seed", "0"]  # fmt: skip
    main([*common, "--out", str(tmp_path / "local"), "--backend", "transformers", "--device", "cpu"])
    main(
        [*common, "--out", str(tmp_path / "remote"), "--backend", "endpoint", "--base-url", url, "--max_retries", "0"]
    )
    for name in ("labels.jsonl", "fusion.jsonl"):
        assert (tmp_path / "remote" / name).read_text() == (tmp_path / "local" / name).read_text()
