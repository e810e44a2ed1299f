"""Teacher generation: K sampled replies per prompt from a chosen backend, written as it goes and resumable.

Backends (all with ``generate(records, k) -> list[list[Reply]]``, one list of ``k`` replies per record):

* ``arithmetic``: the programmatic arithmetic teacher (:class:`train.world.arithmetic.ArithmeticTeacher`), with its
  mistakes (``error_rate``) and padded traces (``verbosity``), writing the run's think format;
* ``transformers``, ``vllm``, ``openai``: a :class:`SamplerBackend` over the sampler that
  :func:`train.sampling.make_sampler` builds (a local model; vLLM's offline engine; an OpenAI-compatible endpoint,
  the ``endpoint`` sampler, with its concurrency, rate limit and retries).

:func:`generate_teacher` writes one JSON line per prompt, ``{**record, "samples": [{"text", "num_tokens",
"truncated"}, ...], "teacher": name}``, appended and flushed as soon as its chunk is done. A rerun reads the file,
skips the prompts already there (by the record's stable ``id``) and drops a torn last line left by a kill mid-write,
so an interrupted run resumes without duplicates.

A resume is honest: ``<out>.run_config.json`` records the keys that change the replies (backend, ``k``, the
backend's sampling settings, the chunk size where chunks are seeded) and a rerun under other ones is refused
(:class:`train.core.fingerprint.ResumeConfigError`; delete the file and its sidecars to start over). A stateful
backend (the arithmetic teacher's random generator) saves its state in ``<out>.state.json`` after each flushed
chunk and continues from it, so a killed and resumed file is byte-identical to an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tqdm.auto import tqdm

from train.core.data import DataError, to_messages
from train.core.fingerprint import ResumeConfigError, check_run_config, write_json_atomic
from train.core.loading import load_tokenizer
from train.core.modes import QWEN3_THINK, Mode, ThinkFormat
from train.sampling.base import Sampler, SamplerConfig, SamplingParams, make_sampler
from train.sampling.params import chunk_seed
from train.sampling.reply import Reply
from train.world.arithmetic import ArithmeticTeacher

logger = logging.getLogger(__name__)

BACKENDS = ("arithmetic", "transformers", "vllm", "openai")
# A teacher backend's sampler (``openai`` is the OpenAI-compatible endpoint).
_SAMPLER_BACKENDS = {"transformers": "transformers", "vllm": "vllm", "openai": "endpoint"}


class TeacherBackend(Protocol):
    name: str

    def generate(self, records: Sequence[dict[str, Any]], k: int) -> list[list[Reply]]: ...

    # Optional: ``run_config() -> dict`` (the settings that change replies, recorded for an honest resume), and for
    # a backend with a random state of its own, ``state()`` / ``restore(state)`` (JSON), saved with each chunk.


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
    temperature: float = field(default=0.8, metadata={"help": "Sampling temperature (0: greedy, one reply K times)."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling threshold."})
    max_new_tokens: int = field(default=1024, metadata={"help": "Longest reply, in tokens."})
    batch_size: int = field(default=16, metadata={"help": "Prompts per generate() call (transformers)."})
    dtype: str = field(
        default="auto",
        metadata={"help": "Weights dtype (transformers, vllm); auto: the device's precision (bf16 on a GPU/NPU)."},
    )
    device: str | None = field(
        default=None,
        metadata={"help": "transformers: device to sample on, e.g. cuda:0 (None: the one accelerate chose)."},
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Run the checkpoint's own model/tokenizer code (transformers, vllm)."}
    )
    # Arithmetic teacher.
    verbosity: float = field(default=0.0, metadata={"help": "Arithmetic teacher: chance of a redundant trace line."})
    error_rate: float = field(default=0.0, metadata={"help": "Arithmetic teacher: chance of a wrong result."})
    seed: int = field(default=0, metadata={"help": "Seed of the arithmetic teacher and of model sampling."})
    tokenizer: str | None = field(
        default=None,
        metadata={
            "help": "The student's tokenizer folder: its think format is the run's (the format replies are written "
            "in), and the arithmetic teacher counts tokens with it (default: one per character)."
        },
    )
    think_start: str | None = field(
        default=None, metadata={"help": "Think-block opening tag of the run (default: the tokenizer's)."}
    )
    think_end: str | None = field(
        default=None, metadata={"help": "Think-block closing tag of the run (default: the tokenizer's)."}
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
    max_backoff: float = field(default=30.0, metadata={"help": "Upper bound on one retry wait, in seconds."})
    batch_budget: float | None = field(
        default=None,
        metadata={"help": "openai: seconds one chunk's requests may take in all, retries included (None: no limit)."},
    )

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"teacher backend {self.backend!r}; expected one of {BACKENDS}")
        if self.backend in _SAMPLER_BACKENDS and not self.model:
            raise ValueError(f"teacher backend {self.backend!r} needs `model`")

    def sampler_config(self) -> SamplerConfig:
        """The :class:`SamplerConfig` of a model teacher (transformers, vllm, openai)."""
        if self.backend not in _SAMPLER_BACKENDS:
            raise ValueError(f"the {self.backend!r} teacher samples from no model")
        return SamplerConfig(
            backend=_SAMPLER_BACKENDS[self.backend],
            model=self.model,
            batch_size=self.batch_size,
            dtype=self.dtype,
            device=self.device,
            trust_remote_code=self.trust_remote_code,
            gpu_memory_utilization=self.gpu_memory_utilization,
            tensor_parallel_size=self.tensor_parallel_size,
            max_model_len=self.max_model_len,
            base_url=self.base_url,
            api_key_env=self.api_key_env,
            timeout=self.timeout,
            max_retries=self.max_retries,
            backoff=self.backoff,
            max_backoff=self.max_backoff,
            concurrency=self.concurrency,
            requests_per_second=self.requests_per_second,
            batch_budget=self.batch_budget,
        )


def teacher_tokenizer(config: TeacherConfig) -> Any:
    """The tokenizer that says the run's think format: ``config.tokenizer``, else a local model's; None if neither."""
    path = config.tokenizer or (config.model if config.backend in ("transformers", "vllm") else None)
    if not path:
        return None
    return load_tokenizer(
        path, think_start=config.think_start, think_end=config.think_end, trust_remote_code=config.trust_remote_code
    )


def teacher_think(config: TeacherConfig, tokenizer: Any = None) -> ThinkFormat:
    """The run's think format, resolved once: the tokenizer's, else the config's ``think_start``/``think_end``.

    The arithmetic teacher without either writes Qwen3's tags, the format of the arithmetic world's tiny models; a
    model teacher without either is an error (its replies would be parsed with a guessed format).
    """
    if tokenizer is not None:
        return ThinkFormat.from_tokenizer(tokenizer)
    if config.think_start and config.think_end:
        return ThinkFormat(config.think_start, config.think_end)
    if config.backend == "arithmetic":
        return QWEN3_THINK
    raise ValueError(
        f"the {config.backend!r} teacher needs the run's think format: give `tokenizer` (the student's tokenizer "
        "folder) or both `think_start` and `think_end`"
    )


def make_backend(
    config: TeacherConfig, model: Any = None, tokenizer: Any = None, think: ThinkFormat | None = None
) -> TeacherBackend:
    """The backend ``config`` names; an already loaded ``model``/``tokenizer`` serves the transformers backend.

    ``think`` (the run's format) is resolved by :func:`teacher_think` when not given.
    """
    if tokenizer is None and (config.backend == "arithmetic" or model is None):
        tokenizer = teacher_tokenizer(config)
    think = think or teacher_think(config, tokenizer)
    if config.backend == "arithmetic":
        return ArithmeticBackend(
            config.verbosity, config.error_rate, config.seed, config.mode, tokenizer=tokenizer, think=think
        )
    return SamplerBackend(make_sampler(config.sampler_config(), think, model, tokenizer), config)


# ------------------------------------------------------------------------------------------------ arithmetic

_PROBLEM = re.compile(r"Compute (\d+)\s*([+*])\s*(\d+)")


class ArithmeticBackend:
    """The programmatic arithmetic teacher; the problem is read from the prompt text (``Compute a+b.``).

    Replies are written in ``think`` (the run's format). Tokens are counted with ``tokenizer`` (an object or a
    folder), else one per character (the tiny arithmetic models' character tokenizer).
    """

    name = "arithmetic"

    def __init__(
        self,
        verbosity: float = 0.0,
        error_rate: float = 0.0,
        seed: int = 0,
        mode: str | None = "slow",
        tokenizer: str | Any | None = None,
        *,
        think: ThinkFormat,
    ) -> None:
        self.think = think
        self.teacher = ArithmeticTeacher(think, verbosity=verbosity, error_rate=error_rate, seed=seed)
        self.mode = Mode.parse(mode) if mode else Mode.SLOW
        self.tokenizer = load_tokenizer(tokenizer, think) if isinstance(tokenizer, str) else tokenizer

    def count(self, text: str) -> int:
        return len(text) if self.tokenizer is None else len(self.tokenizer(text, add_special_tokens=False).input_ids)

    def run_config(self) -> dict[str, Any]:
        t = self.teacher
        return {"verbosity": t.verbosity, "error_rate": t.error_rate, "seed": t.seed, "mode": str(self.mode),
                "think_start": self.think.start, "think_end": self.think.end,
                "tokenizer": getattr(self.tokenizer, "name_or_path", None)}  # fmt: skip

    def state(self) -> list:
        return self.teacher.get_state()

    def restore(self, state: list) -> None:
        self.teacher.set_state(state)

    def generate(self, records: Sequence[dict[str, Any]], k: int) -> list[list[Reply]]:
        out = []
        for r in records:
            text = r["prompt"] if isinstance(r["prompt"], str) else to_messages(r["prompt"])[-1]["content"]
            m = _PROBLEM.search(text)
            if m is None:
                raise DataError(f"record {r.get('id')!r}, key 'prompt': not an arithmetic problem: {text!r:.80}")
            problem = {"a": int(m.group(1)), "op": m.group(2), "b": int(m.group(3))}
            replies = [self.teacher.respond(problem, self.mode) for _ in range(k)]
            out.append([Reply(t, self.count(t)) for t in replies])
        return out


# ------------------------------------------------------------------------------------------- model teachers


class SamplerBackend:
    """A model teacher: ``k`` replies per record from a :class:`~train.sampling.params.Sampler`, in ``config.mode``.

    Each chunk is seeded from ``config.seed`` and its first record's id, so a rerun samples the same replies and
    two chunks do not share their random draws. An endpoint reply lost after its retries is dropped: the prompt
    keeps the replies that came back.
    """

    def __init__(self, sampler: Sampler, config: TeacherConfig) -> None:
        self.sampler, self.config = sampler, config
        self.name = config.backend
        self.think = sampler.think

    def run_config(self) -> dict[str, Any]:
        cfg = self.config
        return {"model": cfg.model, "mode": cfg.mode, "temperature": cfg.temperature, "top_p": cfg.top_p,
                "max_new_tokens": cfg.max_new_tokens, "seed": cfg.seed, "dtype": cfg.dtype,
                "think_start": self.think.start, "think_end": self.think.end}  # fmt: skip

    def generate(self, records: Sequence[dict[str, Any]], k: int) -> list[list[Reply]]:
        if not records:
            return []
        cfg = self.config
        params = SamplingParams(
            n=k,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            max_new_tokens=cfg.max_new_tokens,
            seed=chunk_seed(cfg.seed, str(records[0].get("id", ""))),
        )
        return self.sampler.sample([r["prompt"] for r in records], params, cfg.mode)


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


def sidecar(out_path: str | Path, kind: str) -> Path:
    """``<out>.<kind>.json``: the recorded configuration (``run_config``) or random state (``state``) of a file."""
    out_path = Path(out_path)
    return out_path.with_name(f"{out_path.name}.{kind}.json")


def _restore_state(backend: Any, out_path: Path, recorded_before: bool) -> None:
    """Continue a stateful backend from the state saved with the last flushed chunk; rows written after that state
    (a kill between a chunk's fsync and its state) are cut, to be drawn again identically."""
    size = out_path.stat().st_size if out_path.exists() else 0
    state_path = sidecar(out_path, "state")
    if not state_path.exists():
        if size and not recorded_before:
            raise ResumeConfigError(
                f"{out_path}: written without a saved random state, so the {backend.name!r} teacher cannot continue "
                f"it; delete {out_path} to start over"
            )
        if size:
            logger.warning("%s: no state saved with the first chunk (a kill); starting the file again", out_path)
            out_path.write_bytes(b"")
        return
    saved = json.loads(state_path.read_text(encoding="utf-8"))
    if size < saved["bytes"]:
        raise DataError(f"{out_path}: {size} bytes, shorter than the {saved['bytes']} its saved state continues")
    if size > saved["bytes"]:
        logger.warning("%s: cutting %d bytes written after the last saved state (redrawn identically)", out_path,
                       size - saved["bytes"])  # fmt: skip
        with out_path.open("r+b") as f:
            f.truncate(saved["bytes"])
    backend.restore(saved["rng"])


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
    stateful = callable(getattr(backend, "restore", None))
    run_config = {"backend": backend.name, "k": k, **(backend.run_config() if hasattr(backend, "run_config") else {})}
    if not stateful:
        run_config["chunk_size"] = chunk_size  # each chunk is seeded from its first id: chunks decide the replies
    record = sidecar(out_path, "run_config")
    recorded_before = record.exists()
    check_run_config(record, run_config, output=f"{out_path} and its sidecars {out_path.name}.*.json")
    if stateful:
        _restore_state(backend, out_path, recorded_before)
    done = finished_ids(out_path)
    todo = [r for r in records if r["id"] not in done]
    report = GenerationReport(prompts=len(records), skipped=len(records) - len(todo))
    if report.skipped:
        logger.info("%s: %d of %d prompts already done; resuming", out_path, report.skipped, len(records))
    start = time.perf_counter()
    bar = tqdm(total=len(todo), desc=f"teacher ({backend.name})", unit="prompt", disable=not progress)
    with out_path.open("ab") as f:
        for lo in range(0, len(todo), chunk_size):
            chunk = todo[lo : lo + chunk_size]
            samples = backend.generate(chunk, k)
            for r, ss in zip(chunk, samples):
                row = {**r, "samples": [s.as_sample() for s in ss], "teacher": backend.name}
                f.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
                report.samples += len(ss)
                report.tokens += sum(s.num_tokens for s in ss)
            f.flush()
            os.fsync(f.fileno())  # a finished chunk survives a crash
            if stateful:  # after the fsync: the state never runs ahead of the rows it continues
                write_json_atomic(sidecar(out_path, "state"), {"bytes": f.tell(), "rng": backend.state()})
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
