"""vLLM in-process: its async engine (``vllm.AsyncLLMEngine``, which is the V1 ``AsyncLLM`` in
current releases) driven directly, without an HTTP hop.

Thin on purpose: vLLM already batches continuously, caches prefixes and schedules; this module
only maps our wire types onto ``vllm.SamplingParams``/``PoolingParams``, renders chat prompts
with the tokenizer's chat template, and turns vLLM's ``RequestOutput`` deltas into our chunks.

vLLM needs a CUDA GPU and the ``vllm`` extra (``pip install 'tangle-llm-blueprint[vllm]'``); it is
imported lazily when a vLLM node is *configured*, so a machine without it fails at configuration
time with that advice, and nodes of other engines never import it. There is no CPU wheel, so only
the pure mapping below and the missing-vLLM path are tested here.

Engine options (``NodeConfig.options``): ``engine_args`` (a dict passed to ``AsyncEngineArgs``
as is: ``gpu_memory_utilization``, ``tensor_parallel_size``, ``enable_prefix_caching``...).
"""

from __future__ import annotations

import inspect
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import structlog

from blueprint.errors import (
    BackendError,
    BlueprintError,
    ContextLengthExceededError,
    InvalidRequestError,
    ModelNotFoundError,
)
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
    new_id,
    now,
)

log = structlog.get_logger(__name__)

VLLM_MISSING = ("The vllm engine needs the 'vllm' package, which is not installed. Install the extra "
                "with `pip install 'tangle-llm-blueprint[vllm]'` on a machine with a CUDA GPU (vLLM has "
                "no CPU wheel), or serve the model with `vllm serve` and use engine = \"openai\".")

#: Our request fields and the vllm.SamplingParams field each maps to.
_SAMPLING_FIELDS = {
    "temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
    "seed": "seed", "frequency_penalty": "frequency_penalty", "presence_penalty": "presence_penalty",
    "repetition_penalty": "repetition_penalty", "n": "n",
}
_FALLBACK_TEMPLATE_NOTE = "role-prefixed lines ending in 'assistant:'"


def sampling_kwargs(request: ChatCompletionRequest | CompletionRequest, max_tokens: int) -> dict[str, Any]:
    """Keyword arguments for ``vllm.SamplingParams`` from one of our requests (pure, so it can
    be tested without vLLM). Unset fields keep vLLM's defaults."""
    kwargs: dict[str, Any] = {"max_tokens": max_tokens}
    for ours, theirs in _SAMPLING_FIELDS.items():
        value = getattr(request, ours)
        if value is not None:
            kwargs[theirs] = value
    stops = request.stop_list()
    if stops:
        kwargs["stop"] = stops
    if request.logit_bias:
        kwargs["logit_bias"] = {int(k): v for k, v in request.logit_bias.items()}
    if isinstance(request, ChatCompletionRequest):
        if request.logprobs:
            kwargs["logprobs"] = request.top_logprobs or 0
    elif request.logprobs is not None:
        kwargs["logprobs"] = request.logprobs
    return kwargs


def render_chat_fallback(messages: list[ChatMessage]) -> str:
    """The prompt for tokenizers without a chat template: one ``role: text`` line per message,
    then ``assistant:`` for the model to continue."""
    return "".join(f"{m.role}: {m.text()}\n" for m in messages) + "assistant:"


def map_finish_reason(reason: str | None) -> str | None:
    """vLLM's finish reasons in OpenAI's vocabulary (``abort`` is an error to the client)."""
    if reason is None:
        return None
    return {"stop": "stop", "length": "length", "abort": "error"}.get(reason, "stop")


class VllmClient(LlmClient):
    """One in-process vLLM engine serving ``config.model`` from ``config.path`` (or HF id)."""

    def __init__(self, config: NodeConfig) -> None:
        try:
            import vllm
        except ImportError as exc:
            raise InvalidRequestError(VLLM_MISSING, code="engine_unavailable") from exc
        self._vllm = vllm
        self.name = config.node_name
        self.config = config
        self._tracker = MetricsTracker()
        self._engine: Any = None
        self._tokenizer: Any = None
        self._max_model_len = config.context_length or 2048
        self._pooling = False

    # -------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Build the engine (loads weights onto the GPU, minutes for a large model)."""
        if self._engine is not None:
            return
        cfg = self.config
        args: dict[str, Any] = {"model": cfg.path or cfg.model, "served_model_name": cfg.model,
                                "dtype": cfg.dtype, "max_num_seqs": cfg.max_batch_size}
        if cfg.context_length:
            args["max_model_len"] = cfg.context_length
        args.update(cfg.options.get("engine_args", {}))
        engine_args = self._vllm.AsyncEngineArgs(**args)
        self._engine = self._vllm.AsyncLLMEngine.from_engine_args(engine_args)
        model_config = getattr(self._engine, "model_config", None)
        if model_config is None:  # older engines expose it through a coroutine
            model_config = await _maybe_await(self._engine.get_model_config)
        self._max_model_len = int(getattr(model_config, "max_model_len", self._max_model_len))
        runner = getattr(model_config, "runner_type", None) or getattr(model_config, "task", None)
        self._pooling = runner in ("pooling", "embed", "embedding")
        self._tokenizer = await _maybe_await(self._engine.get_tokenizer)
        log.info("vllm_engine_started", node=self.name, max_model_len=self._max_model_len,
                 pooling=self._pooling)

    async def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None and hasattr(engine, "shutdown"):
            engine.shutdown()

    # -------------------------------------------------------------------------- descriptors

    def models(self) -> list[ModelInfo]:
        return [self.config.model_card(
            context_length=self._max_model_len, is_ready=self._engine is not None,
            supported_features=self.capabilities().features(),
            endpoints=["embedding"] if self._pooling else ["chat", "completion"],
        )]

    def capabilities(self) -> Capabilities:
        return Capabilities(chat=not self._pooling, completion=not self._pooling,
                            embeddings=self._pooling, logprobs=True,
                            max_concurrency=self.config.max_batch_size)

    def metrics(self) -> NodeMetrics:
        return self._tracker.snapshot()

    async def health_check(self) -> bool:
        if self._engine is None:
            return False
        try:
            await self._engine.check_health()
        except Exception:
            return False
        return True

    # -------------------------------------------------------------------------- helpers

    def _require(self, model: str) -> Any:
        if model != self.config.model:
            raise ModelNotFoundError(model)
        if self._engine is None:
            raise BackendError(f"vLLM node {self.name!r} is not started.")
        return self._engine

    def _encode(self, text: str, *, special: bool) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=special))

    def _chat_prompt(self, request: ChatCompletionRequest) -> list[int]:
        # "developer" is OpenAI's newer name for "system", which chat templates know
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in request.messages]
        if getattr(self._tokenizer, "chat_template", None):
            text = self._tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return self._encode(text, special=False)
        return self._encode(render_chat_fallback(request.messages), special=True)

    def _budget(self, prompt_ids: list[int], asked: int | None) -> int:
        """Tokens this request may generate: what was asked (capped by the node), within the
        context; a prompt that leaves no room is refused."""
        room = self._max_model_len - len(prompt_ids)
        cap = self.config.max_output_tokens
        wanted = asked if asked is not None else (cap or room)
        if cap is not None:
            wanted = min(wanted, cap)
        if room <= 0 or wanted > room:
            raise ContextLengthExceededError(
                f"The prompt has {len(prompt_ids)} tokens and {wanted} more were asked for; the "
                f"context of {self.config.model!r} is {self._max_model_len} tokens.")
        return wanted

    def _params(self, request: ChatCompletionRequest | CompletionRequest, max_tokens: int,
                *, stream: bool) -> Any:
        from vllm.sampling_params import RequestOutputKind

        kind = RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY
        try:
            return self._vllm.SamplingParams(output_kind=kind, **sampling_kwargs(request, max_tokens))
        except (ValueError, TypeError) as exc:
            raise InvalidRequestError(f"Invalid sampling parameters: {exc}") from exc

    async def _generate(self, prompt_ids: list[int], params: Any) -> AsyncIterator[Any]:
        """vLLM's outputs for one request; aborts it when the consumer stops early."""
        engine = self._engine
        request_id = uuid.uuid4().hex
        finished = False
        try:
            async for output in engine.generate(prompt={"prompt_token_ids": prompt_ids},
                                                sampling_params=params, request_id=request_id):
                finished = output.finished
                yield output
        except BlueprintError:
            raise
        except ValueError as exc:
            raise InvalidRequestError(str(exc)) from exc
        except Exception as exc:  # vLLM's engine errors (EngineDeadError...)
            raise BackendError(f"vLLM node {self.name!r} failed: {exc!r}") from exc
        finally:
            if not finished:
                await engine.abort(request_id)

    # -------------------------------------------------------------------------- chat

    async def chat(self, request: ChatCompletionRequest) -> ChatCompletion:
        self._require(request.model)
        prompt = self._chat_prompt(request)
        params = self._params(request, self._budget(prompt, request.requested_max_tokens()), stream=False)
        started = self._tracker.started()
        final = None
        try:
            async for output in self._generate(prompt, params):
                final = output
        except BaseException:
            self._tracker.finished(started, prompt_tokens=len(prompt), completion_tokens=0, error=True)
            raise
        assert final is not None
        completion = sum(len(o.token_ids) for o in final.outputs)
        self._tracker.first_token(started)
        self._tracker.finished(started, prompt_tokens=len(prompt), completion_tokens=completion)
        return ChatCompletion(
            model=self.config.model, usage=Usage.of(len(prompt), completion),
            choices=[ChatChoice(index=o.index, message=ChatMessage(role="assistant", content=o.text),
                                finish_reason=map_finish_reason(o.finish_reason))  # type: ignore[arg-type]
                     for o in final.outputs],
        )

    async def chat_stream(self, request: ChatCompletionRequest) -> AsyncIterator[ChatCompletionChunk]:
        self._require(request.model)
        prompt = self._chat_prompt(request)
        params = self._params(request, self._budget(prompt, request.requested_max_tokens()), stream=True)
        chunk_id, created, model = new_id("chatcmpl"), now(), self.config.model
        async for piece in self._stream(prompt, params):
            if isinstance(piece, Usage):
                if request.wants_usage_in_stream():
                    yield ChatCompletionChunk(id=chunk_id, created=created, model=model, usage=piece)
                continue
            index, text, reason, first = piece
            delta = ChatDelta(role="assistant", content=text) if first else ChatDelta(content=text)
            yield ChatCompletionChunk(id=chunk_id, created=created, model=model, choices=[
                ChatChunkChoice(index=index, delta=delta, finish_reason=reason)])

    # -------------------------------------------------------------------------- completions

    async def complete(self, request: CompletionRequest) -> Completion:
        self._require(request.model)
        choices: list[CompletionChoice] = []
        prompt_total = completion_total = 0
        for p_index, text in enumerate(request.prompts()):
            prompt = self._encode(text, special=True)
            params = self._params(request, self._budget(prompt, request.max_tokens), stream=False)
            started = self._tracker.started()
            final = None
            try:
                async for output in self._generate(prompt, params):
                    final = output
            except BaseException:
                self._tracker.finished(started, prompt_tokens=len(prompt), completion_tokens=0, error=True)
                raise
            assert final is not None
            produced = sum(len(o.token_ids) for o in final.outputs)
            self._tracker.first_token(started)
            self._tracker.finished(started, prompt_tokens=len(prompt), completion_tokens=produced)
            prompt_total += len(prompt)
            completion_total += produced
            for o in final.outputs:
                choices.append(CompletionChoice(
                    index=p_index * request.n + o.index, text=(text if request.echo else "") + o.text,
                    finish_reason=map_finish_reason(o.finish_reason)))  # type: ignore[arg-type]
        return Completion(model=self.config.model, choices=choices,
                          usage=Usage.of(prompt_total, completion_total))

    async def complete_stream(self, request: CompletionRequest) -> AsyncIterator[CompletionChunk]:
        self._require(request.model)
        prompts = request.prompts()
        if len(prompts) != 1:
            raise InvalidRequestError("Streamed completions take one prompt.", param="prompt")
        prompt = self._encode(prompts[0], special=True)
        params = self._params(request, self._budget(prompt, request.max_tokens), stream=True)
        chunk_id, created, model = new_id("cmpl"), now(), self.config.model
        async for piece in self._stream(prompt, params):
            if isinstance(piece, Usage):
                if request.wants_usage_in_stream():
                    yield CompletionChunk(id=chunk_id, created=created, model=model, usage=piece)
                continue
            index, text, reason, first = piece
            if first and request.echo:
                text = prompts[0] + text
            yield CompletionChunk(id=chunk_id, created=created, model=model, choices=[
                CompletionChoice(index=index, text=text, finish_reason=reason)])

    async def _stream(self, prompt: list[int], params: Any) -> AsyncIterator[Any]:
        """(choice index, text delta, finish reason, first piece of that choice) per vLLM delta,
        then the Usage; vLLM's DELTA output kind gives only the new tokens of each step."""
        tracker = self._tracker
        started = tracker.started()
        first_at: float | None = None
        produced = 0
        seen: set[int] = set()
        failed = True
        try:
            async for output in self._generate(prompt, params):
                for o in output.outputs:
                    produced += len(o.token_ids)
                    if not o.text and o.finish_reason is None:
                        continue
                    if first_at is None:
                        first_at = time.perf_counter()
                        tracker.first_token(started)
                    first = o.index not in seen
                    seen.add(o.index)
                    yield o.index, o.text, map_finish_reason(o.finish_reason), first
            failed = False
            yield Usage.of(len(prompt), produced)
        finally:
            tracker.finished(started, prompt_tokens=len(prompt), completion_tokens=produced,
                             first_token_at=first_at, error=failed)

    # -------------------------------------------------------------------------- embeddings

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        engine = self._require(request.model)
        if not self._pooling:
            raise InvalidRequestError(
                f"Model {self.config.model!r} is a generative model in vLLM; embeddings need a pooling "
                "model (start it with engine_args = {runner = \"pooling\"}).", code="unsupported_endpoint")
        from vllm.outputs import EmbeddingRequestOutput

        texts = request.texts()
        token_lists = [self._encode(t, special=True) for t in texts] if texts is not None \
            else (request.token_lists() or [])
        try:
            params = self._vllm.PoolingParams(task="embed", dimensions=request.dimensions)
        except TypeError:  # older vLLM: no task field
            params = self._vllm.PoolingParams()
        data, total = [], 0
        for index, ids in enumerate(token_lists):
            if len(ids) > self._max_model_len:
                raise ContextLengthExceededError(
                    f"Input {index} has {len(ids)} tokens; the context is {self._max_model_len}.")
            total += len(ids)
            final = None
            try:
                async for output in engine.encode({"prompt_token_ids": ids}, params, uuid.uuid4().hex):
                    final = output
            except Exception as exc:
                raise BackendError(f"vLLM node {self.name!r} failed to embed: {exc!r}") from exc
            assert final is not None
            vector = EmbeddingRequestOutput.from_base(final).outputs.embedding
            data.append(Embedding(index=index, embedding=list(vector)))
        return EmbeddingResponse(data=data, model=self.config.model,
                                 usage=EmbeddingUsage(prompt_tokens=total, total_tokens=total))


async def _maybe_await(func: Any) -> Any:
    """Call ``func`` and await the result when vLLM's version made it a coroutine."""
    result = func()
    return await result if inspect.isawaitable(result) else result
