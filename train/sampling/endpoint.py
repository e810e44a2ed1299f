"""An OpenAI-compatible chat-completions endpoint (a vLLM or SGLang server, a hosted API) as a sampler.

:class:`EndpointClient` is the one HTTP client of the project (the teacher and the judge both use it): requests from
a thread pool (``concurrency`` in flight), request starts spaced by a :class:`RateLimiter`, a timeout per request,
retries with exponential back-off (capped at ``max_backoff``, or the server's ``Retry-After``) on transport errors,
HTTP 429 and 5xx. A client error (another 4xx) or a malformed reply is not retried: asking again would not help.
A request that still fails gives None. Reasoning servers (``vllm serve --reasoning-parser``) return the think block
apart as ``reasoning_content``; the client puts it back in front of the answer with the run's think format (a client
built without one, for a caller that reads the answer only, drops it).
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from train.core.data import to_messages
from train.core.modes import Mode, ThinkFormat, _content_text, apply_mode
from train.sampling.params import SamplerConfig, SamplingParams
from train.sampling.reply import Reply

logger = logging.getLogger(__name__)


class RateLimiter:
    """At most ``rate`` request starts per second across threads, evenly spaced (None: no limit)."""

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

    def __getstate__(self) -> dict[str, Any]:  # a lock does not pickle; a copy gets its own
        return {"interval": self.interval}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(1.0 / state["interval"] if state["interval"] else None)


class EndpointClient:
    """Chat completions from ``{config.base_url}/chat/completions``, concurrent, rate-limited and retried.

    ``config`` supplies ``model`` (the served name), ``base_url``, ``api_key_env``, ``timeout``, ``max_retries``,
    ``backoff``, ``max_backoff``, ``concurrency`` and ``requests_per_second``; ``think`` is the run's think format
    (None: a separate ``reasoning_content`` is dropped and the reply is the content alone).
    """

    def __init__(self, config: SamplerConfig, think: ThinkFormat | None) -> None:
        self.config, self.think = config, think
        self.url = config.base_url.rstrip("/") + "/chat/completions"
        self.limiter = RateLimiter(config.requests_per_second)

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.config.api_key_env) if self.config.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def chat(
        self,
        messages: list[dict[str, Any]],
        temperature: float = 0.0,
        top_p: float = 1.0,
        max_tokens: int = 256,
        seed: int | None = None,
    ) -> Reply | None:
        """One reply, or None when every attempt failed or the request was refused (logged)."""
        cfg = self.config
        payload = {
            "model": cfg.model,
            "messages": messages,
            "temperature": temperature,
            "top_p": top_p,
            "max_tokens": max_tokens,
        }
        if seed is not None:
            payload["seed"] = seed
        data = json.dumps(payload).encode()
        reason = "no attempt"
        for attempt in range(cfg.max_retries + 1):
            wait = min(cfg.backoff * 2**attempt, cfg.max_backoff)
            self.limiter.wait()
            try:
                request = urllib.request.Request(self.url, data=data, headers=self._headers(), method="POST")
                with urllib.request.urlopen(request, timeout=cfg.timeout) as response:
                    body = json.loads(response.read().decode())
                return self._reply(body)
            except urllib.error.HTTPError as exc:
                if exc.code != 429 and exc.code < 500:  # a bad request won't get better by asking again
                    logger.warning("endpoint refused the request (HTTP %d): %s", exc.code, _error_body(exc))
                    return None
                retry_after = exc.headers.get("Retry-After") if exc.headers else None
                if retry_after and retry_after.isdigit():
                    wait = min(float(retry_after), cfg.max_backoff)
                reason = f"HTTP {exc.code}"
            except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as exc:
                reason = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
            except (ValueError, KeyError, IndexError, TypeError) as exc:  # the server answered, with nonsense
                logger.warning("endpoint reply malformed: %s: %s", type(exc).__name__, exc)
                return None
            if attempt < cfg.max_retries:
                logger.info(
                    "endpoint request failed (%s); retry %d/%d in %.2fs", reason, attempt + 1, cfg.max_retries, wait
                )
                time.sleep(wait)
        logger.warning("endpoint request failed after %d attempts (%s)", cfg.max_retries + 1, reason)
        return None

    def chat_many(
        self,
        conversations: Sequence[list[dict[str, Any]]],
        temperature: float = 0.0,
        top_p: float = 1.0,
        max_tokens: int = 256,
        seed: int | None = None,
    ) -> list[Reply | None]:
        """:meth:`chat` for each conversation, ``concurrency`` at a time, in order.

        With a ``seed``, conversation ``j`` is sent with ``seed + j``: the same request twice still gets two samples.
        """
        if not conversations:
            return []
        workers = min(self.config.concurrency, len(conversations))
        seeds = [None if seed is None else seed + j for j in range(len(conversations))]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="endpoint") as pool:
            jobs = [pool.submit(self.chat, m, temperature, top_p, max_tokens, s) for m, s in zip(conversations, seeds)]
            return [j.result() for j in jobs]

    def _reply(self, body: dict[str, Any]) -> Reply:
        choice = body["choices"][0]
        message = choice["message"]
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise TypeError(f"message content is {type(content).__name__}")
        text = _content_text(content)
        reasoning = message.get("reasoning_content") or message.get("reasoning")
        if reasoning and self.think is not None:
            text = self.think.format(text, reasoning)
        usage = body.get("usage") or {}
        num_tokens = int(usage.get("completion_tokens") or len(text.split()))
        return Reply(text, num_tokens, "length" if choice.get("finish_reason") == "length" else "stop")


def _error_body(exc: urllib.error.HTTPError) -> str:
    try:
        return exc.read().decode(errors="replace")[:300]
    except Exception:  # the body is only for the log line
        return ""


class EndpointSampler:
    """A :class:`~train.sampling.params.Sampler` over an :class:`EndpointClient`: one request per reply.

    Greedy decoding sends one request per prompt and repeats its reply. A reply lost after its retries is dropped,
    so a prompt may get fewer than ``n`` replies (the teacher keeps the ones that came back).
    """

    def __init__(self, config: SamplerConfig, think: ThinkFormat) -> None:
        self.client = EndpointClient(config, think)
        self.think = think

    def sample(
        self, prompts: Sequence[Any], params: SamplingParams, mode: Mode | str | None = None
    ) -> list[list[Reply]]:
        reps = 1 if params.greedy else params.n
        conversations = [apply_mode(to_messages(p), mode) if mode is not None else to_messages(p) for p in prompts]
        jobs = [c for c in conversations for _ in range(reps)]
        got = self.client.chat_many(jobs, params.temperature, params.top_p, params.max_new_tokens, params.seed)
        out = []
        for i in range(len(prompts)):
            replies = [r for r in got[i * reps : (i + 1) * reps] if r is not None]
            out.append(replies * (params.n // reps))
        return out
