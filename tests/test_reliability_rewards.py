"""Nothing a model writes can stall training (issue #15): every reward call and every judge request is bounded.

* math: a completion holding a number too large to compute (a power tower, a huge factorial) is refused before sympy
  sees it, and what slips past the filter runs in a worker process that is killed at the time limit, with its
  address space capped; the caller's memory stays flat;
* code: fenced-block extraction is linear in the text (the old regex was super-quadratic) and agrees with it;
* the other extraction regexes of the rewards stay fast on adversarial text;
* endpoint: the timeout bounds the whole request (a server trickling one byte at a time cannot hold it), and a
  ``chat_many`` batch has a total budget.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import pickle
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rewards.judge as rjudge
import rewards.math as rmath
from rewards.code import extract_code
from rewards.format import FormatReward
from rewards.judge import Judge, parse_score, parse_verdict
from rewards.math import MathReward
from rewards.router import _BOXED, _NUMERIC, ShortAnswerReward, _norm
from train.core.modes import QWEN3_THINK
from train.sampling.endpoint import EndpointClient
from train.sampling.params import SamplerConfig

BOMBS = ["\\boxed{2^{2^{64}}}", "\\boxed{9^{9^{9^{9}}}}", "$2**2**64$", "\\boxed{100000!}", "\\boxed{10^{1000000}}"]

# ------------------------------------------------------------------------------------------------------- math


def _run_python(code: str, timeout: float) -> dict:
    """Run ``code`` in a fresh interpreter (a hang there cannot hang the test run); the JSON it prints last."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_number_bombs_score_zero_within_the_limit_and_memory_stays_flat():
    # Before: 2^{2^{64}} against 2 was still running (1.1 GB) after 60 s, 9^{9^{9^{9}}} after 150 s.
    out = _run_python(
        f"""
        import json, time
        from rewards.math import MathReward, verify_answer
        from train.core.modes import QWEN3_THINK

        def rss_mb():
            for line in open("/proc/self/status"):
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024

        reward = MathReward(timeout_s=2.0, think=QWEN3_THINK)
        assert verify_answer("\\\\frac12", "0.5") is True  # start-up (imports, the worker) is not what is timed
        before, rows = rss_mb(), []
        for bomb in {BOMBS!r}:
            start = time.monotonic()
            value = reward(["<think>big</think>" + bomb], answer=["2"])[0]
            rows.append([bomb, value, time.monotonic() - start])
        print(json.dumps({{"rows": rows, "growth_mb": rss_mb() - before}}))
        """,
        timeout=60,
    )
    for bomb, value, seconds in out["rows"]:
        assert value == 0.0, bomb  # refused before sympy: a number too large to compute is not the answer
        assert seconds < 2.0 + 1.0, (bomb, seconds)
    assert out["growth_mb"] < 200


def test_what_slips_past_the_filter_is_killed_at_the_limit_and_the_worker_comes_back(caplog):
    # The filter reads literal numbers only: the factorial of a power reaches sympy, which never returns. The
    # worker running it is killed at the time limit, and a fresh one serves the next call.
    bomb = "\\boxed{(2^{64})!}"
    assert rmath._too_large(bomb) is None
    assert rmath.verify_answer("\\frac12", "0.5") is True  # a warm worker: start-up is not what is timed
    start = time.monotonic()
    assert rmath.verify_answer("2", bomb, timeout_s=1.0) is None
    assert time.monotonic() - start < 1.0 + 1.0
    assert "timed out" in caplog.text
    assert rmath.verify_answer("\\frac12", "0.5") is True and rmath.verify_answer("\\frac12", "1/3") is False


def test_the_worker_agrees_with_the_in_process_verifier(monkeypatch):
    pairs = [
        ("42", "\\boxed{42}"), ("42", "\\boxed{-42}"), ("0", "\\boxed{-0}"), ("42", "I give up"), ("42", None),
        ("\\frac{1}{2}", "$0.5$"), ("1<x<2", "$(1,2)$"), ("(1,2)", "$1<x<2$"), ("x^2+2x+1", "$(x+1)^2$"),
        ("1,000", "The answer is 1000."), ("no answer", "1"), ("2^{2^{64}}", "2"), ("3", "\\boxed{10^{99999999}}"),
    ]  # fmt: skip
    isolated = [rmath.verify_answer(gold, answer) for gold, answer in pairs]
    monkeypatch.setattr(rmath, "ISOLATE", False)
    rmath.clear_cache()
    assert isolated == [rmath.verify_answer(gold, answer) for gold, answer in pairs]
    assert isolated == [True, False, True, False, False, True, True, False, True, True, None, None, False]


def test_worker_errors_and_logs_reach_the_caller(caplog):
    rmath.clear_cache()
    with caplog.at_level(logging.WARNING, logger="rewards"):
        assert rmath.verify_answer("see the proof", "1") is None
    assert "unparseable math reference 'see the proof'" in caplog.text  # logged in the worker, re-emitted here


def test_short_answer_and_the_workers_threads():
    # The MARS router's rule layer verifies numbers through the same bounded path, from any thread.
    reward = ShortAnswerReward(timeout_s=1.0, think=QWEN3_THINK)
    completions = ["<think></think>" + b for b in ["\\boxed{2^{2^{64}}}", "\\boxed{2}", "\\boxed{1.5}", "3/2"]]
    assert reward(completions, answer=["2", "2", "3/2", "3/2"]) == [0.0, 1.0, 1.0, 1.0]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda i: rmath.verify_answer("\\frac12", f"{i}/{2 * i}"), range(1, 9)))
    assert got == [True] * 8


def _verdicts_in_a_forked_child() -> list:
    return [
        rmath.verify_answer("\\frac12", "0.5"),
        MathReward(timeout_s=2.0, think=QWEN3_THINK)(["\\boxed{2^{2^{64}}}", "\\boxed{1/2}"], answer=["2", "0.5"]),
    ]


def test_a_forked_child_and_a_pickled_reward_verify_on_their_own():
    assert rmath.verify_answer("\\frac12", "0.5") is True  # this process has a worker before the fork
    with multiprocessing.get_context("fork").Pool(1) as pool:  # a data-loader worker, say: it starts its own
        assert pool.apply(_verdicts_in_a_forked_child) == [True, [0.0, 1.0]]
    reward = pickle.loads(pickle.dumps(MathReward(timeout_s=2.0, think=QWEN3_THINK)))  # trl may pickle rewards
    assert reward(["<think></think>\\boxed{0.5}"], answer=["\\frac12"]) == [1.0]
    assert rmath.verify_answer("\\frac12", "1/3") is False  # the parent's worker is unharmed


@pytest.mark.parametrize(
    ("text", "large"),
    [
        ("2^{2^{64}}", True), ("9^{9^{9^{9}}}", True), ("2**2**64", True), ("2 ^ { 2 ^ { 64 } }", True),
        ("10^{1000000}", True), ("100000!", True), ("{20000}!", True), ("7" * 5000, True), ("x^{10^{9}}", True),
        ("2^{2^{10}}", False), ("2^{100}", False), ("e^{-x^2}", False), ("6.02 \\times 10^{23}", False),
        ("10!", False), ("2^{2023}", False), ("\\frac{1}{2}", False), ("x^{y^{z}}", False), ("(2^{64})!", False),
    ],
)  # fmt: skip
def test_the_filter_refuses_numbers_too_large_to_compute(text, large):
    assert (rmath._too_large(text) is not None) is large


def test_the_filter_is_linear():
    def scan(text: str) -> None:
        rmath._too_large_answer(text)

    for piece in ["2^{", "^", "9", "1!", "2**", "\\boxed{", "\\boxed{2^{2^{"]:
        small, large = (min(_seconds(scan, piece * n) for _ in range(3)) for n in (4000, 16000))
        assert large < 8 * small + 0.05 and large < 1.0, (piece, small, large)


# ------------------------------------------------------------------------------------------------------- code

# The fence regex extract_code used before: super-quadratic on repeated openers; the scanner must agree with it.
_OLD_FENCE = re.compile(
    r"^[ \t]*(?P<fence>`{3,}|~{3,})[ \t]*(?P<label>[^\s`]*)[^\n]*\n(?P<body>.*?)^[ \t]*(?P=fence)[ \t]*$",
    re.MULTILINE | re.DOTALL,
)


def _old_extract(answer, labels=("python", "py", "python3")):
    if not answer:
        return None
    wanted, last = {label.lower() for label in labels}, None
    for match in _OLD_FENCE.finditer(answer):
        if not match["label"] or match["label"].lower() in wanted:
            last = match["body"]
    return last


def _seconds(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def test_code_extraction_is_linear():
    # Before: 4,000 repetitions of "```python\n" (39 KiB) took ~17 s, 8,000 ~85 s.
    times = {}
    for n in (1000, 2000, 4000, 8000):
        times[n] = min(_seconds(extract_code, "```python\n" * n) for _ in range(3))
        assert times[n] < 0.5, (n, times[n])
    assert times[8000] < 8 * times[2000] + 0.02  # 4x the text: at most ~linear growth (plus timer noise)
    for text in ["~~~~\n" * 8000, "```" + "`" * 40000 + "\n" * 3, "```py\n" + "x\n" * 40000, " \t" * 40000 + "```"]:
        assert _seconds(extract_code, text) < 0.5


_FENCE_PARTS = [
    "```", "````", "~~~", "~~~~", "```python", "```py", "```Python3", "```cpp", "``` python", "~~~python", "\n",
    "\n", "\n", "x = 1", "print('```')", " ", "\t", "`", "~", "```python extra", "\r", "```~", "~~~`",
]  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(_FENCE_PARTS), st.text(alphabet="`~ \npy", max_size=5)), max_size=14))
def test_code_extraction_agrees_with_the_old_regex(parts):
    text = "".join(parts)
    assert extract_code(text) == _old_extract(text), repr(text)
    assert extract_code(text, ("cpp",)) == _old_extract(text, ("cpp",)), repr(text)


# ------------------------------------------------------------------------------------------ other extractors

_ADVERSARIAL = [
    "```python\n", "\\boxed{", "{", "score ", "Score: ", "**", "[[", "1/", "1 ", "1", "<", "a", "9.", "verdict: ",
    "the answer is ", "$", "\\text{", "\\(", " ", "1 out of ", "<think>", "</think>", "-1", "1,",
]  # fmt: skip


@pytest.mark.parametrize("piece", _ADVERSARIAL)
def test_extraction_regexes_stay_linear_on_adversarial_text(piece):
    # Before: parse_score on 40,000 digits took 180 s (a bare "7/10" pattern rescanned the digit run from each digit).
    fns = [
        lambda t: parse_score(t, 10.0), parse_verdict, _BOXED.findall, _NUMERIC.match, _norm,
        rmath._DELIMITED.search, lambda t: rmath._LATEX_TEXT.sub(" ", t), rmath._WORD.search, rmath._integer_answer,
        rmath._too_large_answer, lambda t: FormatReward(think=QWEN3_THINK)([t]), lambda t: QWEN3_THINK.parse(t),
    ]  # fmt: skip
    n = 40000 // len(piece)
    for fn in fns:
        small, large = (min(_seconds(fn, piece * k) for _ in range(3)) for k in (n // 4, n))
        # 4x the text: ~4x the time (16x for a quadratic scan), or fast whatever the load of the machine
        assert large < max(8 * small, 0.1), (fn, small, large)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789.-/ *[]:scoreutf", max_size=24))
def test_the_judges_number_pattern_matches_as_before(text):
    # The lookbehind that made it linear changes no match: a number is still read from the start of its digits.
    for pattern in rjudge._SCORE_PATTERNS:
        old = re.compile(pattern.pattern.replace(rjudge._NUM, r"(-?\d+(?:\.\d+)?)"), pattern.flags)
        assert old.pattern != pattern.pattern and old.findall(text) == pattern.findall(text), text


# --------------------------------------------------------------------------------------------------- endpoint


class TrickleServer:
    """A loopback HTTP server that answers one byte per ``interval`` seconds, forever (until the client goes).

    ``headers=False`` trickles the body after complete headers; ``headers=True`` trickles the status line too.
    """

    def __init__(self, interval: float = 0.5, headers: bool = False) -> None:
        self.interval, self.headers = interval, headers
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.stop = threading.Event()
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)  # the request (small enough for one read on loopback)
            head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
            try:
                if not self.headers:
                    conn.sendall(head)
                for byte in (head if self.headers else b"") + b" " * 100000:
                    if self.stop.wait(self.interval):
                        return
                    conn.sendall(bytes([byte]))
            except OSError:  # the client gave up: what the tests want
                return

    def __enter__(self) -> TrickleServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.sock.close()

    def config(self, **kw) -> SamplerConfig:
        params = dict(backend="endpoint", model="m", base_url=f"http://127.0.0.1:{self.port}/v1", backoff=0.01)
        return SamplerConfig(**{**params, **kw})


MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("headers", [False, True], ids=["body", "headers"])
def test_a_trickling_endpoint_cannot_hold_a_request_past_its_timeout(headers):
    # Before: the timeout was per socket read, and a byte every 0.5 s held the request as long as the server liked.
    with TrickleServer(0.5, headers=headers) as server:
        client = EndpointClient(server.config(timeout=1.0, max_retries=0), None)
        start = time.monotonic()
        assert client.chat(MESSAGES) is None
        assert time.monotonic() - start < 2.0
        client = EndpointClient(server.config(timeout=1.0, max_retries=2, backoff=0.01), None)
        start = time.monotonic()
        assert client.chat(MESSAGES) is None
        assert time.monotonic() - start < 3 * 1.0 + 1.5  # each attempt bounded by the timeout
        assert server.connections == 4


def test_chat_many_gives_up_at_the_batch_budget(caplog):
    with TrickleServer(0.5) as server:
        client = EndpointClient(server.config(timeout=30.0, max_retries=3, concurrency=2, batch_budget=1.5), None)
        start = time.monotonic()
        with caplog.at_level(logging.WARNING):
            assert client.chat_many([MESSAGES] * 5) == [None] * 5
        assert time.monotonic() - start < 1.5 + 1.0
    assert "batch budget" in caplog.text


def test_batch_budget_is_a_checked_config_key():
    assert SamplerConfig().batch_budget is None
    with pytest.raises(ValueError, match="batch_budget"):
        SamplerConfig(batch_budget=0)
    judge = Judge(kind="rubric", base_url="http://127.0.0.1:9/v1", batch_budget=2.5, think=QWEN3_THINK)
    assert judge.backend.client.config.batch_budget == 2.5  # the judge passes its budget to the client
