"""Teacher generation: backends, resumable JSONL output without duplicates, the endpoint teacher."""

from __future__ import annotations

import importlib.util
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import load_script, send_json

from train.core.data import DataError, validate_record, write_jsonl
from train.core.modes import PANGU_THINK, QWEN3_THINK
from train.distill.teacher import (
    ArithmeticBackend,
    SamplerBackend,
    TeacherConfig,
    finished_ids,
    generate_teacher,
    make_backend,
    read_teacher_file,
    teacher_think,
)
from train.sampling.endpoint import EndpointSampler
from train.world.arithmetic import make_problems


def records(n: int = 10) -> list[dict]:
    return [validate_record(p) for p in make_problems(n, levels=(1, 2, 3), seed=3)]


def test_arithmetic_backend_samples_and_counts_tokens():
    backend = ArithmeticBackend(verbosity=0.5, error_rate=0.5, seed=0, think=QWEN3_THINK)
    out = backend.generate(records(20), k=3)
    assert [len(s) for s in out] == [3] * 20
    assert all(s.num_tokens == len(s.text) for ss in out for s in ss)  # one token per character by default
    answers = {s.text.rsplit("\n", 1)[-1] for ss in out for s in ss}
    assert len(answers) > 20  # with error_rate 0.5, some replies disagree
    with pytest.raises(DataError, match="not an arithmetic problem"):
        backend.generate([{"id": "x", "prompt": "Hello there"}], 1)


class FailAfter:
    """Wraps a backend and raises on its ``n``-th call: an interrupted run."""

    name = "arithmetic"

    def __init__(self, backend, n: int):
        self.backend, self.n, self.calls = backend, n, 0

    def __getattr__(self, name):  # run_config, state, restore: the wrapped backend's
        return getattr(self.backend, name)

    def generate(self, recs, k):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt
        return self.backend.generate(recs, k)


def test_generation_resumes_without_duplicates(tmp_path):
    recs = records(10)
    out = tmp_path / "teacher.jsonl"
    with pytest.raises(KeyboardInterrupt):
        generate_teacher(
            recs, FailAfter(ArithmeticBackend(seed=0, think=QWEN3_THINK), 3), out, k=2, chunk_size=3, progress=False
        )
    first = out.read_text().splitlines()
    assert len(first) == 6  # two finished chunks of three prompts survive
    with out.open("a") as f:
        f.write('{"id": "torn", "sampl')  # a kill in the middle of a write
    report = generate_teacher(  # the resume continues under the recorded configuration (seed 0)
        recs, ArithmeticBackend(seed=0, think=QWEN3_THINK), out, k=2, chunk_size=3, progress=False
    )
    assert (report.skipped, report.generated, report.samples) == (6, 4, 8)
    lines = out.read_text().splitlines()
    assert lines[:6] == first  # finished prompts are not redone
    ids = [json.loads(line)["id"] for line in lines]
    assert sorted(ids) == sorted(r["id"] for r in recs) and len(ids) == len(set(ids))
    rows = read_teacher_file(out)
    assert all(len(r["samples"]) == 2 and r["teacher"] == "arithmetic" for r in rows)
    assert report.tokens == sum(s["num_tokens"] for r in rows[6:] for s in r["samples"])
    assert all(set(s) == {"text", "num_tokens", "truncated"} for r in rows for s in r["samples"])
    # A third run has nothing left to do.
    again = generate_teacher(recs, ArithmeticBackend(seed=0, think=QWEN3_THINK), out, k=2, progress=False)
    assert (again.skipped, again.generated) == (10, 0)
    assert finished_ids(out) == {r["id"] for r in recs}


def test_duplicate_or_missing_ids_are_refused(tmp_path):
    recs = records(3)
    with pytest.raises(DataError, match="duplicate id"):
        generate_teacher(recs + [recs[0]], ArithmeticBackend(think=QWEN3_THINK), tmp_path / "t.jsonl", progress=False)
    with pytest.raises(DataError, match="record 1, key 'id'"):
        generate_teacher(
            [{"prompt": "Compute 1+1."}], ArithmeticBackend(think=QWEN3_THINK), tmp_path / "t.jsonl", progress=False
        )


def test_arithmetic_backend_writes_the_runs_think_format():
    recs = records(2)
    pangu = ArithmeticBackend(seed=0, think=PANGU_THINK).generate(recs, k=1)
    qwen = ArithmeticBackend(seed=0, think=QWEN3_THINK).generate(recs, k=1)
    assert [s[0].text for s in qwen] == [QWEN3_THINK.rewrite(s[0].text, PANGU_THINK) for s in pangu]
    assert all(s[0].text.startswith(PANGU_THINK.start) for s in pangu)
    # make_backend resolves the format: the config's tags, else Qwen3's for the arithmetic world.
    config = TeacherConfig(think_start=PANGU_THINK.start, think_end=PANGU_THINK.end)
    assert make_backend(config).think == PANGU_THINK
    assert teacher_think(TeacherConfig()) == QWEN3_THINK


def test_config_errors():
    with pytest.raises(ValueError, match="backend"):
        TeacherConfig(backend="nope")
    with pytest.raises(ValueError, match="needs `model`"):
        TeacherConfig(backend="openai")
    with pytest.raises(ValueError, match="think format"):  # an endpoint teacher's format is never guessed
        make_backend(TeacherConfig(backend="openai", model="m"))


def test_transformers_backend_batches_on_the_model(tiny_model_dir):
    config = TeacherConfig(backend="transformers", model=str(tiny_model_dir), max_new_tokens=8, mode=None)
    backend = make_backend(config)
    assert isinstance(backend, SamplerBackend) and backend.think == QWEN3_THINK  # the model's tokenizer says
    out = backend.generate(records(3), k=2)
    assert [len(s) for s in out] == [2, 2, 2]
    assert all(1 <= s.num_tokens <= 8 for ss in out for s in ss)
    assert backend.generate(records(3), k=2) == out  # each chunk is seeded


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed")
def test_vllm_backend(tiny_model_dir):  # pragma: no cover - needs a GPU and the vllm extra
    backend = make_backend(TeacherConfig(backend="vllm", model=str(tiny_model_dir), max_new_tokens=8, mode=None))
    out = backend.generate(records(2), k=2)
    assert [len(s) for s in out] == [2, 2]


class Handler(BaseHTTPRequestHandler):
    """A fake endpoint: fails the first two requests (500, then 429), then echoes the prompt."""

    calls = 0
    lock = threading.Lock()

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with Handler.lock:
            Handler.calls += 1
            n = Handler.calls
        if n <= 2:
            self.send_response(500 if n == 1 else 429)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        # A reasoning server returns the think block apart; the client puts it back in the run's format.
        message = {"content": body["messages"][-1]["content"], "reasoning_content": "x"}
        reply = {
            "choices": [{"message": message, "finish_reason": "stop"}],
            "usage": {"completion_tokens": 7},
        }
        send_json(self, reply)

    def log_message(self, *args):
        pass


def test_openai_backend_retries_and_runs_concurrently():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        config = TeacherConfig(
            backend="openai",
            model="m",
            base_url=f"http://127.0.0.1:{server.server_port}/v1",
            concurrency=4,
            backoff=0.01,
            max_retries=3,
            timeout=10,
            mode="slow",
        )
        backend = make_backend(config, think=PANGU_THINK)
        assert isinstance(backend.sampler, EndpointSampler) and backend.name == "openai"
        out = backend.generate(records(3), k=2)
    finally:
        server.shutdown()
        server.server_close()
    assert [len(s) for s in out] == [2, 2, 2]  # the failed attempts were retried
    assert all(s.num_tokens == 7 and s.text.endswith("/think") for ss in out for s in ss)
    assert all(s.text.startswith("[unused16]\nx\n[unused17]\n\n") for ss in out for s in ss)
    assert Handler.calls == 8


def test_endpoint_teacher_passes_its_batch_budget_to_the_client():
    config = TeacherConfig(backend="openai", model="teacher", batch_budget=5.0, timeout=2.0)
    sampler = config.sampler_config()
    assert (sampler.backend, sampler.batch_budget, sampler.timeout) == ("endpoint", 5.0, 2.0)


def test_generate_teacher_script_reads_a_file_or_a_data_set(tmp_path):
    """--input and --dataset_name (train.core.sources: here a local JSONL read through `datasets`) give the same
    teacher file; giving both, or neither, is an error."""
    write_jsonl(tmp_path / "prompts.jsonl", records(6))
    main = load_script("scripts/generate_teacher.py").main
    common = ["--backend", "arithmetic", "--k", "2", "--limit", "4"]
    main(["--input", str(tmp_path / "prompts.jsonl"), "--out", str(tmp_path / "a.jsonl"), *common])
    main(["--dataset_name", str(tmp_path / "prompts.jsonl"), "--out", str(tmp_path / "b.jsonl"), *common])
    rows = [read_teacher_file(tmp_path / f"{x}.jsonl") for x in "ab"]
    assert len(rows[0]) == 4
    assert [(r["id"], r["samples"]) for r in rows[0]] == [(r["id"], r["samples"]) for r in rows[1]]
    with pytest.raises(DataError, match="one source"):
        main(["--out", str(tmp_path / "c.jsonl"), *common])
