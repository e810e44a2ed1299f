"""An OpenAI-compatible chat-completions endpoint (a vLLM or SGLang server, a hosted API) as a sampler.

:class:`EndpointClient` is the one HTTP client of the project (the teacher and the judge both use it): requests from
a thread pool (``concurrency`` in flight), request starts spaced by a :class:`RateLimiter`, a timeout per request,
retries with exponential back-off (capped at ``max_backoff``, or the server's ``Retry-After``) on transport errors,
HTTP 429 and 5xx. A client error (another 4xx) or a malformed reply is not retried: asking again would not help.
A request that still fails gives None. The timeout bounds each attempt whole (connecting, sending, reading the
headers and the body: a server trickling a byte at a time cannot hold it, see :class:`_Deadline`), and
``batch_budget`` bounds a :meth:`EndpointClient.chat_many` batch whole. Reasoning servers (``vllm serve
--reasoning-parser``) return the think block apart as ``reasoning_content``; the client puts it back in front of the
answer with the run's think format (a client built without one, for a caller that reads the answer only, drops it).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import math
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
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


class _Deadline:
    """Shuts down the sockets of one request attempt when its time is up.

    A socket timeout is per read: a server sending a byte every second never trips a 2 s timeout, and one request
    held its thread for minutes. The timer here makes the timeout a limit on the whole attempt.
    """

    def __init__(self, seconds: float) -> None:
        self.lock = threading.Lock()
        self.expired = False
        self.sockets: list[socket.socket] = []
        self.timer = threading.Timer(seconds, self.expire)
        self.timer.daemon = True
        self.timer.start()

    def expire(self) -> None:
        with self.lock:
            self.expired = True
            for sock in self.sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)  # wakes a read blocked in another thread

    def watch(self, sock: socket.socket) -> None:
        with self.lock:
            if self.expired:  # it ran out while connecting
                sock.close()
                raise TimeoutError("the request's deadline passed")
            self.sockets.append(sock)

    def cancel(self) -> None:
        self.timer.cancel()


class _HTTPConnection(http.client.HTTPConnection):
    deadline: _Deadline

    def connect(self) -> None:
        super().connect()
        self.deadline.watch(self.sock)


class _HTTPSConnection(http.client.HTTPSConnection):
    deadline: _Deadline

    def connect(self) -> None:
        super().connect()
        self.deadline.watch(self.sock)


def _watched(cls: type[http.client.HTTPConnection], deadline: _Deadline) -> Callable[..., http.client.HTTPConnection]:
    def make(host: str, **kwargs: Any) -> http.client.HTTPConnection:
        connection = cls(host, **kwargs)
        connection.deadline = deadline  # type: ignore[attr-defined]
        return connection

    return make


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self.deadline = deadline

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_watched(_HTTPConnection, self.deadline), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self.deadline = deadline

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        kwargs: dict[str, Any] = {"context": self._context}  # type: ignore[attr-defined]
        if hasattr(self, "_check_hostname"):  # Python < 3.12
            kwargs["check_hostname"] = self._check_hostname
        return self.do_open(_watched(_HTTPSConnection, self.deadline), req, **kwargs)


def _open(request: urllib.request.Request, seconds: float) -> bytes:
    """The body of the reply to ``request``, all of it within ``seconds`` (``TimeoutError`` otherwise)."""
    deadline = _Deadline(seconds)
    try:
        opener = urllib.request.build_opener(_HTTPHandler(deadline), _HTTPSHandler(deadline))
        with opener.open(request, timeout=seconds) as response:
            body = response.read()
    except (OSError, http.client.HTTPException):
        if deadline.expired:
            raise TimeoutError(f"no complete reply within {seconds:.2f}s") from None
        raise
    finally:
        deadline.cancel()
    if deadline.expired:  # a reply without a length ends where the socket was shut: incomplete
        raise TimeoutError(f"no complete reply within {seconds:.2f}s")
    return body


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
        extra: dict[str, Any] | None = None,
    ) -> Reply | None:
        """One reply, or None when every attempt failed or the request was refused (logged). ``extra`` goes into
        the request body as it is (``{"chat_template_kwargs": {...}}`` for a vLLM server)."""
        return self._chat(messages, temperature, top_p, max_tokens, seed, math.inf, extra)[0]

    def _chat(
        self,
        messages: list[dict[str, Any]],
        temperature: float,
        top_p: float,
        max_tokens: int,
        seed: int | None,
        until: float,
        extra: dict[str, Any] | None = None,
    ) -> tuple[Reply | None, bool]:
        """The reply (or None), and whether it was given up because the monotonic time ``until`` came."""
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
        payload.update(extra or {})
        data = json.dumps(payload).encode()
        reason = "no attempt"
        for attempt in range(cfg.max_retries + 1):
            wait_s = min(cfg.backoff * 2**attempt, cfg.max_backoff)
            self.limiter.wait()
            seconds = min(cfg.timeout, until - time.monotonic())
            if seconds <= 0:
                return None, True
            try:
                request = urllib.request.Request(self.url, data=data, headers=self._headers(), method="POST")
                body = json.loads(_open(request, seconds).decode())
                return self._reply(body), False
            except urllib.error.HTTPError as exc:
                if exc.code != 429 and exc.code < 500:  # a bad request won't get better by asking again
                    logger.warning("endpoint refused the request (HTTP %d): %s", exc.code, _error_body(exc))
                    return None, False
                retry_after = exc.headers.get("Retry-After") if exc.headers else None
                if retry_after and retry_after.isdigit():
                    wait_s = min(float(retry_after), cfg.max_backoff)
                reason = f"HTTP {exc.code}"
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:  # TimeoutError is an OSError
                reason = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
            except (ValueError, KeyError, IndexError, TypeError) as exc:  # the server answered, with nonsense
                logger.warning("endpoint reply malformed: %s: %s", type(exc).__name__, exc)
                return None, False
            if attempt < cfg.max_retries:
                if time.monotonic() + wait_s >= until:
                    return None, True
                logger.info(
                    "endpoint request failed (%s); retry %d/%d in %.2fs", reason, attempt + 1, cfg.max_retries, wait_s
                )
                time.sleep(wait_s)
        logger.warning("endpoint request failed after %d attempts (%s)", cfg.max_retries + 1, reason)
        return None, False

    def chat_many(
        self,
        conversations: Sequence[list[dict[str, Any]]],
        temperature: float = 0.0,
        top_p: float = 1.0,
        max_tokens: int = 256,
        seed: int | None = None,
        extra: dict[str, Any] | None = None,
    ) -> list[Reply | None]:
        """:meth:`chat` for each conversation, ``concurrency`` at a time, in order.

        With a ``seed``, conversation ``j`` is sent with ``seed + j``: the same request twice still gets two samples.
        With ``batch_budget``, the whole batch returns within it: requests not finished by then (waiting ones never
        start) are given up, their replies None, and their number logged.
        """
        if not conversations:
            return []
        budget = self.config.batch_budget
        until = math.inf if budget is None else time.monotonic() + budget
        workers = min(self.config.concurrency, len(conversations))
        seeds = [None if seed is None else seed + j for j in range(len(conversations))]
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="endpoint")
        try:
            jobs = [
                pool.submit(self._chat, m, temperature, top_p, max_tokens, s, until, extra)
                for m, s in zip(conversations, seeds)
            ]
            # Each attempt ends by ``until`` on its own; the second of grace is for the threads to notice.
            wait(jobs, timeout=None if budget is None else budget + 1.0)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        results = [j.result() if j.done() and not j.cancelled() else (None, True) for j in jobs]
        given_up = sum(late for _, late in results)
        if given_up:
            logger.warning(
                "%d of %d endpoint requests unfinished within the batch budget (%.1fs): their replies are None",
                given_up,
                len(jobs),
                budget,
            )
        return [reply for reply, _ in results]

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
    ``chat_template_kwargs`` (e.g. ``{"enable_thinking": False}``, an empty think block prefilled) are sent with each
    request for the server's chat template, as vLLM's server takes them; none are sent when empty.
    """

    def __init__(self, config: SamplerConfig, think: ThinkFormat) -> None:
        self.client = EndpointClient(config, think)
        self.think = think
        self.chat_template_kwargs: dict[str, Any] = {}

    def sample(
        self, prompts: Sequence[Any], params: SamplingParams, mode: Mode | str | None = None
    ) -> list[list[Reply]]:
        reps = 1 if params.greedy else params.n
        conversations = [apply_mode(to_messages(p), mode) if mode is not None else to_messages(p) for p in prompts]
        jobs = [c for c in conversations for _ in range(reps)]
        extra = {"chat_template_kwargs": self.chat_template_kwargs} if self.chat_template_kwargs else None
        got = self.client.chat_many(
            jobs, params.temperature, params.top_p, params.max_new_tokens, params.seed, extra=extra
        )
        out = []
        for i in range(len(prompts)):
            replies = [r for r in got[i * reps : (i + 1) * reps] if r is not None]
            out.append(replies * (params.n // reps))
        return out
