"""A node that forwards to an OpenAI-compatible HTTP server: ``vllm serve``, SGLang, llama.cpp's
server, Ollama's ``/v1``, or another operator's gateway.

Why it looks the way it does:

* **aiohttp with one pooled session** (keep-alive connections, bounded by ``max_connections``):
  the proxy hop must add well under a millisecond, so no connection is opened per request and no
  request body is validated twice (requests are already validated wire types; they are dumped once
  with ``model_dump_json``).
* **SSE is relayed as it arrives, as the upstream's bytes**: bytes are split into lines
  incrementally, each ``data:`` payload is forwarded as a :class:`~blueprint.llm.raw.RawChunk`
  (no parse and re-serialisation per chunk; usage is read from the one event that carries it, and
  the model name is swapped in the bytes), comments (``: keep-alive``) are ignored, ``[DONE]`` ends
  the stream. Error events are recognised (they have no ``choices``) and become our errors.
* **A hung backend never hangs us, a long stream is never cut**: ``connect_timeout_s`` bounds the
  connect; ``timeout_s`` bounds a non-streamed answer, and for a stream the wait for its first
  event and each silence between two reads after it, never the whole stream (a ten-minute stream
  that keeps producing runs to its end).
* **Errors become our types** so the balancer can retry what is retryable (5xx, connection errors,
  429) and report the rest; once a stream has yielded its first chunk, a failure is a
  :class:`StreamInterruptedError` (never retried: the client already has tokens).
* **What a backend sends is bounded** (it is a peer we do not control; one that answers without
  end must not take the daemon's memory): a whole answer by ``max_answer_bytes``, one SSE event by
  ``max_event_bytes``, ``/models`` and ``/metrics`` by :data:`PROBE_MAX_BYTES`. Reading stops as
  soon as a bound is crossed, the connection is closed, and the request fails with a
  :class:`BackendError` that names the bound (mid-stream: a :class:`StreamInterruptedError`). A
  stream's total is not bounded: a long stream of events is legitimate.

Engine options (``NodeConfig.options``): ``first_chunk_timeout_s`` (default ``timeout_s``),
``read_timeout_s`` (longest silence between two reads of a stream; default ``timeout_s``),
``max_connections`` (default ``max_batch_size + max_queue``), ``keepalive_s`` (default 4, below
uvicorn's 5 s so we never reuse a connection the server is closing), ``health_timeout_s`` (2),
``health_path`` (``/health``), ``metrics_path`` (``/metrics``), ``metrics_max_age_s`` (30: older
backend metrics are ignored), ``max_answer_bytes`` (256 MiB: a non-streamed answer or an
error body; 2,048 embeddings of 4,096 dimensions as JSON text are about 180 MiB),
``max_event_bytes`` (8 MiB: one SSE event), ``stream_usage`` (true: always ask the backend for
usage in streams so tokens can be counted; it is passed on only if the caller asked), and the feature flags
``embeddings``, ``tools``, ``json_mode``, ``structured_outputs``, ``reasoning``, ``logprobs``
(default false: what the backend serves is not discoverable from ``/v1/models``; they decide what
``/v1/models`` declares, while requests are passed on as they came: ``tools``, ``tool_choice``,
``response_format``, ``reasoning``, and the backend's ``tool_calls``, ``reasoning`` and usage
details back).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import aiohttp
import structlog
from pydantic import BaseModel, ValidationError

from blueprint import safejson
from blueprint.bounded import KIB, MIB, AnswerTooLargeError, read_bounded, size_text
from blueprint.errors import (
    AnswerTooLargeBackendError,
    BackendError,
    BackendTimeoutError,
    BlueprintError,
    ContextLengthExceededError,
    InvalidRequestError,
    ModelNotFoundError,
    OverloadedError,
    StreamInterruptedError,
)
from blueprint.llm.client import Capabilities, LlmClient, MetricsTracker, NodeMetrics
from blueprint.llm.config import NodeConfig
from blueprint.llm.engines._http1 import DEFAULT_MAX_ANSWER_BYTES, Http1Pool
from blueprint.llm.raw import RELAY_RAW, ChunkSink, RawChunk, read_answer
from blueprint.llm.types import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Completion,
    CompletionChunk,
    CompletionRequest,
    EmbeddingRequest,
    EmbeddingResponse,
    ModelInfo,
    StreamOptions,
)

log = structlog.get_logger(__name__)

ResponseT = TypeVar("ResponseT", bound=BaseModel)
ChunkT = TypeVar("ChunkT", ChatCompletionChunk, CompletionChunk)

_CONTEXT_HINTS = ("context length", "context_length", "maximum context", "too many tokens",
                  "prompt is too long", "exceeds the context")
#: vLLM's gauges, current and pre-0.10 spelling of the KV-cache one.
#: How long the end of a stream's body is awaited, after its ``[DONE]``, for the connection's reuse.
_END_WAIT_S = 5.0
_RUNNING = "vllm:num_requests_running"
_WAITING = "vllm:num_requests_waiting"
_KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
#: vLLM's prefix-cache counters (tokens), current and V0 spelling.
_PREFIX_HITS = ("vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total")
_PREFIX_QUERIES = ("vllm:prefix_cache_queries_total", "vllm:gpu_prefix_cache_queries_total")

#: One SSE event (``options.max_event_bytes``): a chunk is a few hundred bytes, one with logprobs
#: a few KiB; a backend that sends a whole answer as one event stays far below this.
DEFAULT_MAX_EVENT_BYTES = 8 * MIB
#: ``/v1/models`` and ``/metrics`` answers: a few KiB from vLLM; a backend serving many models or
#: exporting histograms per model stays below this.
PROBE_MAX_BYTES = 4 * MIB
#: The smallest bound an operator may set (below it no real answer fits).
_MIN_BOUND = KIB
_EVENT = "an SSE event"
#: The node option that sets each bound a backend's answer can cross.
_BOUND_OPTIONS = {"an answer": "max_answer_bytes", _EVENT: "max_event_bytes"}


# ------------------------------------------------------------------------------------ helpers


def _error_message(body: bytes) -> tuple[str, str | None]:
    """The message and code of an error body in OpenAI's shape (``{"error": {...}}``), vLLM's
    older flat shape (``{"object": "error", "message": ...}``) or plain text."""
    try:
        data = safejson.loads(body)
    except ValueError:
        return body.decode(errors="replace").strip()[:500] or "no error message", None
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            message = str(err.get("message") or err.get("detail") or err)[:500]
            code = err.get("code") or err.get("type")
            return message, str(code) if code is not None else None
        if isinstance(err, str):
            return err[:500], None
    return str(data)[:500], None


def _retry_after(value: str | None) -> float:
    """Seconds from a Retry-After header (delta seconds or an HTTP date); 1 s when absent."""
    if not value:
        return 1.0
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return 1.0
    return max(0.0, when.timestamp() - time.time())


def map_http_error(status: int, body: bytes, retry_after: str | None, model: str) -> BlueprintError:
    """Our error for a backend's non-2xx answer (or an error event inside a stream)."""
    message, code = _error_message(body)
    lowered = message.lower()
    if status == 413 or code == "context_length_exceeded" or any(h in lowered for h in _CONTEXT_HINTS):
        return ContextLengthExceededError(message)
    if status == 429:
        return OverloadedError(f"Backend overloaded: {message}", retry_after=_retry_after(retry_after))
    if status == 404:
        if "model" in lowered or code == "model_not_found":
            return ModelNotFoundError(model)
        return BackendError(f"Backend endpoint not found (check base_url): {message}")
    if status in (400, 422):
        return InvalidRequestError(message)
    if status in (408, 504):
        return BackendTimeoutError(f"Backend timed out ({status}): {message}")
    return BackendError(f"Backend answered {status}: {message}")


def parse_prometheus(text: str, names: set[str]) -> dict[str, list[float]]:
    """The samples of the wanted metric names in a Prometheus text exposition (labels ignored:
    a backend with several engines reports one sample per engine)."""
    found: dict[str, list[float]] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        brace = line.find("{")
        if brace >= 0:
            name = line[:brace]
            end = line.rfind("}")
            rest = line[end + 1:] if end > brace else ""
        else:
            name, _, rest = line.partition(" ")
        if name not in names:
            continue
        fields = rest.split()
        if not fields:
            continue
        try:
            found.setdefault(name, []).append(float(fields[0]))
        except ValueError:
            continue
    return found


class _SseReader:
    """Incremental SSE parser: feed bytes, get complete ``data`` payloads (multi-line data joined
    by newlines as the SSE spec says; comments and other fields ignored). Events are cut at blank
    lines with one ``split`` per read, the common one-line ``data:`` event taking no further work.
    An event still arriving is kept in pieces, its line ends already made ``\n``, and only the new
    bytes are searched for its end: an upstream trickling one long event in small reads costs
    linear work, not a re-scan of all it sent before at every read. An event still unfinished past
    ``max_event`` bytes raises :class:`AnswerTooLargeError` (a backend that never ends one would
    otherwise grow the buffer without end)."""

    __slots__ = ("_held_cr", "_max_event", "_parts", "_size")

    def __init__(self, max_event: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self._parts: list[bytes] = []  # the event still arriving, in pieces
        self._size = 0
        self._held_cr = False  # the last read ended in "\r": maybe half of a CRLF
        self._max_event = max_event

    def feed(self, chunk: bytes) -> list[bytes]:
        if self._held_cr:
            chunk = b"\r" + chunk
            self._held_cr = False
        if chunk.find(b"\r") >= 0:  # find, not in: see blueprint.llm.raw
            if chunk.endswith(b"\r"):
                chunk = chunk[:-1]
                self._held_cr = True
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if not chunk:
            return []
        parts = self._parts
        if parts:
            parts.append(chunk)
            # A blank line in the new bytes, or one that straddles the two reads?
            if chunk.find(b"\n\n") < 0 and not (chunk[0] == 10 and parts[-2].endswith(b"\n")):
                self._size += len(chunk)
                if self._size > self._max_event:
                    raise AnswerTooLargeError(self._max_event, _EVENT)
                return []
            buffer = b"".join(parts)
        else:
            buffer = chunk
        blocks = buffer.split(b"\n\n")
        rest = blocks.pop()  # what follows the last blank line: an event still arriving
        if rest:
            self._parts = [rest]
            self._size = len(rest)
            if self._size > self._max_event and not blocks:  # (the events before it go first)
                raise AnswerTooLargeError(self._max_event, _EVENT)
        elif parts:
            self._parts = []
            self._size = 0
        events = []
        for block in blocks:
            if block.startswith(b"data:") and block.find(b"\n") < 0:
                events.append(block[5:].lstrip(b" "))
            elif block:
                event = _event_data(block)
                if event is not None:
                    events.append(event)
        return events

    def flush(self) -> list[bytes]:
        """Whatever a server left without the final blank line."""
        buffer = b"".join(self._parts)
        self._parts, self._size, self._held_cr = [], 0, False
        if len(buffer) > self._max_event:
            raise AnswerTooLargeError(self._max_event, _EVENT)
        event = _event_data(buffer.strip(b"\n")) if buffer else None
        return [event] if event is not None else []


def _event_data(block: bytes) -> bytes | None:
    """The data of one event block (its ``data:`` lines joined by newlines), None without any."""
    data = [line[5:].lstrip(b" ") for line in block.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(data) if data else None


class _StreamState:
    """One stream's reading state: usage and token counts, the first token, the end. Shared by
    the generator and, while it relays, by the read callback."""

    __slots__ = ("chunk_type", "client", "completion_tokens", "done", "first_at", "model_bytes",
                 "prompt_tokens", "saw_usage", "started", "wants_usage")

    def __init__(self, client: OpenAIHttpClient, chunk_type: type[BaseModel], wants_usage: bool,
                 started: float) -> None:
        self.client = client
        self.chunk_type = chunk_type
        self.model_bytes = client._model_bytes
        self.wants_usage = wants_usage
        self.started = started
        self.first_at: float | None = None
        self.prompt_tokens = self.completion_tokens = 0
        self.saw_usage = self.done = False

    def take(self, payload: bytes) -> RawChunk | None:
        """One event's payload as the chunk to pass on; None for ``[DONE]`` (which ends the
        stream) and for a usage-only event asked for only to count tokens. An error event raises."""
        if payload == b"[DONE]":
            self.done = True
            return None
        chunk = self.client._raw_chunk(payload, self.chunk_type, self.model_bytes,  # type: ignore[type-var]
                                       streamed=self.first_at is not None)
        usage = chunk.usage
        if usage is not None:
            self.saw_usage = True
            self.prompt_tokens = usage.prompt_tokens
            self.completion_tokens = usage.completion_tokens
            if not self.wants_usage and not chunk.has_choices:
                return None  # we asked for usage only to count tokens
        elif not self.saw_usage and chunk.has_choices:
            self.completion_tokens += 1
        if self.first_at is None:
            self.first_at = time.perf_counter()
            self.client._tracker.first_token(self.started)
        return chunk


class _Relay:
    """The read callback of a relaying stream (see ``OpenAIHttpClient._relay``)."""

    __slots__ = ("conn", "error", "gap_s", "pending", "reader", "sink", "state")

    def __init__(self, conn: Any, reader: _SseReader, state: _StreamState, sink: ChunkSink,
                 pending: list[bytes], gap_s: float) -> None:
        self.conn, self.reader, self.state, self.sink = conn, reader, state, sink
        self.pending = pending
        self.gap_s = gap_s
        self.error: BaseException | None = None

    def on_data(self) -> bool:
        """Hand over every complete event read so far; True to keep relaying."""
        state, sink = self.state, self.sink
        try:
            events = self.reader.feed(self.conn.take_body())
            if self.pending:
                events = self.pending + events
                self.pending = []
            for payload in events:
                chunk = state.take(payload)
                if state.done:
                    sink.end()  # the client's answer is whole: it ends with this write
                    return False
                if chunk is not None:
                    sink.send(chunk)
        except Exception as exc:  # an error event, or an event past its bound: the generator raises it
            sink.flush()  # the chunks before it, then the error
            self.error = exc
            return False
        if sink.flush():  # congested: the generator yields what follows, at the client's pace
            return False
        self.conn.arm(self.gap_s)
        return True


# ------------------------------------------------------------------------------------ client


class OpenAIHttpClient(LlmClient):
    """One node backed by an OpenAI-compatible server at ``config.base_url`` (up to ``/v1``)."""

    def __init__(self, config: NodeConfig) -> None:
        if not config.base_url:
            raise InvalidRequestError(f"Node {config.node_name!r}: the openai engine needs base_url "
                                      "(e.g. http://127.0.0.1:8000/v1).")
        opts = config.options
        self.name = config.node_name
        self.config = config
        self.base_url = config.base_url.rstrip("/")
        self.root_url = self.base_url[:-3] if self.base_url.endswith("/v1") else self.base_url
        self._served_model = config.served_model or config.model
        #: How the model is named in a compact JSON chunk: ours, and the backend's.
        self._model_bytes = b'"model":' + json.dumps(config.model).encode()
        self._served_bytes = b'"model":' + json.dumps(self._served_model).encode()
        # timeout_s bounds a non-streamed answer, and for a stream the wait for its first event
        # and every silence after it; never a whole stream (one that keeps producing runs on).
        self._first_chunk_timeout_s = float(opts.get("first_chunk_timeout_s", config.timeout_s))
        read_timeout = float(opts.get("read_timeout_s", config.timeout_s))
        self._timeout_s = config.timeout_s
        self._read_timeout_s = read_timeout
        self._timeout = aiohttp.ClientTimeout(total=config.timeout_s, sock_connect=config.connect_timeout_s)
        self._health_timeout = aiohttp.ClientTimeout(total=float(opts.get("health_timeout_s", 2.0)))
        self._health_path = str(opts.get("health_path", "/health"))
        self._metrics_path = str(opts.get("metrics_path", "/metrics"))
        self._metrics_max_age_s = float(opts.get("metrics_max_age_s", 30.0))
        self._max_connections = int(opts.get("max_connections", config.max_batch_size + config.max_queue))
        self._keepalive_s = float(opts.get("keepalive_s", 4.0))
        self._stream_usage = bool(opts.get("stream_usage", True))
        self._max_answer_bytes = _byte_bound(config, "max_answer_bytes", DEFAULT_MAX_ANSWER_BYTES)
        self._max_event_bytes = _byte_bound(config, "max_event_bytes", DEFAULT_MAX_EVENT_BYTES)
        self._capacity = config.max_batch_size + config.max_queue
        self._capabilities = Capabilities(
            embeddings=bool(opts.get("embeddings", False)), tools=bool(opts.get("tools", False)),
            json_mode=bool(opts.get("json_mode", False)), logprobs=bool(opts.get("logprobs", False)),
            structured_outputs=bool(opts.get("structured_outputs", False)),
            reasoning=bool(opts.get("reasoning", False)), max_concurrency=config.max_batch_size,
        )
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if config.api_key:
            self._headers["Authorization"] = f"Bearer {config.api_key}"
        self._session: aiohttp.ClientSession | None = None  # probes: health, models, metrics
        #: The hot path (chat and completion POSTs): lean keep-alive connections.
        self._pool = Http1Pool(self.base_url, headers=self._headers, keepalive_s=self._keepalive_s,
                               connect_timeout_s=config.connect_timeout_s,
                               max_answer_bytes=self._max_answer_bytes)
        self._tracker = MetricsTracker()
        self._backend_info: dict[str, Any] = {}
        self._ready = False
        self._backend_running = 0
        self._backend_waiting = 0
        self._backend_kv: float | None = None
        self._backend_prefix: tuple[float, float] | None = None
        self._backend_metrics_at: float | None = None
        self._model_info = self._build_model_info()

    # -------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Open the connection pool and read ``/v1/models``. A backend that is down at start is
        not fatal: the node reports not ready and the balancer's health checks find it later."""
        self._ensure_session()
        try:
            await self.refresh_models()
        except BlueprintError as exc:
            log.warning("openai_backend_models_unreadable", node=self.name, error=str(exc))

    async def close(self) -> None:
        self._pool.close()
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _ensure_session(self) -> aiohttp.ClientSession:
        session = self._session
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=0,
                                             keepalive_timeout=self._keepalive_s, ttl_dns_cache=300)
            session = aiohttp.ClientSession(connector=connector, timeout=self._timeout,
                                            headers=self._headers, raise_for_status=False)
            self._session = session
        return session

    # -------------------------------------------------------------------------- descriptors

    def _build_model_info(self) -> ModelInfo:
        cfg = self.config
        context = cfg.context_length or self._backend_info.get("max_model_len")
        endpoints: list[Any] = ["chat", "completion"]
        if self._capabilities.embeddings:
            endpoints.append("embedding")
        fields: dict[str, Any] = {"supported_features": self._capabilities.features(),
                                  "is_ready": self._ready, "endpoints": endpoints}
        created = self._backend_info.get("created")
        if isinstance(created, int):
            fields["created"] = created
        return cfg.model_card(context_length=context if isinstance(context, int) and context > 0 else None,
                              **fields)

    def models(self) -> list[ModelInfo]:
        return [self._model_info]

    def capabilities(self) -> Capabilities:
        return self._capabilities

    def metrics(self) -> NodeMetrics:
        """Our own counters, merged with the backend's gauges when they are fresh: in flight is
        the larger of our in-flight count and the backend's running count (the backend may serve
        other clients too; ours is never stale), queued is the backend's waiting count."""
        snap = self._tracker.snapshot()
        at = self._backend_metrics_at
        if at is not None and time.monotonic() - at <= self._metrics_max_age_s:
            snap.in_flight = max(snap.in_flight, self._backend_running)
            snap.queued = self._backend_waiting
            snap.kv_cache_usage = self._backend_kv
            if self._backend_prefix is not None:
                snap.prefix_cache_hits, snap.prefix_cache_queries = self._backend_prefix
        return snap

    # -------------------------------------------------------------------------- backend probes

    async def refresh_models(self) -> list[ModelInfo]:
        """Read ``/v1/models`` and merge what the backend says about our model (vLLM's
        ``max_model_len``) with the node config (the config wins)."""
        session = self._ensure_session()
        try:
            async with session.get(f"{self.base_url}/models", timeout=self._health_timeout) as resp:
                body = await read_bounded(resp, PROBE_MAX_BYTES, "a /models answer")
                if resp.status >= 400:
                    self._ready = False
                    raise map_http_error(resp.status, body, resp.headers.get("Retry-After"),
                                         self.config.model)
        except (TimeoutError, aiohttp.ClientError, AnswerTooLargeError) as exc:
            self._ready = False
            self._model_info = self._build_model_info()
            if isinstance(exc, AnswerTooLargeError):
                raise self._too_large(exc) from exc
            raise BackendError(f"Cannot read {self.base_url}/models: {exc!r}") from exc
        try:
            entries = safejson.loads(body).get("data") or []
        except (ValueError, AttributeError) as exc:
            raise BackendError(f"{self.base_url}/models answered malformed JSON") from exc
        entry = next((e for e in entries if isinstance(e, dict) and e.get("id") == self._served_model), None)
        if entry is None:
            self._ready = False
            known = [e.get("id") for e in entries if isinstance(e, dict)]
            log.warning("openai_backend_model_missing", node=self.name, model=self._served_model, known=known)
        else:
            self._backend_info = entry
            self._ready = True
        self._model_info = self._build_model_info()
        return self.models()

    async def health_check(self) -> bool:
        """A cheap GET of ``/health`` (falling back to ``/v1/models`` where there is none)."""
        session = self._ensure_session()
        try:
            async with session.get(self.root_url + self._health_path, timeout=self._health_timeout) as resp:
                if resp.status == 404:
                    async with session.get(f"{self.base_url}/models", timeout=self._health_timeout) as alt:
                        healthy = alt.status == 200
                else:
                    healthy = resp.status == 200
        except (TimeoutError, aiohttp.ClientError):
            healthy = False
        if healthy != self._ready:
            self._ready = healthy
            self._model_info = self._build_model_info()
        return healthy

    async def refresh_backend_metrics(self) -> bool:
        """Read vLLM's Prometheus ``/metrics`` (server root) into our node metrics: running,
        waiting and KV-cache use, summed (KV: the fullest engine) over the backend's engines.
        Returns whether any of them was found; backends without them are fine."""
        session = self._ensure_session()
        try:
            async with session.get(self.root_url + self._metrics_path, timeout=self._health_timeout) as resp:
                if resp.status != 200:
                    return False
                body = await read_bounded(resp, PROBE_MAX_BYTES, "a /metrics answer")
        except (TimeoutError, aiohttp.ClientError):
            return False
        except AnswerTooLargeError as exc:
            self._too_large(exc)  # logged; the node's own counters stand
            return False
        samples = parse_prometheus(body.decode(errors="replace"),
                                   {_RUNNING, _WAITING, *_KV_USAGE, *_PREFIX_HITS, *_PREFIX_QUERIES})
        if not samples:
            return False
        self._backend_running = int(sum(samples.get(_RUNNING, ())))
        self._backend_waiting = int(sum(samples.get(_WAITING, ())))
        kv = samples.get(_KV_USAGE[0]) or samples.get(_KV_USAGE[1])
        self._backend_kv = max(kv) if kv else None
        hits = samples.get(_PREFIX_HITS[0]) or samples.get(_PREFIX_HITS[1])
        queries = samples.get(_PREFIX_QUERIES[0]) or samples.get(_PREFIX_QUERIES[1])
        self._backend_prefix = (sum(hits), sum(queries)) if hits and queries else None
        self._backend_metrics_at = time.monotonic()
        return True

    # -------------------------------------------------------------------------- requests

    def _prepare(self, request: Any, *, stream: bool) -> tuple[bytes, bool]:
        """The body to send: our model id swapped for the backend's, stream flag forced, usage
        asked for in streams, and the node's output cap applied. Returns (body, caller wants
        usage in the stream)."""
        if request.model != self.config.model:
            raise ModelNotFoundError(request.model)
        if self._tracker.metrics.in_flight >= self._capacity:
            raise OverloadedError(f"Node {self.name!r} has {self._capacity} requests in flight.")
        if isinstance(request, EmbeddingRequest):
            return request.model_copy(update={"model": self._served_model}).model_dump_json(
                exclude_none=True).encode(), False
        # Only what differs is updated; an unchanged request is dumped as is (no copy).
        update: dict[str, Any] = {}
        if request.model != self._served_model:
            update["model"] = self._served_model
        if request.stream != stream:
            update["stream"] = stream
        wants_usage = stream and request.wants_usage_in_stream()
        if stream and self._stream_usage and not wants_usage:
            update["stream_options"] = StreamOptions(include_usage=True)
        elif not stream and request.stream_options is not None:
            update["stream_options"] = None
        cap = self.config.max_output_tokens
        if cap is not None:
            if isinstance(request, ChatCompletionRequest):
                asked = request.requested_max_tokens()
                if asked is None or asked > cap:
                    update["max_tokens"] = cap
                    update["max_completion_tokens"] = None
            elif request.max_tokens is None or request.max_tokens > cap:
                update["max_tokens"] = cap
        if update:
            request = request.model_copy(update=update)
        return request.model_dump_json(exclude_none=True).encode(), wants_usage

    def _connection_error(self, exc: BaseException, *, streamed: bool) -> BackendError:
        if isinstance(exc, AnswerTooLargeError):
            return self._too_large(exc, streamed=streamed)
        if streamed:
            return StreamInterruptedError(f"Backend {self.name!r} failed mid-stream: {exc!r}")
        if isinstance(exc, TimeoutError):
            return BackendTimeoutError(f"Backend {self.name!r} timed out: {exc!r}")
        return BackendError(f"Backend {self.name!r} unreachable: {exc!r}")

    def _too_large(self, exc: AnswerTooLargeError, *, streamed: bool = False) -> BackendError:
        """The error (and the one log line) for an answer cut at its bound."""
        option = _BOUND_OPTIONS.get(exc.what)
        log.warning("openai_backend_answer_too_large", node=self.name, what=exc.what, bound=exc.limit,
                    option=option)
        if option is None:
            text = f"sent {exc.what} over {size_text(exc.limit)}; the connection was closed."
        else:
            text = (f"sent {exc.what} over {size_text(exc.limit)} (the node's {option}); the "
                    f"connection was closed. Raise options.{option} if its answers are really this large.")
        if streamed:
            return StreamInterruptedError(f"Backend {self.name!r} failed mid-stream: {text}")
        return AnswerTooLargeBackendError(f"Backend {self.name!r} {text}")

    async def _post(self, path: str, body: bytes, response_type: type[ResponseT]) -> ResponseT:
        """One non-streamed request: the whole answer within ``timeout_s``."""
        pool = self._pool
        try:
            conn = await pool.post(path, body, self._timeout_s)  # armed: the answer's bound
            try:
                payload = await conn.read_all()
            finally:
                pool.release(conn)
        except (TimeoutError, OSError) as exc:
            raise self._connection_error(exc, streamed=False) from exc
        if conn.status >= 300:
            raise map_http_error(conn.status, payload, conn.headers.get("retry-after"), self.config.model)
        try:
            # Relayed as is, our model name swapped in (find, not in: see blueprint.llm.raw).
            if RELAY_RAW.get() and payload.find(b'"choices"') >= 0:
                if payload.find(self._model_bytes) >= 0:
                    return read_answer(payload, response_type)  # type: ignore[return-value]
                if payload.find(self._served_bytes) >= 0:
                    return read_answer(payload.replace(self._served_bytes, self._model_bytes, 1),  # type: ignore[return-value]
                                       response_type)
            return response_type.model_validate_json(payload)
        except ValueError as exc:  # pydantic's ValidationError is one
            message, _ = _error_message(payload)
            raise BackendError(f"Backend {self.name!r} sent a malformed answer: {message}") from exc

    async def _unary(self, path: str, request: Any, response_type: type[ResponseT]) -> ResponseT:
        body, _ = self._prepare(request, stream=False)
        tracker = self._tracker
        started = tracker.started()
        try:
            result = await self._post(path, body, response_type)
        except asyncio.CancelledError:  # the caller gave up: not the backend's fault
            tracker.finished(started, prompt_tokens=0, completion_tokens=0)
            raise
        except BaseException:
            tracker.finished(started, prompt_tokens=0, completion_tokens=0, error=True)
            raise
        usage = getattr(result, "usage", None)
        prompt = usage.prompt_tokens if usage is not None else 0
        completion = getattr(usage, "completion_tokens", 0) if usage is not None else 0
        tracker.first_token(started)
        tracker.finished(started, prompt_tokens=prompt, completion_tokens=completion)
        if not isinstance(result, RawChunk):  # a relayed answer already names our model
            result.model = self.config.model  # type: ignore[attr-defined]
        return result

    async def _stream(self, path: str, request: Any, chunk_type: type[ChunkT]) -> AsyncIterator[ChunkT]:
        """Relay the backend's SSE stream event by event as it arrives, as :class:`RawChunk`
        (the upstream's bytes, parsed only where routing, usage or metrics need a field). A
        consumer that sends a :class:`ChunkSink` gets the following chunks handed to it from the
        read callback instead (:meth:`_relay`)."""
        body, wants_usage = self._prepare(request, stream=True)
        tracker = self._tracker
        state = _StreamState(self, chunk_type, wants_usage, tracker.started())
        failed = True
        reader = _SseReader(self._max_event_bytes)
        pool = self._pool
        conn = None
        try:
            # Until the first event: bounded by the first-chunk timeout; errors here are
            # retryable. No yield happens inside this window, so the deadline never hits the
            # consumer's code. After it, only the silence between two reads is bounded
            # (``read_timeout_s``): a stream that keeps producing is never cut.
            try:
                conn = await pool.post(path, body, self._first_chunk_timeout_s)  # armed until...
                if conn.status >= 300:
                    payload = await conn.read_all()
                    raise map_http_error(conn.status, payload, conn.headers.get("retry-after"),
                                         self.config.model)
                pending = await self._next_events(conn, reader)
                conn.disarm()  # ...the first event
            except (TimeoutError, OSError) as exc:
                raise self._connection_error(exc, streamed=False) from exc
            gap_s = self._read_timeout_s
            try:
                while pending:
                    while pending and not state.done:
                        chunk = state.take(pending.pop(0))
                        if chunk is None:
                            continue
                        sink = yield chunk  # type: ignore[misc]  # a RawChunk reads like ChunkT
                        if sink is not None and not state.done:
                            pending = await self._relay(conn, reader, state, sink, pending, gap_s)
                    if state.done:
                        break
                    conn.arm(gap_s)  # bounds our read only, never the consumer's time
                    pending = await self._next_events(conn, reader)
                    conn.disarm()
                if state.done and not conn.complete:
                    # The answer is whole; the end of its body (what lets the connection be
                    # reused) is awaited off the request's path: the client, who may already
                    # have sent its next request on its own connection, never waits for it.
                    pool.release_when_ended(conn, min(gap_s, _END_WAIT_S))
                    conn = None
            except (TimeoutError, OSError) as exc:
                raise self._connection_error(exc, streamed=state.first_at is not None) from exc
            if not state.done:
                raise self._connection_error(ConnectionError("the stream ended without [DONE]"),
                                             streamed=state.first_at is not None)
            failed = False
        except (GeneratorExit, asyncio.CancelledError):
            failed = False  # the consumer stopped listening: not the backend's fault
            raise
        finally:
            if conn is not None:
                pool.release(conn)  # reused only when read to its end
            tracker.finished(state.started, prompt_tokens=state.prompt_tokens,
                             completion_tokens=state.completion_tokens, first_token_at=state.first_at,
                             error=failed)

    @staticmethod
    async def _relay(conn: Any, reader: _SseReader, state: _StreamState, sink: ChunkSink,
                     pending: list[bytes], gap_s: float) -> list[bytes]:
        """Hand the stream's chunks to ``sink`` from the connection's read callback, each as it
        is read, until the stream ends, fails or the sink is congested. Returns the events read
        but not handed over (the generator yields them); an upstream error event raises here."""
        relay = _Relay(conn, reader, state, sink, pending, gap_s)
        conn.listener = relay.on_data
        try:
            conn.arm(gap_s)
            # First what came while the consumer wrote its last chunk; then wait for the end, an
            # error, a timeout, or the relay to stop (each wakes this task; a chunk does not).
            if relay.on_data() and not conn.complete and not conn.closed and conn.failure() is None:
                await conn.wait()
        finally:
            conn.listener = None
            conn.disarm()
        if relay.error is not None:
            raise relay.error
        return relay.pending

    def _raw_chunk(self, payload: bytes, chunk_type: type[ChunkT], model_bytes: bytes, *,
                   streamed: bool) -> RawChunk:
        """The event as a RawChunk naming our model id; an error event (or garbage) raises."""
        # (find, not in: see blueprint.llm.raw)
        if payload.find(b'"choices"') < 0:
            self._parse_chunk(payload, chunk_type, streamed=streamed)  # raises unless a chunk
        if payload.find(model_bytes) < 0:
            served = self._served_bytes
            if payload.find(served) >= 0:  # the backend's name for the model: ours goes out instead
                return RawChunk(payload.replace(served, model_bytes, 1), chunk_type)
            # The backend named another model (or spaced its JSON): rewrite it the slow way.
            parsed = self._parse_chunk(payload, chunk_type, streamed=streamed)
            parsed.model = self.config.model
            payload = parsed.model_dump_json(exclude_none=True).encode()
        return RawChunk(payload, chunk_type)

    @staticmethod
    async def _next_events(conn: Any, reader: _SseReader) -> list[bytes]:
        """Read until at least one complete SSE event is available; [] at the end of the body."""
        while True:
            data = await conn.read_some()
            if not data:
                return reader.flush()
            events = reader.feed(data)
            if events:
                return events

    def _parse_chunk(self, payload: bytes, chunk_type: type[ChunkT], *, streamed: bool) -> ChunkT:
        try:
            return chunk_type.model_validate_json(payload)
        except ValidationError:
            pass
        # Not a chunk: an error event (vLLM sends {"error": {...}} mid-stream) or garbage.
        status = _error_status(payload)
        if status is None:
            error: BlueprintError = BackendError(
                f"Backend {self.name!r} sent a malformed chunk: {payload[:200]!r}")
        else:
            error = map_http_error(status, payload, None, self.config.model)
        if streamed:
            raise StreamInterruptedError(f"Backend {self.name!r} failed mid-stream: {error.message}")
        raise error

    # -------------------------------------------------------------------------- LlmClient API

    async def chat(self, request: ChatCompletionRequest) -> ChatCompletion:
        return await self._unary("/chat/completions", request, ChatCompletion)

    def chat_stream(self, request: ChatCompletionRequest) -> AsyncIterator[ChatCompletionChunk]:
        return self._stream("/chat/completions", request, ChatCompletionChunk)

    async def complete(self, request: CompletionRequest) -> Completion:
        return await self._unary("/completions", request, Completion)

    def complete_stream(self, request: CompletionRequest) -> AsyncIterator[CompletionChunk]:
        return self._stream("/completions", request, CompletionChunk)

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        if not self._capabilities.embeddings:
            return await super().embed(request)
        return await self._unary("/embeddings", request, EmbeddingResponse)


def _error_status(payload: bytes) -> int | None:
    """The HTTP status an in-stream error event stands for (its numeric ``code`` when it has one,
    else 500); None when the payload is not an error event at all."""
    try:
        data = safejson.loads(payload)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    err = data.get("error")
    if err is None and data.get("object") == "error":
        err = data
    if err is None:
        return None
    code = err.get("code") if isinstance(err, dict) else None
    if isinstance(code, int) and 400 <= code <= 599:
        return code
    return 500


def _byte_bound(config: NodeConfig, option: str, default: int) -> int:
    """A size bound from the node's options, checked when the node is built (a typo stops at load,
    never a request later)."""
    value = config.options.get(option, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < _MIN_BOUND:
        raise InvalidRequestError(
            f"Node {config.node_name!r}: options.{option} must be a whole number of bytes, at least "
            f"{_MIN_BOUND} (got {value!r}; the default is {default}).", param=f"options.{option}")
    return value
