"""The one interface every LLM engine implements.

A client is one *node*: an in-process model or a remote server. The balancer picks among nodes,
the HTTP server and the job handlers call them. Every method that streams yields real increments
as the engine produces them; no engine may fake a stream by splitting a finished answer.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from blueprint.errors import InvalidRequestError, ModelNotFoundError
from blueprint.llm.types import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatMessage,
    Completion,
    CompletionChunk,
    CompletionRequest,
    EmbeddingRequest,
    EmbeddingResponse,
    ModelInfo,
)


@dataclass(frozen=True, slots=True)
class Capabilities:
    chat: bool = True
    completion: bool = True
    embeddings: bool = False
    streaming: bool = True
    logprobs: bool = False
    json_mode: bool = False
    tools: bool = False
    #: ``response_format`` ``json_schema`` enforced (not just passed on).
    structured_outputs: bool = False
    #: Thinking text returned apart, in ``reasoning``.
    reasoning: bool = False
    #: Requests the node runs at once (its batch); the balancer never sends more than this plus
    #: its queue allowance.
    max_concurrency: int = 16

    def features(self) -> list[str]:
        """OpenRouter's ``supported_features`` names for what this node can do."""
        names = []
        if self.tools:
            names.append("tools")
        if self.json_mode:
            names.append("json_mode")
        if self.structured_outputs:
            names.append("structured_outputs")
        if self.logprobs:
            names.append("logprobs")
        if self.reasoning:
            names.append("reasoning")
        return names


@dataclass(slots=True)
class NodeMetrics:
    """A snapshot of a node's load and speed, as the balancer and ``/metrics`` read it."""

    in_flight: int = 0
    queued: int = 0
    #: Output tokens per second over the recent window (all requests together).
    tokens_per_second: float = 0.0
    #: Moving averages in seconds; None until the first observation.
    ttft_s: float | None = None
    time_per_output_token_s: float | None = None
    #: KV-cache use in [0, 1] where the engine reports it (vLLM's ``kv_cache_usage_perc``).
    kv_cache_usage: float | None = None
    #: Prefix-cache counters in tokens where the backend reports them (vLLM's
    #: ``prefix_cache_hits_total``/``prefix_cache_queries_total``); their ratio is the hit rate.
    prefix_cache_hits: float | None = None
    prefix_cache_queries: float | None = None
    requests_total: int = 0
    errors_total: int = 0
    prompt_tokens_total: int = 0
    completion_tokens_total: int = 0

    @property
    def load(self) -> int:
        return self.in_flight + self.queued


@dataclass(slots=True)
class MetricsTracker:
    """Counts what a node serves. Engines call ``started``/``first_token``/``finished``;
    ``snapshot`` is cheap enough to call on every routing decision."""

    alpha: float = 0.2
    window_s: float = 10.0
    metrics: NodeMetrics = field(default_factory=NodeMetrics)
    #: Deque plus a running sum: ``snapshot`` runs on every routing decision, so it must not
    #: walk the whole window (that cost grows with the request rate).
    _token_events: deque[tuple[float, int]] = field(default_factory=deque)
    _window_tokens: int = 0

    def started(self) -> float:
        self.metrics.in_flight += 1
        self.metrics.requests_total += 1
        return time.perf_counter()

    def first_token(self, started_at: float) -> None:
        self.metrics.ttft_s = self._ewma(self.metrics.ttft_s, time.perf_counter() - started_at)

    def finished(self, started_at: float, *, prompt_tokens: int, completion_tokens: int,
                 first_token_at: float | None = None, error: bool = False) -> None:
        now = time.perf_counter()
        m = self.metrics
        m.in_flight = max(0, m.in_flight - 1)
        if error:
            m.errors_total += 1
        m.prompt_tokens_total += prompt_tokens
        m.completion_tokens_total += completion_tokens
        if completion_tokens > 1 and first_token_at is not None:
            per_token = (now - first_token_at) / (completion_tokens - 1)
            m.time_per_output_token_s = self._ewma(m.time_per_output_token_s, per_token)
        if completion_tokens:
            self._token_events.append((now, completion_tokens))
            self._window_tokens += completion_tokens

    def snapshot(self) -> NodeMetrics:
        now = time.perf_counter()
        horizon = now - self.window_s
        events = self._token_events
        while events and events[0][0] < horizon:
            self._window_tokens -= events.popleft()[1]
        m = self.metrics
        m.tokens_per_second = self._window_tokens / self.window_s if events else 0.0
        return NodeMetrics(
            in_flight=m.in_flight, queued=m.queued, tokens_per_second=m.tokens_per_second,
            ttft_s=m.ttft_s, time_per_output_token_s=m.time_per_output_token_s,
            kv_cache_usage=m.kv_cache_usage, requests_total=m.requests_total,
            errors_total=m.errors_total, prompt_tokens_total=m.prompt_tokens_total,
            completion_tokens_total=m.completion_tokens_total,
        )

    def _ewma(self, old: float | None, value: float) -> float:
        return value if old is None else (1 - self.alpha) * old + self.alpha * value


class LlmClient(ABC):
    """An LLM node. ``name`` identifies the node (unique per operator); ``models`` lists the
    model ids clients may ask it for."""

    name: str

    async def start(self) -> None:
        """Load weights / open connections. Called once before the first request."""

    async def close(self) -> None:
        """Release what ``start`` took. Idempotent."""

    @abstractmethod
    def models(self) -> list[ModelInfo]: ...

    @abstractmethod
    def capabilities(self) -> Capabilities: ...

    @abstractmethod
    def metrics(self) -> NodeMetrics: ...

    async def health_check(self) -> bool:
        """Active health probe for the balancer; in-process engines are healthy once started."""
        return True

    def serves(self, model: str) -> bool:
        return any(info.id == model for info in self.models())

    def model_info(self, model: str) -> ModelInfo:
        for info in self.models():
            if info.id == model:
                return info
        raise ModelNotFoundError(model)

    @abstractmethod
    async def chat(self, request: ChatCompletionRequest) -> ChatCompletion: ...

    @abstractmethod
    def chat_stream(self, request: ChatCompletionRequest) -> AsyncIterator[ChatCompletionChunk]:
        """Chunks as the engine produces them; the last carries ``usage`` when the request's
        ``stream_options.include_usage`` asks for it."""

    @abstractmethod
    async def complete(self, request: CompletionRequest) -> Completion: ...

    @abstractmethod
    def complete_stream(self, request: CompletionRequest) -> AsyncIterator[CompletionChunk]: ...

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        raise InvalidRequestError(f"Node {self.name!r} does not serve embeddings.",
                                  code="unsupported_endpoint")

    async def count_tokens(self, prompt: str | Sequence[ChatMessage]) -> int | None:
        """Prompt tokens of a text (as a completion/embedding input) or of chat messages (with
        the chat template), exactly as this node would count them; None when the node cannot
        tell (remote servers). Signed quotes price prompts with it."""
        return None
