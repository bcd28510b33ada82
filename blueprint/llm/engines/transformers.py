"""The in-process Hugging Face transformers engine.

Loads a local model directory with ``AutoTokenizer``/``AutoModelForCausalLM`` on CPU or CUDA
(``NodeConfig.device``/``dtype``) and serves chat, text completions and embeddings. Generation
runs on one worker thread with continuous batching (``_hf_batching``): concurrent requests share
decode steps, new ones join between steps, and each streams its tokens as they are sampled,
through ``loop.call_soon_threadsafe`` into a per-request ``asyncio.Queue``.

Limits and choices, on purpose:

* Requests are checked before any compute: unknown model -> ModelNotFoundError; prompt + 1 token
  beyond the context -> ContextLengthExceededError; features it cannot honour (tools,
  ``response_format`` other than text, non-text content, ``suffix``, ``best_of`` != n, ``echo``
  with ``logprobs``, which would need the prompt's logprobs) -> InvalidRequestError rather than a
  silent wrong answer.
* Logprobs: chat's ``logprobs`` + ``top_logprobs`` (0..20) and completions' ``logprobs`` (0..5),
  streamed or not, one entry per generated token (the EOS that ends a sequence included, so there
  are ``completion_tokens`` of them), computed in the batching step from the processed
  distribution the token was sampled from (``_hf_batching.sample_step`` says exactly which);
  token texts and bytes as ``_hf_text.TokenPieces`` describes. Requests that do not ask cost
  nothing extra.
* ``max_tokens`` is capped at ``min(request, NodeConfig.max_output_tokens, context room)``.
* Admission control: more than ``max_batch_size + max_queue`` outstanding sequences (a request with
  ``n`` choices counts ``n``) -> OverloadedError at once, as OpenRouter prefers to queueing.
* A seeded request gets the same text streamed or not and alone or batched (its own generator);
  choice ``i`` of ``n`` uses ``seed + i``.
* ``NodeConfig.options``: ``ignore_eos`` (bool, benchmarks: generate exactly ``max_tokens``),
  ``prefill_token_budget`` (int, padded prompt tokens per prefill), ``embedding_batch_size`` (int),
  ``torch_threads`` (int, torch's intra-op threads for the whole process; on a CPU shared with
  other busy processes 1 is often much faster than the default, which spins on contended cores).
"""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections.abc import AsyncIterator
from collections.abc import Sequence as MessageSequence
from contextlib import aclosing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import structlog

from blueprint.errors import (
    BackendError,
    BlueprintError,
    ContextLengthExceededError,
    InvalidRequestError,
    ModelNotFoundError,
    OverloadedError,
)
from blueprint.llm.chat_output import ChatOutputShaper, merge_deltas
from blueprint.llm.chat_template import render_chat
from blueprint.llm.client import Capabilities, LlmClient, MetricsTracker, NodeMetrics
from blueprint.llm.config import NodeConfig
from blueprint.llm.logprobs import TokenLogprob, chat_logprobs, completion_logprobs
from blueprint.llm.model_files import config_context_length
from blueprint.llm.sampling import SamplingParams, sampling_params
from blueprint.llm.structured import grammar_spec, plan_output
from blueprint.llm.types import (
    DEFAULT_SAMPLING_PARAMETERS,
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
#: Serialises the first import of torch/transformers across node start-up threads.
_IMPORT_LOCK = threading.Lock()

_QUANTIZATION = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
_DEFAULT_CONTEXT = 2048
#: Tokens one embeddings request may hold (``options.max_embedding_tokens``); 400 beyond.
DEFAULT_MAX_EMBEDDING_TOKENS = 65_536


@dataclass(slots=True)
class _Prepared:
    """A validated generation request: token ids per prompt, sampling, and the token cap."""

    prompts: list[list[int]]
    params: SamplingParams
    max_new_tokens: int
    prompt_texts: list[str]
    #: Alternatives per token in the logprobs; None: no logprobs asked for.
    logprobs: int | None = None
    #: One grammar state per sequence (constrained requests), in sequence order.
    grammars: list[Any] | None = None
    #: Chat only: parse tool-call blocks; split ``<think>`` reasoning (and whether the prompt
    #: already opened it); drop the reasoning from the answer.
    parse_tools: bool = False
    reasoning: bool = False
    reasoning_open: bool = False
    exclude_reasoning: bool = False

    @property
    def prompt_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)


@dataclass(slots=True)
class _Output:
    """One finished choice."""

    text: str
    finish_reason: str
    completion_tokens: int
    logprobs: list[TokenLogprob] | None = None


class TransformersClient(LlmClient):
    """An in-process transformers node (module docstring)."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.name = config.node_name
        self._path = Path(config.path or config.model)
        self._tracker = MetricsTracker()
        self._outstanding = 0
        self._started = False
        self._model: Any = None
        self._encoder: Any = None  # tokenizer used by request threads (under _encode_lock)
        self._batcher: Any = None
        self._encode_lock = threading.Lock()
        self._dtype_name = "float32"
        self._context_length = config.context_length or config_context_length(self._path) or _DEFAULT_CONTEXT
        self._ignore_eos = bool(config.options.get("ignore_eos", False))
        self._grammars: Any = None  # GrammarCompiler once loaded, where the tokenizer allows
        self._created = _model_created(self._path)
        self._thinks = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._started:
            return
        await asyncio.to_thread(self._load)
        self._started = True
        log.info("transformers_engine_started", node=self.name, path=str(self._path),
                 device=str(self._model.device), dtype=self._dtype_name,
                 context_length=self._context_length, max_batch_size=self.config.max_batch_size)

    def _load(self) -> None:
        with _IMPORT_LOCK:  # nodes start in parallel threads; transformers' lazy import is not thread-safe
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

        from blueprint.llm.engines._hf_batching import ContinuousBatcher
        from blueprint.logging import route_library_logging

        route_library_logging()  # its records and warnings as our one-line events

        threads = self.config.options.get("torch_threads")
        if threads:
            torch.set_num_threads(int(threads))
        device = self.config.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype_name = self.config.dtype
        if dtype_name == "auto":
            if device.startswith("cuda"):
                dtype_name = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
            else:
                dtype_name = "float32"
        try:
            decoder = AutoTokenizer.from_pretrained(self._path)
            self._encoder = AutoTokenizer.from_pretrained(self._path)
            model = AutoModelForCausalLM.from_pretrained(self._path, dtype=getattr(torch, dtype_name))
            model = model.to(device).eval()
        except (OSError, ValueError) as exc:
            raise BackendError(f"Cannot load the model at {str(self._path)!r}: {exc}") from exc
        self._model, self._dtype_name = model, dtype_name
        self._context_length = (self.config.context_length
                                or getattr(model.config, "max_position_embeddings", None)
                                or _DEFAULT_CONTEXT)
        eos: set[int] = set()
        for source in (getattr(model.generation_config, "eos_token_id", None), decoder.eos_token_id):
            if isinstance(source, int):
                eos.add(source)
            elif source:
                eos.update(source)
        self._batcher = ContinuousBatcher(
            model, decoder, max_batch_size=self.config.max_batch_size, eos_token_ids=eos,
            prefill_token_budget=int(self.config.options.get("prefill_token_budget", 8192)),
        )
        self._batcher.start()
        self._grammars = _grammar_compiler(decoder, eos, model.get_output_embeddings().weight.shape[0])
        setting = str(self.config.options.get("reasoning", "auto"))
        vocab = decoder.get_vocab()
        self._thinks = setting == "on" or (setting == "auto" and "<think>" in vocab and "</think>" in vocab)

    async def close(self) -> None:
        if self._batcher is not None:
            batcher, self._batcher = self._batcher, None
            await asyncio.to_thread(batcher.stop)
        self._started = False

    # ------------------------------------------------------------------ description

    def models(self) -> list[ModelInfo]:
        return [self.config.model_card(
            context_length=self._context_length,
            engine_quantization=_QUANTIZATION.get(self._dtype_name, self._dtype_name),
            default_max_output=self._context_length,
            supported_sampling_parameters=[*DEFAULT_SAMPLING_PARAMETERS, "logit_bias", "logprobs",
                                           "top_logprobs"],
            supported_features=self.capabilities().features(),
            is_ready=self._started,
            created=self._created,
        )]

    def capabilities(self) -> Capabilities:
        grammars = self._grammars is not None
        return Capabilities(chat=True, completion=True, embeddings=True, streaming=True,
                            logprobs=True, json_mode=grammars, tools=grammars,
                            structured_outputs=grammars, reasoning=self._thinks,
                            max_concurrency=self.config.max_batch_size)

    def metrics(self) -> NodeMetrics:
        snapshot = self._tracker.snapshot()
        running = self._batcher.num_running if self._batcher is not None else 0
        snapshot.in_flight = min(running, self._outstanding)
        snapshot.queued = max(0, self._outstanding - snapshot.in_flight)
        return snapshot

    @property
    def peak_batch_size(self) -> int:
        """The largest number of sequences decoded together so far (evidence of batching)."""
        return self._batcher.peak_batch_size if self._batcher is not None else 0

    # ------------------------------------------------------------------ chat

    async def chat(self, request: ChatCompletionRequest) -> ChatCompletion:
        prepared = await self._prepare_chat(request)
        outputs = await self._collect(prepared)
        choices, reasoning_tokens = [], 0
        for i, out in enumerate(outputs):
            shaper = self._shaper(prepared)
            shaper.feed(out.text, out.completion_tokens)
            _, finish = shaper.finish(out.finish_reason)
            reasoning_tokens += shaper.reasoning_tokens
            choices.append(ChatChoice(index=i, message=shaper.collected.message(),
                                      finish_reason=finish,  # type: ignore[arg-type]
                                      logprobs=None if out.logprobs is None else chat_logprobs(out.logprobs)))
        return ChatCompletion(model=request.model, choices=choices,
                              usage=self._usage(prepared, sum(out.completion_tokens for out in outputs),
                                                reasoning_tokens))

    def _shaper(self, prepared: _Prepared) -> ChatOutputShaper:
        return ChatOutputShaper(parse_tools=prepared.parse_tools, reasoning=prepared.reasoning,
                                reasoning_open=prepared.reasoning_open,
                                exclude_reasoning=prepared.exclude_reasoning)

    def _usage(self, prepared: _Prepared, completion_tokens: int, reasoning_tokens: int = 0) -> Usage:
        """No prefix cache here: ``cached_tokens`` is 0."""
        return Usage.of(prepared.prompt_tokens, completion_tokens,
                        reasoning_tokens=reasoning_tokens if self._thinks else None)

    async def chat_stream(self, request: ChatCompletionRequest) -> AsyncIterator[ChatCompletionChunk]:
        prepared = await self._prepare_chat(request)
        chunk_id, created = new_id("chatcmpl"), now()

        def chunk(choices: list[ChatChunkChoice], usage: Usage | None = None) -> ChatCompletionChunk:
            return ChatCompletionChunk(id=chunk_id, created=created, model=request.model,
                                       choices=choices, usage=usage)

        completion_tokens = 0
        shapers: dict[int, ChatOutputShaper] = {}
        async with aclosing(self._generate(prepared)) as stream:
            async for event in stream:
                shaper = shapers.get(event.index)
                announce = shaper is None
                if shaper is None:
                    shaper = shapers[event.index] = self._shaper(prepared)
                delta = shaper.feed(event.text, event.tokens)
                finish = None
                if event.finish_reason is not None:
                    completion_tokens += event.completion_tokens
                    tail, finish = shaper.finish(event.finish_reason)
                    delta = merge_deltas(delta, tail)
                logprobs = None if event.logprobs is None else chat_logprobs(event.logprobs)
                if delta is None and not announce and logprobs is None and finish is None:
                    continue
                delta = delta or ChatDelta(content="")
                if announce:
                    delta.role = "assistant"
                yield chunk([ChatChunkChoice(index=event.index, delta=delta, logprobs=logprobs,
                                             finish_reason=finish)])  # type: ignore[arg-type]
        if request.wants_usage_in_stream():
            reasoning_tokens = sum(s.reasoning_tokens for s in shapers.values())
            yield chunk([], self._usage(prepared, completion_tokens, reasoning_tokens))

    async def _prepare_chat(self, request: ChatCompletionRequest) -> _Prepared:
        self._check_model(request.model)
        self._require_started()
        plan = plan_output(request)
        if (plan.constrained or plan.parse_tools) and self._grammars is None:
            raise InvalidRequestError("This node cannot enforce tools or response_format: its tokenizer "
                                      "is not a fast (Rust) tokenizer.", param="tools" if plan.tools else
                                      "response_format")
        if request.top_logprobs and not request.logprobs:
            raise InvalidRequestError("top_logprobs needs logprobs set to true.", param="top_logprobs")
        if any(m.has_non_text_parts() for m in request.messages):
            raise InvalidRequestError("This node accepts text content only.", param="messages")
        params = sampling_params(request, ignore_eos=self._ignore_eos)
        if plan.constrained:
            params = replace(params, stop=())
        tools = [tool.model_dump(exclude_none=True) for tool in request.tools or []]
        thinking = request.reasoning is None or (request.reasoning.enabled is not False
                                                 and request.reasoning.effort != "none")
        prompt_text, prompt_ids = await asyncio.to_thread(self._render_chat, request.messages, tools,
                                                          thinking)
        prepared = self._prepared([prompt_ids], params, [""], param="messages",
                                  logprobs=(request.top_logprobs or 0) if request.logprobs else None)
        prepared.parse_tools = plan.parse_tools
        prepared.reasoning = self._thinks and not plan.constrained
        prepared.reasoning_open = prompt_text.rstrip().endswith("<think>")
        prepared.exclude_reasoning = bool(request.reasoning and request.reasoning.exclude)
        spec = grammar_spec(plan, prepared.max_new_tokens)
        if spec is not None:
            if not spec.fits:
                log.info("grammar_exceeds_budget", node=self.name, max_bytes=spec.max_bytes,
                         budget=prepared.max_new_tokens)
            prepared.grammars = await asyncio.to_thread(
                lambda: [self._grammars.state(spec) for _ in range(params.n)])
        return prepared

    def _encode_chat(self, messages: list[ChatMessage]) -> list[int]:
        return self._render_chat(messages)[1]

    def _render_chat(self, messages: list[ChatMessage], tools: list[dict[str, Any]] | None = None,
                     thinking: bool = True) -> tuple[str, list[int]]:
        """The prompt text (the template given the tools; ``enable_thinking`` false when the
        request turned reasoning off, for templates that read it) and its token ids."""
        extra = {} if thinking else {"enable_thinking": False}
        with self._encode_lock:
            text = render_chat(self._encoder, messages, tools=tools, **extra)
            return text, list(self._encoder(text, add_special_tokens=False).input_ids)

    # ------------------------------------------------------------------ text completions

    async def complete(self, request: CompletionRequest) -> Completion:
        prepared = await self._prepare_completion(request)
        outputs = await self._collect(prepared)
        return Completion(
            model=request.model,
            choices=[CompletionChoice(index=i, text=self._echo(prepared, request, i) + out.text,
                                      finish_reason=out.finish_reason,  # type: ignore[arg-type]
                                      logprobs=None if out.logprobs is None
                                      else completion_logprobs(out.logprobs)[0])
                     for i, out in enumerate(outputs)],
            usage=Usage.of(prepared.prompt_tokens, sum(out.completion_tokens for out in outputs)),
        )

    async def complete_stream(self, request: CompletionRequest) -> AsyncIterator[CompletionChunk]:
        prepared = await self._prepare_completion(request)
        chunk_id, created = new_id("cmpl"), now()
        completion_tokens = 0
        echoed: set[int] = set()
        offsets: dict[int, int] = {}  # per choice: where its next logprobs run starts
        async with aclosing(self._generate(prepared)) as stream:
            async for event in stream:
                text = event.text
                if event.index not in echoed:
                    echoed.add(event.index)
                    text = self._echo(prepared, request, event.index) + text
                if event.finish_reason is not None:
                    completion_tokens += event.completion_tokens
                logprobs = None
                if event.logprobs is not None:
                    logprobs, offsets[event.index] = completion_logprobs(
                        event.logprobs, text_offset=offsets.get(event.index, 0))
                yield CompletionChunk(id=chunk_id, created=created, model=request.model, choices=[
                    CompletionChoice(index=event.index, text=text, logprobs=logprobs,
                                     finish_reason=event.finish_reason)])  # type: ignore[arg-type]
        if request.wants_usage_in_stream():
            yield CompletionChunk(id=chunk_id, created=created, model=request.model, choices=[],
                                  usage=Usage.of(prepared.prompt_tokens, completion_tokens))

    async def _prepare_completion(self, request: CompletionRequest) -> _Prepared:
        self._check_model(request.model)
        self._require_started()
        if request.suffix:
            raise InvalidRequestError("This node does not support suffix (insertion).", param="suffix")
        if request.logprobs is not None and request.echo:
            raise InvalidRequestError("This node does not return the prompt's logprobs (echo with "
                                      "logprobs).", param="echo")
        if request.best_of is not None and request.best_of != request.n:
            raise InvalidRequestError("This node supports best_of only equal to n.", param="best_of")
        params = sampling_params(request, ignore_eos=self._ignore_eos)
        texts = request.prompts()
        prompts = await asyncio.to_thread(self._encode_texts, texts)
        return self._prepared(prompts, params, texts, param="prompt", logprobs=request.logprobs)

    def _encode_texts(self, texts: list[str]) -> list[list[int]]:
        with self._encode_lock:
            return [list(ids) for ids in self._encoder(texts, add_special_tokens=True).input_ids]

    async def count_tokens(self, prompt: str | MessageSequence[ChatMessage]) -> int | None:
        """Prompt tokens with this node's tokenizer (and chat template for messages), counted the
        way a request is encoded; None before the tokenizer is loaded."""
        if not self._started or self._encoder is None:
            return None
        if isinstance(prompt, str):
            return len((await asyncio.to_thread(self._encode_texts, [prompt]))[0])
        return len(await asyncio.to_thread(self._encode_chat, list(prompt)))

    @staticmethod
    def _echo(prepared: _Prepared, request: CompletionRequest, choice: int) -> str:
        return prepared.prompt_texts[choice // prepared.params.n] if request.echo else ""

    # ------------------------------------------------------------------ embeddings

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        self._check_model(request.model)
        self._require_started()
        hidden = self._model.config.hidden_size
        if request.dimensions is not None and request.dimensions > hidden:
            raise InvalidRequestError(f"dimensions must be at most {hidden} for this model.",
                                      param="dimensions")
        inputs = await asyncio.to_thread(self._encode_embedding_inputs, request)
        for ids in inputs:
            if len(ids) > self._context_length:
                raise ContextLengthExceededError(
                    f"An input has {len(ids)} tokens; this model's context is {self._context_length}.")
        budget = int(self.config.options.get("max_embedding_tokens", DEFAULT_MAX_EMBEDDING_TOKENS))
        total = sum(len(ids) for ids in inputs)
        if total > budget:
            raise InvalidRequestError(f"The inputs hold {total} tokens; this node embeds at most {budget} "
                                      "per request: split them over several requests.", param="input")
        # One slice per call on the worker thread: decode steps of running generations go on
        # between two slices instead of waiting for the whole request.
        size = int(self.config.options.get("embedding_batch_size", 16))
        vectors: list[Any] = []
        for start in range(0, len(inputs), size):
            part = inputs[start:start + size]
            vectors += await asyncio.wrap_future(self._batcher.call(lambda part=part: self._embed_now(part)))
        data = []
        for index, vector in enumerate(vectors):
            if request.dimensions is not None:
                vector = vector[:request.dimensions]
                vector = vector / vector.norm().clamp(min=1e-12)
            if request.encoding_format == "base64":
                raw = vector.float().numpy().astype("<f4").tobytes()
                data.append(Embedding(index=index, embedding=base64.b64encode(raw).decode("ascii")))
            else:
                data.append(Embedding(index=index, embedding=vector.tolist()))
        tokens = sum(len(ids) for ids in inputs)
        return EmbeddingResponse(data=data, model=request.model,
                                 usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens))

    def _encode_embedding_inputs(self, request: EmbeddingRequest) -> list[list[int]]:
        token_lists = request.token_lists()
        if token_lists is not None:
            vocab = self._model.get_input_embeddings().weight.shape[0]
            if any(not 0 <= t < vocab for ids in token_lists for t in ids):
                raise InvalidRequestError(f"Token ids must lie in [0, {vocab}).", param="input")
            if any(not ids for ids in token_lists):
                raise InvalidRequestError("An input is empty.", param="input")
            return token_lists
        texts = request.texts() or []
        with self._encode_lock:
            encoded = [list(ids) for ids in self._encoder(texts, add_special_tokens=True).input_ids]
        if any(not ids for ids in encoded):
            raise InvalidRequestError("An input is empty.", param="input")
        return encoded

    def _embed_now(self, inputs: list[list[int]]) -> list[Any]:
        """On the worker thread: pooled vectors in input order, in bounded sub-batches."""
        from blueprint.llm.engines._hf_batching import mean_pooled_embeddings

        size = int(self.config.options.get("embedding_batch_size", 16))
        pad_id = self._encoder.pad_token_id or 0
        vectors: list[Any] = []
        for start in range(0, len(inputs), size):
            vectors.extend(mean_pooled_embeddings(self._model, inputs[start:start + size], pad_id).cpu())
        return vectors

    # ------------------------------------------------------------------ shared generation path

    def _check_model(self, model: str) -> None:
        if model != self.config.model:
            raise ModelNotFoundError(model)

    def _require_started(self) -> None:
        if not self._started or self._batcher is None:
            raise BackendError(f"Node {self.name!r} is not started.")

    def _prepared(self, prompts: list[list[int]], params: SamplingParams, texts: list[str], *,
                  param: str, logprobs: int | None = None) -> _Prepared:
        """Checks the context and caps the output length; no compute happened yet."""
        if any(not p for p in prompts):
            raise InvalidRequestError("The prompt is empty once tokenized.", param=param)
        longest = max(len(p) for p in prompts)
        if longest + 1 > self._context_length:
            raise ContextLengthExceededError(
                f"The prompt has {longest} tokens; this model's context is {self._context_length} "
                f"tokens and at least one must be left for the answer.", param=param)
        room = self._context_length - longest
        cap = params.max_tokens if params.max_tokens is not None else room
        if self.config.max_output_tokens is not None:
            cap = min(cap, self.config.max_output_tokens)
        return _Prepared(prompts=prompts, params=params, max_new_tokens=max(1, min(cap, room)),
                         prompt_texts=texts, logprobs=logprobs)

    async def _collect(self, prepared: _Prepared) -> list[_Output]:
        texts: dict[int, list[str]] = {}
        logprobs: dict[int, list[TokenLogprob]] = {}
        outputs: dict[int, _Output] = {}
        async with aclosing(self._generate(prepared)) as stream:
            async for event in stream:
                texts.setdefault(event.index, []).append(event.text)
                if event.logprobs is not None:
                    logprobs.setdefault(event.index, []).extend(event.logprobs)
                if event.finish_reason is not None:
                    outputs[event.index] = _Output(
                        "".join(texts[event.index]), event.finish_reason, event.completion_tokens,
                        None if prepared.logprobs is None else logprobs.get(event.index, []))
        return [outputs[i] for i in sorted(outputs)]

    async def _generate(self, prepared: _Prepared) -> AsyncIterator[Any]:
        """Submit one sequence per (prompt, choice) and yield their events as they come.

        Leaving early (the consumer closed the stream or was cancelled) cancels the unfinished
        sequences, which the worker drops from the batch before its next step."""
        from blueprint.llm.engines._hf_batching import Sequence

        self._require_started()
        params = prepared.params
        count = len(prepared.prompts) * params.n
        limit = self.config.max_batch_size + self.config.max_queue
        if count > limit:
            raise InvalidRequestError(f"The request asks for {count} sequences (prompts x n); this node "
                                      f"holds at most {limit}.", param="n")
        if self._outstanding + count > limit:
            raise OverloadedError(f"Node {self.name!r} has {self._outstanding} sequences outstanding "
                                  f"(limit {limit}); retry shortly.")
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Any] = asyncio.Queue()

        def emit(event: Any) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the consumer's loop is gone: nobody is left to tell
                pass

        seqs = []
        for p, prompt in enumerate(prepared.prompts):
            for j in range(params.n):
                index = p * params.n + j
                seed = None if params.seed is None else params.seed + index
                seq_params = params if seed == params.seed else replace(params, seed=seed)
                seqs.append(Sequence(index, prompt, prepared.max_new_tokens, seq_params, emit,
                                     logprobs=prepared.logprobs,
                                     grammar=None if prepared.grammars is None else prepared.grammars[index]))
        self._outstanding += count
        started_at = self._tracker.started()
        first_token_at: float | None = None
        unfinished = {seq.index: seq for seq in seqs}
        completion_tokens, failed = 0, False
        try:
            for seq in seqs:
                self._batcher.submit(seq)
            while unfinished:
                event = await events.get()
                if event.error is not None:
                    failed = True
                    raise (event.error if isinstance(event.error, BlueprintError)
                           else BackendError(str(event.error)))
                if first_token_at is None and (event.text or event.finish_reason):
                    self._tracker.first_token(started_at)
                    first_token_at = time.perf_counter()
                if event.finish_reason is not None:
                    unfinished.pop(event.index, None)
                    completion_tokens += event.completion_tokens
                yield event
        finally:
            for seq in unfinished.values():
                self._batcher.cancel(seq)
            self._outstanding -= count
            self._tracker.finished(started_at, prompt_tokens=prepared.prompt_tokens,
                                   completion_tokens=completion_tokens, first_token_at=first_token_at,
                                   error=failed)


def _grammar_compiler(tokenizer: Any, eos: set[int], vocab_size: int) -> Any:
    """The engine's llguidance compiler; None (tools and structured outputs off) where the
    library is missing or the tokenizer is not a fast one."""
    try:
        from blueprint.llm.grammar import GrammarCompiler
    except ImportError:
        log.warning("grammar_library_missing", hint="pip install llguidance for tools and JSON output")
        return None
    if not GrammarCompiler.supports(tokenizer):
        log.warning("grammar_unsupported_tokenizer", hint="tools and JSON output need a fast tokenizer")
        return None
    return GrammarCompiler(tokenizer, eos_token_ids=eos, vocab_size=vocab_size)


def _model_created(path: Path) -> int:
    """When the model's files were written (``config.json``'s mtime): a ``created`` that stays the
    same across calls and restarts; the start time where there is no such file."""
    try:
        return int((path / "config.json").stat().st_mtime)
    except (OSError, ValueError):  # ValueError: a path the OS cannot take
        return now()
