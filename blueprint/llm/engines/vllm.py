"""vLLM in-process: its async engine (``vllm.AsyncLLMEngine``, which is the V1 ``AsyncLLM`` in
current releases) driven directly, without an HTTP hop.

Thin on purpose: vLLM already batches continuously, caches prefixes and schedules; this module
only maps our wire types onto ``vllm.SamplingParams``/``PoolingParams``, renders chat prompts
with the tokenizer's chat template, and turns vLLM's ``RequestOutput`` deltas into our chunks.

vLLM needs a CUDA GPU and the ``vllm`` extra (``pip install 'tangle-llm-blueprint[vllm]'``); it is
imported lazily when a vLLM node is *configured*, so a machine without it fails at configuration
time with that advice, and nodes of other engines never import it. There is no CPU wheel, so only
the pure mapping below and the missing-vLLM path are tested here.

Logprobs (chat ``logprobs``/``top_logprobs``, completions ``logprobs``, streamed or not) are vLLM's
own, laid out by :mod:`blueprint.llm.logprobs` exactly as the transformers engine lays out its
own (:func:`output_logprobs` says which distribution they describe and where texts and bytes come
from). Like the rest of this engine they are tested here only through the pure mapping.

Engine settings: the typed ``[nodes.vllm]`` table (:class:`~blueprint.llm.config.VllmSettings`:
GPU memory share, tensor and pipeline parallel sizes, the distributed executor, quantization,
prefix caching...), ``context_length`` as ``max_model_len`` and ``max_batch_size`` as
``max_num_seqs``; ``options.engine_args`` passes anything else to ``AsyncEngineArgs`` as is
(:func:`engine_args` builds the whole set). The engine is built in a worker thread (loading
weights takes minutes and must not stall the event loop: vLLM's ``AsyncLLM`` starts its output
handler on the first request when built outside the loop). vLLM's request-validation errors
(``ValueError``/``TypeError``) become 400s and never count against the node's breaker
(:func:`map_engine_error`); ``scripts/check_vllm_signatures.py`` checks these calls against an
installed vLLM.

Tools and structured outputs (**not run here**, like the rest of this engine): a request is
planned as in the transformers engine (:mod:`blueprint.llm.structured`) and its bounded grammar
goes to vLLM as ``SamplingParams.structured_outputs`` (``StructuredOutputsParams``: ``json`` for
a response format, a Lark ``grammar`` with embedded ``%json`` for ``required``/named tool calls).
Those grammars are llguidance's, so the engine starts vLLM with the ``guidance`` structured-output
backend unless ``engine_args`` chooses another. The chat template gets the tools; the text vLLM
returns goes through the same :class:`ChatOutputShaper` (tool-call blocks, ``<think>`` reasoning,
``finish_reason: "tool_calls"``); ``num_cached_tokens`` becomes ``usage.prompt_tokens_details``.
Because none of this has run on a GPU here, the node does not *declare* tools or structured
outputs in ``/v1/models`` unless its options say so (``tools``, ``json_mode``,
``structured_outputs``, ``reasoning``: set them once verified on your GPU).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import structlog

from blueprint.errors import (
    BackendError,
    BlueprintError,
    ContextLengthExceededError,
    InvalidRequestError,
    ModelNotFoundError,
)
from blueprint.llm.chat_output import ChatOutputShaper, merge_deltas
from blueprint.llm.chat_template import template_message
from blueprint.llm.client import Capabilities, LlmClient, MetricsTracker, NodeMetrics
from blueprint.llm.config import NodeConfig
from blueprint.llm.engines._hf_text import TokenPieces
from blueprint.llm.logprobs import LOGPROB_FLOOR, TokenLogprob, TopLogprob, chat_logprobs, completion_logprobs
from blueprint.llm.structured import OutputPlan, grammar_spec, plan_output
from blueprint.llm.types import (
    DEFAULT_SAMPLING_PARAMETERS,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    ChatMessage,
    ChoiceLogprobs,
    Completion,
    CompletionChoice,
    CompletionChunk,
    CompletionLogprobs,
    CompletionRequest,
    CompletionTokensDetails,
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


def structured_outputs_kwargs(plan: OutputPlan | None, max_tokens: int) -> dict[str, Any] | None:
    """Keyword arguments for ``vllm.sampling_params.StructuredOutputsParams``: the same bounded
    grammar the transformers engine enforces (finishes valid within ``max_tokens`` or not at
    all), as ``json`` or as a Lark ``grammar`` (vLLM's ``guidance`` backend); None: free text."""
    spec = None if plan is None else grammar_spec(plan, max_tokens)
    if spec is None:
        return None
    if spec.kind == "json":
        return {"json": json.loads(spec.source)}
    return {"grammar": spec.source}


def sampling_kwargs(request: ChatCompletionRequest | CompletionRequest, max_tokens: int,
                    plan: OutputPlan | None = None) -> dict[str, Any]:
    """Keyword arguments for ``vllm.SamplingParams`` from one of our requests (pure, so it can
    be tested without vLLM). Unset fields keep vLLM's defaults. A constrained ``plan`` adds
    ``structured_outputs`` (the kwargs of ``StructuredOutputsParams``) and drops stop strings
    (they would cut a valid answer short)."""
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
    wanted = requested_logprobs(request)
    if wanted is not None:
        kwargs["logprobs"] = wanted
    structured = structured_outputs_kwargs(plan, max_tokens)
    if structured is not None:
        kwargs["structured_outputs"] = structured
        kwargs.pop("stop", None)
    return kwargs


def requested_logprobs(request: ChatCompletionRequest | CompletionRequest) -> int | None:
    """Alternatives per token the request asks for (0: the sampled token's logprob only), or
    None when it asks for no logprobs: chat's ``top_logprobs`` once ``logprobs`` is true,
    completions' ``logprobs``. It is both what vLLM is asked for and how many we report."""
    if isinstance(request, ChatCompletionRequest):
        return (request.top_logprobs or 0) if request.logprobs else None
    return request.logprobs


def check_logprobs_request(request: ChatCompletionRequest | CompletionRequest) -> None:
    """Refuse logprob requests this engine cannot honour, as the transformers engine does:
    ``top_logprobs`` without ``logprobs`` (OpenAI rejects it too), and ``echo`` with ``logprobs``
    (that needs the prompt's logprobs, which are not asked of vLLM)."""
    if isinstance(request, ChatCompletionRequest):
        if request.top_logprobs and not request.logprobs:
            raise InvalidRequestError("top_logprobs needs logprobs set to true.", param="top_logprobs")
    elif request.logprobs is not None and request.echo:
        raise InvalidRequestError("This node does not return the prompt's logprobs (echo with "
                                  "logprobs).", param="echo")


def output_logprobs(output: Any, pieces: TokenPieces, top: int) -> list[TokenLogprob] | None:
    """Our per-token logprobs from one vLLM ``CompletionOutput`` (duck-typed, so no vLLM import):
    one :class:`TokenLogprob` per id of ``output.token_ids`` (with ``RequestOutputKind.DELTA``,
    the new ids only, and ``output.logprobs`` then holds the same new steps), with the ``top``
    most likely alternatives, most likely first. Call it only when logprobs were asked for; None
    when vLLM returned none for an output without tokens (a DELTA step that only ends a choice).

    ``output.logprobs`` is vLLM's ``SampleLogprobs``: per step a ``dict[token id, Logprob]``
    holding the top-k and the sampled token (``k + 1`` entries when the sampled one is not
    among the top-k); ``Logprob`` has ``logprob``, ``rank`` (1 = most likely) and
    ``decoded_token``. The alternatives are the first ``top`` entries sorted by logprob, ties
    broken by rank: a sampled token outside the top-k has a lower logprob than the k-th, or an
    equal one and a larger rank, so it is never reported as one of them.

    The values are what vLLM computed: by default (``logprobs_mode="raw_logprobs"``) the raw
    model distribution, before temperature, penalties, logit bias and top-k/top-p, unlike the
    transformers engine, which reports the processed distribution each token was sampled from.
    ``-inf`` is floored at :data:`LOGPROB_FLOOR` (not JSON otherwise), as vLLM's server does.

    Token texts and bytes come from the token ids through ``pieces``, not from
    ``decoded_token``, which may be None (detokenization off) or U+FFFD for a token that holds
    part of a UTF-8 character, whose bytes OpenAI's ``bytes`` field exists to give; this also
    makes them identical to the transformers engine's for the same tokenizer.

    Raises BackendError when vLLM's answer is inconsistent (a step missing, or the sampled token
    absent from its step), rather than reporting made-up values."""
    token_ids = list(output.token_ids)
    steps = output.logprobs
    if steps is None:
        if token_ids:
            raise BackendError("vLLM returned no logprobs although they were asked for.")
        return None
    steps = list(steps)
    if len(steps) != len(token_ids):
        raise BackendError(f"vLLM returned logprobs for {len(steps)} steps but {len(token_ids)} tokens.")
    tokens: list[TokenLogprob] = []
    for token_id, step in zip(token_ids, steps, strict=True):
        sampled = step.get(token_id)
        if sampled is None:
            raise BackendError(f"vLLM's logprobs lack the sampled token {token_id}.")
        candidates = sorted(((int(i), lp) for i, lp in step.items()), key=_likeliest_first)
        alternatives = tuple(TopLogprob(*pieces.get(i), _floored(lp.logprob)) for i, lp in candidates[:top])
        tokens.append(TokenLogprob(*pieces.get(int(token_id)), _floored(sampled.logprob), alternatives))
    return tokens


def _floored(value: float) -> float:
    return max(float(value), LOGPROB_FLOOR)


def _likeliest_first(item: tuple[int, Any]) -> tuple[float, float, int]:
    """Sort key of a step's (token id, Logprob): logprob descending, then rank, then id."""
    token_id, logprob = item
    return -_floored(logprob.logprob), logprob.rank if logprob.rank is not None else float("inf"), token_id


@dataclass(slots=True)
class StreamPiece:
    """One chunk's worth of one choice: its text delta, finish reason, whether it is the
    choice's first chunk (where chat announces the role), and the logprobs of the tokens
    generated since the choice's previous chunk (None when none were asked for)."""

    index: int
    text: str
    finish_reason: str | None
    first: bool
    logprobs: list[TokenLogprob] | None = None
    #: Tokens generated since the choice's previous piece.
    tokens: int = 0


class DeltaAssembler:
    """Turns the ``RequestOutputKind.DELTA`` outputs of one vLLM request into stream pieces.

    vLLM reports every step, often with no new text (a token holding half a character, or text
    held back while it may begin a stop string); such steps produce no chunk, but their tokens'
    logprobs are kept and sent with the choice's next chunk, so that the streamed logprobs
    concatenate to the non-streamed ones (one entry per generated token)."""

    def __init__(self, pieces: TokenPieces | None, top: int | None) -> None:
        self._pieces = pieces
        self._top = top
        self._pending: dict[int, list[TokenLogprob]] = {}
        self._seen: set[int] = set()
        self._unsent: dict[int, int] = {}
        #: Tokens generated so far over all choices.
        self.produced = 0
        #: Prompt tokens vLLM reused from its prefix cache (``RequestOutput.num_cached_tokens``).
        self.cached = 0

    def push(self, output: Any) -> StreamPiece | None:
        """Account for one ``CompletionOutput`` delta; the piece to send, or None for now."""
        self.produced += len(output.token_ids)
        self._unsent[output.index] = self._unsent.get(output.index, 0) + len(output.token_ids)
        if self._top is not None:
            assert self._pieces is not None
            self._pending.setdefault(output.index, []).extend(
                output_logprobs(output, self._pieces, self._top) or [])
        if not output.text and output.finish_reason is None:
            return None
        first = output.index not in self._seen
        self._seen.add(output.index)
        logprobs = None if self._top is None else self._pending.pop(output.index, [])
        return StreamPiece(output.index, output.text, map_finish_reason(output.finish_reason), first,
                           logprobs, self._unsent.pop(output.index, 0))


def render_chat_fallback(messages: list[ChatMessage]) -> str:
    """The prompt for tokenizers without a chat template: one ``role: text`` line per message,
    then ``assistant:`` for the model to continue."""
    return "".join(f"{m.role}: {m.text()}\n" for m in messages) + "assistant:"


def engine_args(config: NodeConfig) -> dict[str, Any]:
    """Keyword arguments of ``vllm.AsyncEngineArgs`` for a node (pure, tested without vLLM):
    the model and limits from the node, the typed ``[nodes.vllm]`` values that are set, then
    ``options.engine_args`` as is."""
    args: dict[str, Any] = {"model": config.path or config.model, "served_model_name": config.model,
                            "dtype": config.dtype, "max_num_seqs": config.max_batch_size}
    if config.context_length:
        args["max_model_len"] = config.context_length
    args.update(config.vllm.model_dump(exclude_none=True))
    args.update(config.options.get("engine_args", {}))
    if "structured_outputs_config" not in args:
        try:  # our grammars are llguidance's: vLLM's "guidance" backend (module docstring)
            from vllm.config import StructuredOutputsConfig
        except ImportError:
            log.warning("vllm_structured_outputs_config_missing",
                        hint="this vLLM predates StructuredOutputsConfig; tools and JSON output may fail")
        else:
            args["structured_outputs_config"] = StructuredOutputsConfig(backend="guidance")
    return args


#: Substrings of vLLM's messages for a prompt longer than the model's context.
_CONTEXT_MESSAGES = ("maximum context length", "maximum model length", "longer than the maximum",
                     "max_model_len")


def map_engine_error(exc: BaseException, node: str) -> BlueprintError:
    """One of our errors for an exception vLLM raised on a request. Validation errors
    (``ValueError`` and ``TypeError``, vLLM's way to refuse a request's parameters) are the
    client's: 400, or 413 for a prompt past the context, never retried or counted against the
    node's breaker. Anything else (``EngineDeadError``, ``EngineGenerateError``...) is the node's:
    a 502 the balancer may retry elsewhere."""
    if isinstance(exc, BlueprintError):
        return exc
    if isinstance(exc, (ValueError, TypeError)):
        message = str(exc) or type(exc).__name__
        if any(text in message.lower() for text in _CONTEXT_MESSAGES):
            return ContextLengthExceededError(message)
        return InvalidRequestError(message)
    return BackendError(f"vLLM node {node!r} failed: {exc!r}")


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
        self._pieces: TokenPieces | None = None
        self._max_model_len = config.context_length or 2048
        self._pooling = False

    # -------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Build the engine (loads weights onto the GPU, minutes for a large model)."""
        if self._engine is not None:
            return
        try:
            built_args = self._vllm.AsyncEngineArgs(**engine_args(self.config))
        except (TypeError, ValueError) as exc:
            raise InvalidRequestError(f"vLLM node {self.name!r}: bad engine arguments: {exc}",
                                      code="bad_engine_args") from exc
        # minutes of weight loading: in a worker thread, so the event loop keeps serving
        self._engine = await asyncio.to_thread(self._vllm.AsyncLLMEngine.from_engine_args, built_args)
        model_config = getattr(self._engine, "model_config", None)
        if model_config is None:  # older engines expose it through a coroutine
            model_config = await _maybe_await(self._engine.get_model_config)
        self._max_model_len = int(getattr(model_config, "max_model_len", self._max_model_len))
        runner = getattr(model_config, "runner_type", None) or getattr(model_config, "task", None)
        self._pooling = runner in ("pooling", "embed", "embedding")
        self._tokenizer = await _maybe_await(self._engine.get_tokenizer)
        self._pieces = TokenPieces(self._tokenizer)
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
            supported_sampling_parameters=[*DEFAULT_SAMPLING_PARAMETERS, "logit_bias", "logprobs",
                                           "top_logprobs"],
            supported_features=self.capabilities().features(),
            endpoints=["embedding"] if self._pooling else ["chat", "completion"],
        )]

    def capabilities(self) -> Capabilities:
        opts, chat = self.config.options, not self._pooling
        return Capabilities(chat=chat, completion=chat, embeddings=self._pooling, logprobs=True,
                            tools=chat and bool(opts.get("tools", False)),
                            json_mode=chat and bool(opts.get("json_mode", False)),
                            structured_outputs=chat and bool(opts.get("structured_outputs", False)),
                            reasoning=chat and bool(opts.get("reasoning", False)),
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
        return self._chat_prompt_text(request)[1]

    def _chat_prompt_text(self, request: ChatCompletionRequest) -> tuple[str, list[int]]:
        """The prompt (the template given the tools, with assistant calls and tool answers) and
        its token ids."""
        if getattr(self._tokenizer, "chat_template", None):
            messages = []
            for m in request.messages:
                message = template_message(m)
                if m.role == "developer":  # OpenAI's newer name for "system", which templates know
                    message["role"] = "system"
                messages.append(message)
            tools = [tool.model_dump(exclude_none=True) for tool in request.tools or []] or None
            text = self._tokenizer.apply_chat_template(messages, tools=tools, tokenize=False,
                                                       add_generation_prompt=True)
            return text, self._encode(text, special=False)
        text = render_chat_fallback(request.messages)
        return text, self._encode(text, special=True)

    def _shaper(self, request: ChatCompletionRequest, plan: OutputPlan, prompt_text: str) -> ChatOutputShaper:
        thinks = bool(self.config.options.get("reasoning", False)) and not plan.constrained
        return ChatOutputShaper(parse_tools=plan.parse_tools, reasoning=thinks,
                                reasoning_open=prompt_text.rstrip().endswith("<think>"),
                                exclude_reasoning=bool(request.reasoning and request.reasoning.exclude))

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
                *, stream: bool, plan: OutputPlan | None = None) -> Any:
        from vllm.sampling_params import RequestOutputKind

        kind = RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY
        kwargs = sampling_kwargs(request, max_tokens, plan)
        try:
            if "structured_outputs" in kwargs:
                from vllm.sampling_params import StructuredOutputsParams

                kwargs["structured_outputs"] = StructuredOutputsParams(**kwargs["structured_outputs"])
            return self._vllm.SamplingParams(output_kind=kind, **kwargs)
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
        except Exception as exc:  # validation errors -> 400/413; engine errors -> 502
            raise map_engine_error(exc, self.name) from exc
        finally:
            if not finished:
                await engine.abort(request_id)

    async def _final(self, prompt: list[int], params: Any) -> tuple[Any, int]:
        """Run one prompt to its end: vLLM's final ``RequestOutput`` and the tokens it produced
        (all choices), with the node's metrics kept (an error counts as one)."""
        started = self._tracker.started()
        final = None
        try:
            async for output in self._generate(prompt, params):
                final = output
        except BaseException:
            self._tracker.finished(started, prompt_tokens=len(prompt), completion_tokens=0, error=True)
            raise
        if final is None:
            raise BackendError("vLLM ended the request without any output.")
        produced = sum(len(o.token_ids) for o in final.outputs)
        self._tracker.first_token(started)
        self._tracker.finished(started, prompt_tokens=len(prompt), completion_tokens=produced)
        return final, produced

    # -------------------------------------------------------------------------- chat

    async def chat(self, request: ChatCompletionRequest) -> ChatCompletion:
        self._require(request.model)
        check_logprobs_request(request)
        plan = plan_output(request)
        top = requested_logprobs(request)
        prompt_text, prompt = self._chat_prompt_text(request)
        params = self._params(request, self._budget(prompt, request.requested_max_tokens()), stream=False,
                              plan=plan)
        final, completion = await self._final(prompt, params)
        choices, reasoning_tokens = [], 0
        for o in final.outputs:
            shaper = self._shaper(request, plan, prompt_text)
            shaper.feed(o.text, len(o.token_ids))
            _, finish = shaper.finish(map_finish_reason(o.finish_reason))
            reasoning_tokens += shaper.reasoning_tokens
            choices.append(ChatChoice(index=o.index, message=shaper.collected.message(),
                                      finish_reason=finish,  # type: ignore[arg-type]
                                      logprobs=self._chat_logprobs(o, top)))
        return ChatCompletion(model=self.config.model, choices=choices,
                              usage=self._usage(len(prompt), completion, final, reasoning_tokens))

    def _usage(self, prompt_tokens: int, completion_tokens: int, output: Any,
               reasoning_tokens: int = 0) -> Usage:
        cached = getattr(output, "num_cached_tokens", None) or 0
        return Usage.of(prompt_tokens, completion_tokens, cached_tokens=int(cached),
                        reasoning_tokens=reasoning_tokens if self.config.options.get("reasoning") else None)

    async def chat_stream(self, request: ChatCompletionRequest) -> AsyncIterator[ChatCompletionChunk]:
        self._require(request.model)
        check_logprobs_request(request)
        plan = plan_output(request)
        prompt_text, prompt = self._chat_prompt_text(request)
        params = self._params(request, self._budget(prompt, request.requested_max_tokens()), stream=True,
                              plan=plan)
        chunk_id, created, model = new_id("chatcmpl"), now(), self.config.model
        shapers: dict[int, ChatOutputShaper] = {}
        async for piece in self._stream(prompt, params, requested_logprobs(request)):
            if isinstance(piece, Usage):
                if request.wants_usage_in_stream():
                    if self.config.options.get("reasoning"):
                        piece.completion_tokens_details = CompletionTokensDetails(
                            reasoning_tokens=sum(s.reasoning_tokens for s in shapers.values()))
                    yield ChatCompletionChunk(id=chunk_id, created=created, model=model, usage=piece)
                continue
            shaper = shapers.setdefault(piece.index, self._shaper(request, plan, prompt_text))
            delta = shaper.feed(piece.text, piece.tokens)
            finish = None
            if piece.finish_reason is not None:
                tail, finish = shaper.finish(piece.finish_reason)
                delta = merge_deltas(delta, tail)
            logprobs = None if piece.logprobs is None else chat_logprobs(piece.logprobs)
            if delta is None and not piece.first and logprobs is None and finish is None:
                continue
            delta = delta or ChatDelta(content="")
            if piece.first:
                delta.role = "assistant"
            yield ChatCompletionChunk(id=chunk_id, created=created, model=model, choices=[
                ChatChunkChoice(index=piece.index, delta=delta, logprobs=logprobs,
                                finish_reason=finish)])  # type: ignore[arg-type]

    # -------------------------------------------------------------------------- completions

    async def complete(self, request: CompletionRequest) -> Completion:
        self._require(request.model)
        check_logprobs_request(request)
        top = requested_logprobs(request)
        texts = request.prompts()
        prompts = [self._encode(text, special=True) for text in texts]
        # every prompt at once: vLLM batches them (one after another, each would wait for the last);
        # the first failure cancels the rest, which aborts their vLLM requests (``_generate``)
        tasks = [asyncio.ensure_future(self._final(
            prompt, self._params(request, self._budget(prompt, request.max_tokens), stream=False)))
            for prompt in prompts]
        try:
            finals = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        choices: list[CompletionChoice] = []
        prompt_total = sum(len(prompt) for prompt in prompts)
        completion_total = sum(produced for _, produced in finals)
        for p_index, (text, (final, _)) in enumerate(zip(texts, finals, strict=True)):
            for o in final.outputs:
                choices.append(CompletionChoice(
                    index=p_index * request.n + o.index, text=(text if request.echo else "") + o.text,
                    finish_reason=map_finish_reason(o.finish_reason),  # type: ignore[arg-type]
                    logprobs=self._completion_logprobs(o, top)))
        return Completion(model=self.config.model, choices=choices,
                          usage=Usage.of(prompt_total, completion_total))

    async def complete_stream(self, request: CompletionRequest) -> AsyncIterator[CompletionChunk]:
        self._require(request.model)
        check_logprobs_request(request)
        prompts = request.prompts()
        if len(prompts) != 1:
            raise InvalidRequestError("Streamed completions take one prompt.", param="prompt")
        prompt = self._encode(prompts[0], special=True)
        params = self._params(request, self._budget(prompt, request.max_tokens), stream=True)
        chunk_id, created, model = new_id("cmpl"), now(), self.config.model
        offsets: dict[int, int] = {}  # per choice: where its next logprobs run starts
        async for piece in self._stream(prompt, params, requested_logprobs(request)):
            if isinstance(piece, Usage):
                if request.wants_usage_in_stream():
                    yield CompletionChunk(id=chunk_id, created=created, model=model, usage=piece)
                continue
            text = piece.text
            if piece.first and request.echo:
                text = prompts[0] + text
            logprobs = None
            if piece.logprobs is not None:
                logprobs, offsets[piece.index] = completion_logprobs(
                    piece.logprobs, text_offset=offsets.get(piece.index, 0))
            yield CompletionChunk(id=chunk_id, created=created, model=model, choices=[
                CompletionChoice(index=piece.index, text=text, logprobs=logprobs,
                                 finish_reason=piece.finish_reason)])  # type: ignore[arg-type]

    async def _stream(self, prompt: list[int], params: Any,
                      top: int | None) -> AsyncIterator[StreamPiece | Usage]:
        """A :class:`StreamPiece` per vLLM delta that carries text or ends a choice (with the
        logprobs of its tokens when ``top`` is not None), then the Usage; vLLM's DELTA output
        kind gives only the new tokens of each step."""
        tracker = self._tracker
        started = tracker.started()
        first_at: float | None = None
        assembler = DeltaAssembler(self._pieces, top)
        failed = True
        try:
            async for output in self._generate(prompt, params):
                assembler.cached = int(getattr(output, "num_cached_tokens", None) or assembler.cached)
                for o in output.outputs:
                    piece = assembler.push(o)
                    if piece is None:
                        continue
                    if first_at is None:
                        first_at = time.perf_counter()
                        tracker.first_token(started)
                    yield piece
            failed = False
            yield Usage.of(len(prompt), assembler.produced, cached_tokens=assembler.cached)
        finally:
            tracker.finished(started, prompt_tokens=len(prompt), completion_tokens=assembler.produced,
                             first_token_at=first_at, error=failed)

    def _chat_logprobs(self, output: Any, top: int | None) -> ChoiceLogprobs | None:
        if top is None:
            return None
        assert self._pieces is not None
        tokens = output_logprobs(output, self._pieces, top)
        return None if tokens is None else chat_logprobs(tokens)

    def _completion_logprobs(self, output: Any, top: int | None) -> CompletionLogprobs | None:
        if top is None:
            return None
        assert self._pieces is not None
        tokens = output_logprobs(output, self._pieces, top)
        return None if tokens is None else completion_logprobs(tokens)[0]

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
        except ValueError as exc:
            raise map_engine_error(exc, self.name) from exc
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
            except Exception as exc:  # validation errors -> 400/413; engine errors -> 502
                raise map_engine_error(exc, self.name) from exc
            assert final is not None
            vector = EmbeddingRequestOutput.from_base(final).outputs.embedding
            data.append(Embedding(index=index, embedding=list(vector)))
        return EmbeddingResponse(data=data, model=self.config.model,
                                 usage=EmbeddingUsage(prompt_tokens=total, total_tokens=total))


async def _maybe_await(func: Any) -> Any:
    """Call ``func`` and await the result when vLLM's version made it a coroutine."""
    result = func()
    return await result if inspect.isawaitable(result) else result
