"""A zero-cost LLM engine for ``bench/chain.py``: answers at once, so the benchmark measures the
daemon (chain intake, ledger, routing, submission) and not inference.

Loaded by the daemon as a custom engine by dotted path: ``engine = "bench.echo_engine:EchoClient"``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from blueprint.llm.client import Capabilities, LlmClient, MetricsTracker, NodeMetrics
from blueprint.llm.config import NodeConfig
from blueprint.llm.types import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    ChatMessage,
    Completion,
    CompletionChoice,
    CompletionChunk,
    CompletionRequest,
    Embedding,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
    ModelInfo,
    Usage,
)


class EchoClient(LlmClient):
    """Answers "ok" (one token) to everything, with a 4-dimension embedding."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.name = config.node_name
        self._tracker = MetricsTracker()

    def models(self) -> list[ModelInfo]:
        return [self.config.model_card(context_length=4096, is_ready=True)]

    def capabilities(self) -> Capabilities:
        return Capabilities(embeddings=True, max_concurrency=self.config.max_batch_size)

    def metrics(self) -> NodeMetrics:
        return self._tracker.snapshot()

    async def chat(self, request: ChatCompletionRequest) -> ChatCompletion:
        started = self._tracker.started()
        self._tracker.finished(started, prompt_tokens=1, completion_tokens=1)
        return ChatCompletion(model=request.model, usage=Usage.of(1, 1), choices=[
            ChatChoice(message=ChatMessage(role="assistant", content="ok"), finish_reason="stop")])

    async def chat_stream(self, request: ChatCompletionRequest) -> AsyncIterator[ChatCompletionChunk]:
        answer = await self.chat(request)
        yield ChatCompletionChunk(id=answer.id, model=request.model, usage=answer.usage, choices=[
            ChatChunkChoice(delta=ChatDelta(role="assistant", content="ok"), finish_reason="stop")])

    async def complete(self, request: CompletionRequest) -> Completion:
        started = self._tracker.started()
        self._tracker.finished(started, prompt_tokens=1, completion_tokens=1)
        return Completion(model=request.model, usage=Usage.of(1, 1),
                          choices=[CompletionChoice(text="ok", finish_reason="stop")])

    async def complete_stream(self, request: CompletionRequest) -> AsyncIterator[CompletionChunk]:
        answer = await self.complete(request)
        yield CompletionChunk(id=answer.id, model=request.model, choices=answer.choices, usage=answer.usage)

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        return EmbeddingResponse(model=request.model, data=[Embedding(index=0, embedding=[0.0] * 4)],
                                 usage=EmbeddingUsage(prompt_tokens=1, total_tokens=1))
