"""Teacher generation: K sampled replies per prompt from a chosen backend, written as it goes and resumable.

Backends (all with ``generate(records, k) -> list[list[Sample]]``, one list of ``k`` samples per record):

* ``arithmetic``: the programmatic arithmetic teacher (:class:`train.world.arithmetic.ArithmeticTeacher`), with its
  mistakes (``error_rate``) and padded traces (``verbosity``);
* ``transformers``: a local model, batched generation on whatever device it sits on
  (:func:`train.sampling.generation.generate`);
* ``vllm``: vLLM's offline engine (optional extra, GPU), imported only when this backend is built;
* ``openai``: an OpenAI-compatible chat-completions endpoint (a vLLM or SGLang server, a hosted API): concurrent
  requests from a thread pool, a request-rate limit, retries with exponential back-off on transport errors, HTTP 429
  and 5xx.

:func:`generate_teacher` writes one JSON line per prompt, ``{**record, "samples": [{"text", "num_tokens",
"truncated"}, ...], "teacher": name}``, appended and flushed as soon as its chunk is done. A rerun reads the file,
skips the prompts already there (by the record's stable ``id``) and drops a torn last line left by a kill mid-write,
so an interrupted run resumes without duplicates.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tqdm.auto import tqdm

from train.core.data import DataError, to_messages
from train.core.modes import Mode, apply_mode
from train.world.arithmetic import ArithmeticTeacher

logger = logging.getLogger(__name__)

BACKENDS = ("arithmetic", "transformers", "vllm", "openai")


@dataclass(frozen=True)
class Sample:
    """One teacher reply: its text (think block included), its length in tokens and whether it hit the limit."""

    text: str
    num_tokens: int
    truncated: bool = False


class TeacherBackend(Protocol):
    name: str

    def generate(self, records: Sequence[dict[str, Any]], k: int) -> list[list[Sample]]: ...


@dataclass
class TeacherConfig:
    """Which teacher to ask and how to sample from it."""

    backend: str = field(default="arithmetic", metadata={"help": f"Teacher backend: one of {BACKENDS}."})
    model: str | None = field(
        default=None,
        metadata={
            "help": "Local path or hub id (transformers, vllm), or the model name sent to the endpoint (openai)."
        },
    )
    mode: str | None = field(
        default="slow", metadata={"help": "Mode tag added to each prompt (slow, fast, auto); None keeps the prompt's."}
    )
    temperature: float = field(default=0.8, metadata={"help": "Sampling temperature (K > 1 needs it above 0)."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling threshold."})
    max_new_tokens: int = field(default=1024, metadata={"help": "Longest reply, in tokens."})
    batch_size: int = field(default=16, metadata={"help": "Prompts per generate() call (transformers)."})
    # Arithmetic teacher.
    verbosity: float = field(default=0.0, metadata={"help": "Arithmetic teacher: chance of a redundant trace line."})
    error_rate: float = field(default=0.0, metadata={"help": "Arithmetic teacher: chance of a wrong result."})
    seed: int = field(default=0, metadata={"help": "Seed of the arithmetic teacher and of vLLM sampling."})
    tokenizer: str | None = field(
        default=None,
        metadata={"help": "Arithmetic teacher: tokenizer folder used to count tokens (default: one per character)."},
    )
    # vLLM.
    tensor_parallel_size: int = field(default=1, metadata={"help": "vLLM: GPUs per model replica."})
    gpu_memory_utilization: float = field(default=0.9, metadata={"help": "vLLM: share of GPU memory to use."})
    max_model_len: int | None = field(default=None, metadata={"help": "vLLM: context length (default: the model's)."})
    # OpenAI-compatible endpoint.
    base_url: str = field(
        default="http://127.0.0.1:8000/v1",
        metadata={"help": "Endpoint root; requests go to {base_url}/chat/completions."},
    )
    api_key_env: str = field(
        default="OPENAI_API_KEY", metadata={"help": "Environment variable holding the API key (never the key itself)."}
    )
    concurrency: int = field(default=16, metadata={"help": "Requests in flight at once."})
    requests_per_second: float | None = field(
        default=None, metadata={"help": "Rate limit on request starts (None: no limit)."}
    )
    timeout: float = field(default=120.0, metadata={"help": "Seconds to wait for one request before retrying."})
    max_retries: int = field(default=4, metadata={"help": "Retries after the first attempt; then the sample is lost."})
    backoff: float = field(default=1.0, metadata={"help": "First retry wait in seconds, doubled at each retry."})

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"teacher backend {self.backend!r}; expected one of {BACKENDS}")
        if self.backend in ("transformers", "vllm", "openai") and not self.model:
            raise ValueError(f"teacher backend {self.backend!r} needs `model`")


def make_backend(config: TeacherConfig, model: Any = None, tokenizer: Any = None) -> TeacherBackend:
    """The backend ``config`` names; an already loaded ``model``/``tokenizer`` serves the transformers backend."""
    if config.backend == "arithmetic":
        return ArithmeticBackend(config.verbosity, config.error_rate, config.seed, config.mode, config.tokenizer)
    if config.backend == "transformers":
        return TransformersBackend(config, model, tokenizer)
    if config.backend == "vllm":
        return VLLMBackend(config)
    return OpenAIBackend(config)


def _mode_messages(prompt: Any, mode: str | None) -> list[dict[str, str]]:
    return apply_mode(to_messages(prompt), mode) if mode else to_messages(prompt)


# ------------------------------------------------------------------------------------------------ arithmetic

_PROBLEM = re.compile(r"Compute (\d+)\s*([+*])\s*(\d+)")


class ArithmeticBackend:
    """The programmatic arithmetic teacher; the problem is read from the prompt text (``Compute a+b.``)."""

    name = "arithmetic"

    def __init__(
        self,
        verbosity: float = 0.0,
        error_rate: float = 0.0,
        seed: int = 0,
        mode: str | None = "slow",
        tokenizer: str | Any | None = None,
    ) -> None:
        self.teacher = ArithmeticTeacher(verbosity=verbosity, error_rate=error_rate, seed=seed)
        self.mode = Mode.parse(mode) if mode else Mode.SLOW
        if isinstance(tokenizer, str):
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        self.tokenizer = tokenizer

    def count(self, text: str) -> int:
        # The tiny arithmetic models use a character tokenizer, so a character is a token unless told otherwise.
        return len(text) if self.tokenizer is None else len(self.tokenizer(text, add_special_tokens=False).input_ids)

    def generate(self, records: Sequence[dict[str, Any]], k: int) -> list[list[Sample]]:
        out = []
        for r in records:
            text = r["prompt"] if isinstance(r["prompt"], str) else to_messages(r["prompt"])[-1]["content"]
            m = _PROBLEM.search(text)
            if m is None:
                raise DataError(f"record {r.get('id')!r}, key 'prompt': not an arithmetic problem: {text!r:.80}")
            problem = {"a": int(m.group(1)), "op": m.group(2), "b": int(m.group(3))}
            replies = [self.teacher.respond(problem, self.mode) for _ in range(k)]
            out.append([Sample(t, self.count(t)) for t in replies])
        return out


# ---------------------------------------------------------------------------------------------- transformers


class TransformersBackend:
    """A local causal LM, batched sampling on its device."""

    name = "transformers"

    def __init__(self, config: TeacherConfig, model: Any = None, tokenizer: Any = None) -> None:
        self.config = config
        if model is None or tokenizer is None:
            from train.core.loading import load_model, load_tokenizer

            tokenizer = load_tokenizer(config.model)
            model = load_model(config.model, tokenizer=tokenizer)
        self.model, self.tokenizer = model, tokenizer

    def generate(self, records: Sequence[dict[str, Any]], k: int) -> list[list[Sample]]:
        from train.sampling.generation import generate

        gens = generate(
            self.model,
            self.tokenizer,
            [r["prompt"] for r in records],
            mode=self.config.mode,
            num_samples=k,
            do_sample=k > 1 or self.config.temperature > 0,
            temperature=max(self.config.temperature, 1e-5),
            top_p=self.config.top_p,
            max_new_tokens=self.config.max_new_tokens,
            batch_size=self.config.batch_size,
            progress=False,
        )
        return [[Sample(g.text, g.num_tokens, g.truncated) for g in gs] for gs in gens]


# ------------------------------------------------------------------------------------------------------ vLLM


class VLLMBackend:
    """vLLM's offline engine: all prompts of a chunk in one ``LLM.chat`` call, ``n=k`` samples each."""

    name = "vllm"

    def __init__(self, config: TeacherConfig) -> None:
        try:
            from vllm import LLM, SamplingParams
        except ImportError as exc:  # an optional extra: say how to get it
            raise ImportError("the vllm teacher backend needs vLLM: pip install 'fastslow[vllm]' (GPU only)") from exc
        self.config = config
        self._sampling = SamplingParams
        kwargs = {"max_model_len": config.max_model_len} if config.max_model_len else {}
        self.llm = LLM(
            model=config.model,
            tensor_parallel_size=config.tensor_parallel_size,
            gpu_memory_utilization=config.gpu_memory_utilization,
            seed=config.seed,
            **kwargs,
        )

    def generate(self, records: Sequence[dict[str, Any]], k: int) -> list[list[Sample]]:
        params = self._sampling(
            n=k,
            temperature=self.config.temperature,
            top_p=self.config.top_p,
            max_tokens=self.config.max_new_tokens,
            seed=self.config.seed,
        )
        conversations = [_mode_messages(r["prompt"], self.config.mode) for r in records]
        outputs = self.llm.chat(conversations, params, use_tqdm=False)
        return [
            [Sample(o.text, len(o.token_ids), o.finish_reason == "length") for o in out.outputs] for out in outputs
        ]


# ---------------------------------------------------------------------------------------------------- OpenAI


class RateLimiter:
    """At most ``rate`` request starts per second across threads (evenly spaced)."""

    def __init__(self, rate: float | None) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self.next_start = 0.0
        self.lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self.lock:
            now = time.monotonic()
            start = max(now, self.next_start)
            self.next_start = start + self.interval
        if start > now:
            time.sleep(start - now)


class OpenAIBackend:
    """An OpenAI-compatible endpoint: one request per sample, many in flight, rate-limited and retried."""

    name = "openai"

    def __init__(self, config: TeacherConfig) -> None:
        self.config = config
        self.url = config.base_url.rstrip("/") + "/chat/completions"
        self.limiter = RateLimiter(config.requests_per_second)
        self.pool = ThreadPoolExecutor(max_workers=config.concurrency)

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.config.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def complete(self, messages: list[dict[str, str]]) -> Sample | None:
        """One reply, or None when every attempt failed (logged)."""
        body = json.dumps(
            {
                "model": self.config.model,
                "messages": messages,
                "temperature": self.config.temperature,
                "top_p": self.config.top_p,
                "max_tokens": self.config.max_new_tokens,
            }
        ).encode()
        wait = self.config.backoff
        for attempt in range(self.config.max_retries + 1):
            self.limiter.wait()
            try:
                req = urllib.request.Request(self.url, data=body, headers=self._headers(), method="POST")
                with urllib.request.urlopen(req, timeout=self.config.timeout) as resp:
                    reply = json.loads(resp.read())
                return _sample_of(reply)
            except urllib.error.HTTPError as exc:
                if exc.code != 429 and exc.code < 500:  # a client error will not go away by retrying
                    logger.error("teacher endpoint refused the request: HTTP %d %s", exc.code, exc.read()[:300])
                    return None
                error = f"HTTP {exc.code}"
            except (urllib.error.URLError, TimeoutError, ConnectionError, json.JSONDecodeError, KeyError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            if attempt < self.config.max_retries:
                logger.warning("teacher request failed (%s); retry %d in %.1fs", error, attempt + 1, wait)
                time.sleep(wait)
                wait *= 2
        logger.error("teacher request failed after %d attempts: %s", self.config.max_retries + 1, error)
        return None

    def generate(self, records: Sequence[dict[str, Any]], k: int) -> list[list[Sample]]:
        jobs = [
            self.pool.submit(self.complete, _mode_messages(r["prompt"], self.config.mode))
            for r in records
            for _ in range(k)
        ]
        results = [j.result() for j in jobs]
        # A sample lost after its retries is dropped; the prompt keeps the samples that came back.
        return [[s for s in results[i * k : (i + 1) * k] if s is not None] for i in range(len(records))]


def _sample_of(reply: dict[str, Any]) -> Sample:
    choice = reply["choices"][0]
    message = choice["message"]
    text = message.get("content") or ""
    # Reasoning servers (vLLM --reasoning-parser) return the think block separately: put it back.
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if reasoning:
        text = f"<think>\n{reasoning}\n</think>\n\n{text}"
    usage = reply.get("usage") or {}
    num_tokens = int(usage.get("completion_tokens") or len(text.split()))
    return Sample(text, num_tokens, choice.get("finish_reason") == "length")


# ------------------------------------------------------------------------------------------------ the writer


def finished_ids(path: str | Path) -> set[str]:
    """Ids already in a teacher file; a torn last line (a kill mid-write) is cut off the file first."""
    path = Path(path)
    if not path.exists():
        return set()
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        logger.warning("%s: dropping a torn last line (%d bytes) left by an interrupted run", path, len(data) - end)
        with path.open("r+b") as f:
            f.truncate(end)
    ids = set()
    for line_no, line in enumerate(data[:end].decode("utf-8").splitlines(), 1):
        if line.strip():
            try:
                ids.add(json.loads(line)["id"])
            except (json.JSONDecodeError, KeyError):
                raise DataError(f"{path}, row {line_no}: not a teacher record with an 'id'") from None
    return ids


@dataclass
class GenerationReport:
    """What one call of :func:`generate_teacher` did."""

    prompts: int = 0
    skipped: int = 0
    generated: int = 0
    samples: int = 0
    tokens: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def generate_teacher(
    records: Sequence[dict[str, Any]],
    backend: TeacherBackend,
    out_path: str | Path,
    k: int = 4,
    chunk_size: int = 64,
    progress: bool = True,
) -> GenerationReport:
    """Ask ``backend`` for ``k`` replies per record and append them to ``out_path`` (JSONL), chunk by chunk.

    Records need a unique ``id`` (:func:`train.core.data.validate_record` derives one from the prompt). Prompts whose
    id is already in ``out_path`` are skipped, so a rerun after an interruption finishes the job without duplicates.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    seen: dict[str, int] = {}
    for i, r in enumerate(records, 1):
        if r.get("id") in (None, ""):
            raise DataError(f"record {i}, key 'id': teacher generation needs stable ids (use validate_record)")
        if r["id"] in seen:
            raise DataError(f"record {i}, key 'id': duplicate id {r['id']!r} (also record {seen[r['id']]})")
        seen[r["id"]] = i
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    done = finished_ids(out_path)
    todo = [r for r in records if r["id"] not in done]
    report = GenerationReport(prompts=len(records), skipped=len(records) - len(todo))
    if report.skipped:
        logger.info("%s: %d of %d prompts already done; resuming", out_path, report.skipped, len(records))
    start = time.perf_counter()
    bar = tqdm(total=len(todo), desc=f"teacher ({backend.name})", unit="prompt", disable=not progress)
    with out_path.open("a", encoding="utf-8") as f:
        for lo in range(0, len(todo), chunk_size):
            chunk = todo[lo : lo + chunk_size]
            samples = backend.generate(chunk, k)
            for r, ss in zip(chunk, samples):
                row = {**r, "samples": [asdict(s) for s in ss], "teacher": backend.name}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                report.samples += len(ss)
                report.tokens += sum(s.num_tokens for s in ss)
            f.flush()
            os.fsync(f.fileno())  # a finished chunk survives a crash
            report.generated += len(chunk)
            bar.update(len(chunk))
            bar.set_postfix(tokens=report.tokens)
    bar.close()
    report.seconds = time.perf_counter() - start
    logger.info(
        "teacher: %d prompts generated (%d skipped), %d samples, %d tokens in %.1fs",
        report.generated,
        report.skipped,
        report.samples,
        report.tokens,
        report.seconds,
    )
    return report


def read_teacher_file(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a teacher file, each with its ``samples``; errors name the file and row."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such teacher file")
    rows = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}, row {line_no}: malformed JSON ({exc.msg})") from None
        if not isinstance(row.get("samples"), list):
            raise DataError(f"{path}, row {line_no}, key 'samples': expected a list of teacher samples")
        for j, s in enumerate(row["samples"]):
            if not isinstance(s, dict) or not isinstance(s.get("text"), str) or "num_tokens" not in s:
                raise DataError(f"{path}, row {line_no}, key 'samples': sample {j} needs 'text' and 'num_tokens'")
        rows.append(row)
    return rows
