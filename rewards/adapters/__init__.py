"""Adapters that let other RL engines call the MARS router: verl (:mod:`rewards.adapters.verl`) and OpenRLHF
(:mod:`rewards.adapters.openrlhf`).

Both read the router's configuration from a YAML file (a :class:`rewards.router.MARSConfig`) named by an argument
or by the ``FASTSLOW_MARS_CONFIG`` environment variable, and keep one router per configuration in the process,
so its running normalisation statistics persist from call to call. Those statistics are per process (no
cross-rank reduction): engines call reward functions outside trl's lock-step, where a collective could hang.
Engines call reward functions from several threads at once (verl 0.9's reward loop runs each sample in its event
loop's thread pool, OpenRLHF 0.11 each query in ``asyncio.to_thread``): a router scores one call at a time under
its lock, since its statistics and the code reward's last results are shared state. Parallelism comes from the
engine's reward worker processes (verl's ``reward.num_workers``), each with its own router.

The think format the rewards read replies with comes from the config's ``think_start``/``think_end`` keys; a
config without them takes the policy tokenizer's (``tokenizer=`` in the engine's reward kwargs, or the
``FASTSLOW_TOKENIZER`` environment variable: a tokenizer object, or a name or path loaded with
:func:`train.core.loading.load_tokenizer`). With neither, building the router fails: the format is never guessed.

Length rewards (``overlong``, ``cosine_length``, ``mode_length``) count tokens, and engines hand the adapters
decoded strings only: they count with the same tokenizer (the reply re-encoded without special tokens). Without a
tokenizer such a source is off (None: it adds nothing to the total), and building the router says so.

The engines load the adapter files by path, so ``fastslow`` must be installed in their environment
(``pip install -e .``): the adapters import ``rewards`` like any other package.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from rewards.length import LengthReward
from rewards.router import MARSRouter
from train.core.loading import load_tokenizer
from train.core.modes import ThinkFormat
from train.core.sources import call_assert

logger = logging.getLogger("rewards.adapters")

CONFIG_ENV = "FASTSLOW_MARS_CONFIG"
TOKENIZER_ENV = "FASTSLOW_TOKENIZER"

# Substrings of a data source name that say which task it is (the first match wins; checked in order).
DATA_SOURCE_TASKS = (
    ("code", ("code", "apps", "taco", "humaneval", "mbpp", "leetcode", "codeforces", "primeintellect")),
    ("math", ("math", "gsm8k", "aime", "amc", "numina", "dapo", "olympiad", "deepscaler")),
)


class EngineRouter(MARSRouter):
    """A MARS router for an engine: one scoring call at a time (:attr:`lock`), and each call's raw (unnormalised)
    source values kept in :attr:`last_raw` so the adapters can report correctness next to the weighted total."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lock = threading.Lock()
        self.tokenizer: Any = None  # the policy's, when the engine names it (see get_router)
        self.last_raw: dict[tuple[str, str], list[float | None]] = {}

    def _normalise_all(self, raw: dict[tuple[str, str], list[float | None]]) -> dict[tuple[str, str], list]:
        self.last_raw = {key: list(values) for key, values in raw.items()}
        return super()._normalise_all(raw)

    def correctness_source(self, task: str) -> str | None:
        """The source that says whether a ``task`` reply is right: the one named ``accuracy``, else the task's
        first own (not shared) source."""
        names = [s.name for s in self.config.tasks.get(task, [])]
        return "accuracy" if "accuracy" in names else (names[0] if names else None)

    def score_rows(self, completions: list[str], **columns: Any) -> list[dict[str, float]]:
        """Per sample: ``score`` (the MARS total, 0.0 when no source applies), ``acc`` (the raw value of the task's
        correctness source, 0.0 when it does not apply), ``applicable`` and every source's weighted-in value (0.0
        where it does not apply), under the router's lock. Every row has the same keys."""
        with self.lock:
            tasks = self.tasks_of(len(completions), columns)
            totals, aligned, metrics = self.score_batch(completions, **columns)
            raw = self.last_raw
            self.emit(metrics, None)
        names = sorted({name for (_, name) in aligned})
        position: dict[str | None, int] = {}
        rows = []
        for i, task in enumerate(tasks):
            at = position[task] = position.get(task, -1) + 1  # index of sample i among its task's samples
            source = self.correctness_source(task) if task is not None else None
            acc = raw.get((task, source), [])[at] if source is not None else None
            row = {"score": 0.0 if totals[i] is None else float(totals[i]), "acc": float(acc or 0.0)}
            row["applicable"] = float(totals[i] is not None)
            for name in names:
                values = [v[i] for (_, n), v in aligned.items() if n == name and v[i] is not None]
                row[name] = float(values[0]) if values else 0.0
            rows.append(row)
        return rows


_ROUTERS: dict[str, EngineRouter] = {}
_LOCK = threading.Lock()


def get_router(config: str | os.PathLike | None = None, tokenizer: Any = None) -> EngineRouter:
    """The process-wide router for ``config`` (a YAML path; default: ``$FASTSLOW_MARS_CONFIG``, else defaults).

    ``tokenizer`` (default: ``$FASTSLOW_TOKENIZER``) gives the think format when the config sets none, and counts
    tokens for the length sources; it is read only when the router is built. Raises ``ValueError`` when neither
    the config nor a tokenizer gives a format.
    """
    path = config or os.environ.get(CONFIG_ENV)
    key = str(Path(path).resolve()) if path else "<defaults>"
    with _LOCK:
        if key not in _ROUTERS:
            router = EngineRouter(path) if path else EngineRouter()
            tokenizer = tokenizer if tokenizer is not None else os.environ.get(TOKENIZER_ENV) or None
            if isinstance(tokenizer, (str, os.PathLike)):
                tokenizer = load_tokenizer(tokenizer)
            router.tokenizer = tokenizer
            if router.think is None:
                router.set_think_format(think_format(tokenizer, key))
            count_tokens_with(router, tokenizer, key)
            # Engines call rewards from driver or worker processes in no fixed lock-step: a collective here could
            # deadlock, so statistics stay per process.
            router.config.sync_stats = False
            _ROUTERS[key] = router
            logger.info("MARS router for %s: tasks %s", key, sorted(router.config.tasks))
        return _ROUTERS[key]


def _token_counters(router: MARSRouter) -> list[LengthReward]:
    """The router's length rewards that count tokens and have nothing to count them with."""
    return [
        r
        for r in router.rewards.values()
        if isinstance(r, LengthReward) and r.unit == "tokens" and r.tokenizer is None
    ]


def count_tokens_with(router: MARSRouter, tokenizer: Any, where: str = "the MARS config") -> None:
    """Give ``tokenizer`` to every length reward that counts tokens without one; with none, say they are off."""
    counters = _token_counters(router)
    if not counters:
        return
    if tokenizer is None:
        logger.warning(
            "%s: length reward(s) %s count tokens, and the engine passes only text: they are OFF (score None, adding "
            "nothing) unless the policy's tokenizer is named (tokenizer=... in the reward kwargs, or $%s), or they "
            "are set to unit: chars",
            where,
            sorted(r.name for r in counters),
            TOKENIZER_ENV,
        )
        return
    for reward in counters:
        reward.tokenizer = tokenizer


def think_format(tokenizer: Any, where: str = "the MARS config") -> ThinkFormat:
    """The think format of ``tokenizer`` (an object, or a name or path to load); ``ValueError`` when there is none."""
    if tokenizer is None:
        raise ValueError(
            f"{where} sets no think format and no tokenizer was given: add think_start/think_end to the MARS config "
            "(<think> and </think> for Qwen3, [unused16] and [unused17] for openPangu), or name the policy's "
            f"tokenizer (tokenizer=... in the engine's reward kwargs, or ${TOKENIZER_ENV})"
        )
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = load_tokenizer(tokenizer)
    return ThinkFormat.from_tokenizer(tokenizer)


def task_of(data_source: str | None, router: MARSRouter, fallback: str = "general") -> str:
    """The task a data source name belongs to: a configured task of the same name, a known keyword, or
    ``fallback`` (the config's ``default_task`` when it has one)."""
    name = str(data_source or "").lower()
    if name in router.config.tasks:
        return name
    for task, words in DATA_SOURCE_TASKS:
        if task in router.config.tasks and any(w in name for w in words):
            return task
    return router.config.default_task or fallback


def plain(value: Any) -> Any:
    """A value as plain Python: numpy scalars and arrays (what pandas hands back from Parquet) become
    ``str``/``float``/lists, recursively through dicts and lists."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, str) and type(value) is not str:  # np.str_
        return str(value)
    return value


def code_tests(value: Any) -> Any:
    """Code tests as fastslow's case list: verl/PRIME/APPS/TACO-style ``{"inputs": [...], "outputs": [...]}``
    (optionally with ``fn_name``; a JSON string of it too) is converted; anything else is returned as is for the
    code reward to read (a list of ``{"input", "output"}``/``{"assert"}`` cases, or its JSON text).

    Standard-input cases: an input or output given as a list of lines is joined with newlines. Call-based cases
    (``fn_name``): each case becomes an assert that calls ``fn_name`` (a method of ``Solution`` when the program
    defines that class) with the case's arguments (a list, or one JSON value per line as PRIME stores them) and
    compares with the expected value as PRIME's checker does (a one-element list also matches its element; a
    tuple result is compared as a list).
    """
    parsed = value
    if isinstance(value, str) and value.lstrip().startswith("{"):
        try:
            parsed = json.loads(value)
        except ValueError:
            return value  # not JSON: the code reward names the problem
    parsed = plain(parsed)
    if not (isinstance(parsed, dict) and "inputs" in parsed and "outputs" in parsed):
        return value
    inputs, outputs = parsed["inputs"], parsed["outputs"]
    if not isinstance(inputs, list) or not isinstance(outputs, list) or len(inputs) != len(outputs):
        raise ValueError(
            f"code tests: 'inputs' and 'outputs' must be lists of one length, got {type(inputs).__name__} "
            f"{len(inputs) if isinstance(inputs, list) else ''} and {type(outputs).__name__} "
            f"{len(outputs) if isinstance(outputs, list) else ''}"
        )
    fn_name = parsed.get("fn_name")
    if fn_name:
        return [_call_case(str(fn_name), i, o) for i, o in zip(inputs, outputs)]
    return [{"input": _lines(i), "output": _lines(o)} for i, o in zip(inputs, outputs)]


def _lines(value: Any) -> str:
    return "\n".join(map(str, value)) if isinstance(value, list) else "" if value is None else str(value)


def _call_case(fn_name: str, args: Any, expected: Any) -> dict[str, str]:
    if isinstance(args, str):  # PRIME/LiveCodeBench: one JSON value per line
        args = [json.loads(line) for line in args.split("\n") if line.strip()]
    if isinstance(expected, str):
        try:
            expected = json.loads(expected)
        except ValueError:
            pass  # a plain string result
    return {"assert": call_assert(fn_name, args if isinstance(args, list) else [args], expected)}


def reset() -> None:
    """Forget every cached router (tests, or a config file changed on disk)."""
    with _LOCK:
        _ROUTERS.clear()
