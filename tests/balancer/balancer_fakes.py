"""A small in-memory LlmClient double for the balancer tests: controllable delay, failures and
streams, and a count of what it was asked to do."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from blueprint.errors import BackendError, InvalidRequestError
from blueprint.llm.client import Capabilities, LlmClient, NodeMetrics
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
    ModelInfo,
    Usage,
)


class FakeClient(LlmClient):
    def __init__(self, name: str, models: tuple[str, ...] = ("m",), *, delay: float = 0.0,
                 fail: int = 0, fail_with: type[Exception] = BackendError, chunks: int = 3,
                 max_concurrency: int = 4, healthy: bool = True, fail_after_chunks: int | None = None,
                 tools: bool = False, context_length: int = 2048) -> None:
        self.name = name
        self._models = models
        self.delay = delay
        self.fail = fail
        self.fail_with = fail_with
        self.chunks = chunks
        self.max_concurrency = max_concurrency
        self.healthy = healthy
        self.fail_after_chunks = fail_after_chunks
        self.tools = tools
        self.context_length = context_length
        self.calls = 0
        self.running = 0
        self.peak = 0
        self.started = False
        self.closed = False
        self.gate: asyncio.Event | None = None

    async def start(self) -> None:
        self.started = True

    async def close(self) -> None:
        self.closed = True

    def models(self) -> list[ModelInfo]:
        return [ModelInfo(id=m, context_length=self.context_length) for m in self._models]

    def capabilities(self) -> Capabilities:
        return Capabilities(tools=self.tools, max_concurrency=self.max_concurrency)

    def metrics(self) -> NodeMetrics:
        return NodeMetrics()

    async def health_check(self) -> bool:
        return self.healthy

    async def _enter(self) -> None:
        self.calls += 1
        self.running += 1
        self.peak = max(self.peak, self.running)
        if self.gate is not None:
            await self.gate.wait()
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail > 0:
            self.fail -= 1
            if self.fail_with is InvalidRequestError:
                raise InvalidRequestError("bad request")
            raise self.fail_with(f"{self.name} failed")

    async def chat(self, request: ChatCompletionRequest) -> ChatCompletion:
        try:
            await self._enter()
            return ChatCompletion(model=request.model, choices=[ChatChoice(
                message=ChatMessage(role="assistant", content=self.name), finish_reason="stop")],
                usage=Usage.of(1, 1))
        finally:
            self.running -= 1

    async def chat_stream(self, request: ChatCompletionRequest) -> AsyncIterator[ChatCompletionChunk]:
        try:
            await self._enter()
            for i in range(self.chunks):
                if self.fail_after_chunks is not None and i == self.fail_after_chunks:
                    raise BackendError(f"{self.name} died mid-stream")
                yield ChatCompletionChunk(id="c", model=request.model, choices=[
                    ChatChunkChoice(delta=ChatDelta(content=f"{self.name}:{i}"))])
                await asyncio.sleep(self.delay)
        finally:
            self.running -= 1

    async def complete(self, request: CompletionRequest) -> Completion:
        try:
            await self._enter()
            return Completion(model=request.model, choices=[CompletionChoice(text=self.name)])
        finally:
            self.running -= 1

    async def complete_stream(self, request: CompletionRequest) -> AsyncIterator[CompletionChunk]:
        try:
            await self._enter()
            for i in range(self.chunks):
                yield CompletionChunk(id="c", model=request.model,
                                      choices=[CompletionChoice(text=f"{self.name}:{i}")])
        finally:
            self.running -= 1


def chat_request(model: str = "m", text: str = "hi", **extra: object) -> ChatCompletionRequest:
    return ChatCompletionRequest(model=model, messages=[ChatMessage(role="user", content=text)], **extra)
