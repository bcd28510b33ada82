"""OpenAI-compatible wire types, shared by every engine, the HTTP server and the job codec.

A chat request is the same object whether it came from OpenRouter over HTTP or from a
``JobSubmitted`` log on chain.

Unknown fields, decided on purpose:

* **Requests ignore unknown fields.** OpenRouter and OpenAI SDKs add vendor fields (``provider``,
  ``transforms``, ``user``, ``metadata``, ``store``...) that do not change what we generate;
  rejecting them would break real clients. Known fields are validated strictly (ranges, types).
* **Responses and chunks keep unknown fields** (``extra="allow"``) so that an OpenAI-compatible
  backend's extras (vLLM's ``kv_transfer_params``, llama.cpp's ``timings``) pass through a proxy
  node untouched.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from blueprint.errors import InvalidRequestError

# --------------------------------------------------------------------------------------------
# Shared pieces


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class _Response(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


class PromptTokensDetails(_Response):
    #: Prompt tokens the engine reused from its cache (0 when it cannot tell).
    cached_tokens: int = 0


class CompletionTokensDetails(_Response):
    #: Completion tokens spent thinking (the text in ``reasoning``).
    reasoning_tokens: int = 0


class Usage(_Response):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None = None
    completion_tokens_details: CompletionTokensDetails | None = None

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int = 0, *, cached_tokens: int = 0,
           reasoning_tokens: int | None = None) -> Usage:
        """Usage as OpenRouter reads it: ``cached_tokens`` always (0 when the engine cannot
        tell), ``reasoning_tokens`` when the node can think."""
        return cls(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                   total_tokens=prompt_tokens + completion_tokens,
                   prompt_tokens_details=PromptTokensDetails(cached_tokens=cached_tokens),
                   completion_tokens_details=None if reasoning_tokens is None
                   else CompletionTokensDetails(reasoning_tokens=reasoning_tokens))


class StreamOptions(_Request):
    include_usage: StrictBool = False


class ResponseFormat(_Request):
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: dict[str, Any] | None = None


FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "error"]

#: Bounds every engine can honour: a seed a torch generator takes (vLLM takes any), and counts
#: that fit a 32-bit integer (more than any vocabulary or context).
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1
INT32_MAX = 2**31 - 1

#: Integers where compute or money is at stake are strict: ``"400"``, ``400.0`` and ``true`` are
#: refused, never coerced (a quote paid for 1 token once produced 83 through such a coercion).
MaxTokens = Annotated[StrictInt, Field(ge=1, le=INT32_MAX)]
TokenId = Annotated[StrictInt, Field(ge=0, le=INT32_MAX)]
#: Larger than any model's hidden size; an engine refuses more than its model has.
MAX_DIMENSIONS = 65_536
#: Inputs in one embeddings request (OpenAI's limit); engines bound the tokens too.
MAX_EMBEDDING_INPUTS = 2048

Temperature = Annotated[StrictFloat, Field(ge=0.0, le=2.0)]
TopP = Annotated[StrictFloat, Field(gt=0.0, le=1.0)]
Penalty = Annotated[StrictFloat, Field(ge=-2.0, le=2.0)]


class SamplingFields(_Request):
    """Sampling knobs common to chat and text completions (vLLM's extended set included)."""

    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: Annotated[StrictInt, Field(ge=-1, le=INT32_MAX)] | None = None
    min_p: Annotated[StrictFloat, Field(ge=0.0, le=1.0)] | None = None
    stop: str | list[str] | None = None
    seed: Annotated[StrictInt, Field(ge=SEED_MIN, le=SEED_MAX)] | None = None
    frequency_penalty: Penalty | None = None
    presence_penalty: Penalty | None = None
    repetition_penalty: Annotated[StrictFloat, Field(gt=0.0, le=10.0)] | None = None
    logit_bias: dict[str, Annotated[StrictFloat, Field(ge=-100.0, le=100.0)]] | None = None
    n: Annotated[StrictInt, Field(ge=1, le=16)] = 1
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list):
            if len(value) > 16:
                raise ValueError("at most 16 stop sequences")
            if any(not s for s in value):
                raise ValueError("stop sequences must be non-empty")
        elif value == "":
            raise ValueError("stop sequences must be non-empty")
        return value

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def wants_usage_in_stream(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


# --------------------------------------------------------------------------------------------
# Chat


class TextPart(_Request):
    type: Literal["text"] = "text"
    text: str


class ImageUrl(_Request):
    url: str
    detail: str | None = None


class ImagePart(_Request):
    type: Literal["image_url"] = "image_url"
    image_url: ImageUrl


class InputAudio(_Request):
    data: str
    format: str


class AudioPart(_Request):
    type: Literal["input_audio"] = "input_audio"
    input_audio: InputAudio


ContentPart = Annotated[TextPart | ImagePart | AudioPart, Field(discriminator="type")]


class FunctionCall(_Response):
    name: str
    arguments: str


class ToolCall(_Response):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    """One message of a conversation; ``content`` is a string or a list of content parts."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    #: The model's thinking (answers only; ignored in requests).
    reasoning: str | None = None

    @model_validator(mode="after")
    def _check_content(self) -> ChatMessage:
        if self.content is None and self.role != "assistant":
            raise ValueError(f"a {self.role} message needs content")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs tool_call_id")
        return self

    def text(self) -> str:
        """The message's text: string content as is, text parts joined (other parts are skipped
        by text-only engines, which advertise only the ``text`` input modality)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content if isinstance(part, TextPart))

    def has_non_text_parts(self) -> bool:
        return isinstance(self.content, list) and any(
            not isinstance(part, TextPart) for part in self.content
        )


class ToolFunction(_Request):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: StrictBool | None = None


class Tool(_Request):
    type: Literal["function"] = "function"
    function: ToolFunction


class ReasoningConfig(_Request):
    """OpenRouter's ``reasoning`` request object."""

    effort: Literal["xhigh", "high", "medium", "low", "minimal", "none"] | None = None
    max_tokens: Annotated[int, Field(ge=0)] | None = None
    exclude: bool | None = None
    enabled: bool | None = None


class ChatCompletionRequest(SamplingFields):
    model: str
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: MaxTokens | None = None
    max_completion_tokens: MaxTokens | None = None
    response_format: ResponseFormat | None = None
    logprobs: StrictBool = False
    top_logprobs: Annotated[StrictInt, Field(ge=0, le=20)] | None = None
    tools: list[Tool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: StrictBool | None = None
    reasoning: ReasoningConfig | None = None

    @model_validator(mode="after")
    def _tool_choice_needs_tools(self) -> ChatCompletionRequest:
        if self.tool_choice not in (None, "none") and not self.tools:
            raise ValueError("tool_choice needs tools")
        return self

    def requested_max_tokens(self) -> int | None:
        """``max_completion_tokens`` (the newer name) wins over ``max_tokens``."""
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens
        return self.max_tokens


class ChoiceLogprobs(_Response):
    content: list[dict[str, Any]] | None = None


class ChatChoice(_Response):
    index: int = 0
    message: ChatMessage
    finish_reason: FinishReason | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletion(_Response):
    id: str = Field(default_factory=lambda: new_id("chatcmpl"))
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=now)
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class ChatDelta(_Response):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class ChatChunkChoice(_Response):
    index: int = 0
    delta: ChatDelta
    finish_reason: FinishReason | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(_Response):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=now)
    model: str
    choices: list[ChatChunkChoice] = Field(default_factory=list)
    usage: Usage | None = None
    system_fingerprint: str | None = None


# --------------------------------------------------------------------------------------------
# Text completions


class CompletionRequest(SamplingFields):
    model: str
    prompt: str | list[str]
    max_tokens: MaxTokens | None = 16
    echo: StrictBool = False
    suffix: str | None = None
    logprobs: Annotated[StrictInt, Field(ge=0, le=5)] | None = None
    best_of: Annotated[StrictInt, Field(ge=1, le=16)] | None = None

    @field_validator("prompt")
    @classmethod
    def _check_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not value:
            raise ValueError("prompt must not be an empty list")
        return value

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens


class CompletionLogprobs(_Response):
    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] | None = None
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(_Response):
    index: int = 0
    text: str
    finish_reason: FinishReason | None = None
    logprobs: CompletionLogprobs | None = None


class Completion(_Response):
    id: str = Field(default_factory=lambda: new_id("cmpl"))
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=now)
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class CompletionChunk(_Response):
    """A streamed text-completion piece; OpenAI reuses ``object="text_completion"`` for it."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=now)
    model: str
    choices: list[CompletionChoice] = Field(default_factory=list)
    usage: Usage | None = None


# --------------------------------------------------------------------------------------------
# Embeddings


class EmbeddingRequest(_Request):
    model: str
    input: str | list[str] | list[TokenId] | list[list[TokenId]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[StrictInt, Field(ge=1, le=MAX_DIMENSIONS)] | None = None
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _check_input(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("input must not be empty")
        if isinstance(value, list) and value and isinstance(value[0], (str, list)) \
                and len(value) > MAX_EMBEDDING_INPUTS:
            raise ValueError(f"at most {MAX_EMBEDDING_INPUTS} inputs per request (OpenAI's limit)")
        return value

    def texts(self) -> list[str] | None:
        """The inputs as strings, or None when they are token ids."""
        if isinstance(self.input, str):
            return [self.input]
        if all(isinstance(item, str) for item in self.input):
            return list(self.input)  # type: ignore[arg-type]
        return None

    def token_lists(self) -> list[list[int]] | None:
        if isinstance(self.input, list) and self.input and isinstance(self.input[0], int):
            return [list(self.input)]  # type: ignore[arg-type]
        if isinstance(self.input, list) and self.input and isinstance(self.input[0], list):
            return [list(item) for item in self.input]  # type: ignore[union-attr]
        return None


class Embedding(_Response):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(_Response):
    prompt_tokens: int = 0
    total_tokens: int = 0


class EmbeddingResponse(_Response):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage = Field(default_factory=EmbeddingUsage)


# --------------------------------------------------------------------------------------------
# Models (OpenRouter's provider format, also a valid OpenAI model object)


class Pricing(_Response):
    """USD per token (per image / per request), as decimal strings as OpenRouter asks."""

    prompt: str = "0"
    completion: str = "0"
    image: str = "0"
    request: str = "0"
    input_cache_read: str = "0"


DEFAULT_SAMPLING_PARAMETERS: tuple[str, ...] = (
    "temperature", "top_p", "top_k", "min_p", "frequency_penalty", "presence_penalty",
    "repetition_penalty", "stop", "seed", "max_tokens",
)


class ModelInfo(_Response):
    id: str
    object: Literal["model"] = "model"
    owned_by: str = "tangle-operator"
    hugging_face_id: str | None = None
    name: str | None = None
    created: int = Field(default_factory=now)
    description: str | None = None
    input_modalities: list[str] = Field(default_factory=lambda: ["text"])
    output_modalities: list[str] = Field(default_factory=lambda: ["text"])
    quantization: str | None = None
    context_length: int = 2048
    max_output_length: int | None = None
    pricing: Pricing = Field(default_factory=Pricing)
    supported_sampling_parameters: list[str] = Field(
        default_factory=lambda: list(DEFAULT_SAMPLING_PARAMETERS)
    )
    supported_features: list[str] = Field(default_factory=list)
    is_ready: bool | None = None
    capacity_tpm: int | None = None
    #: What the model does: chat/completions for a causal LM, embeddings for an encoder.
    endpoints: list[Literal["chat", "completion", "embedding"]] = Field(
        default_factory=lambda: ["chat", "completion", "embedding"]
    )


class ModelList(_Response):
    object: Literal["list"] = "list"
    data: list[ModelInfo]


class ModelDocument(_Response):
    """One model in OpenRouter's typed provider document (schema 2.4); the nested modality
    objects follow OpenRouter's published schema (``blueprint.server.provider_document``)."""

    schema_version: Literal["2.4"] = "2.4"
    id: str
    name: str
    created: int | None = None
    input_modalities: list[dict[str, Any]]
    output_modalities: list[dict[str, Any]]


class ProviderModelList(_Response):
    """``GET /v1/models``: typed documents (the default) or the legacy flat entries."""

    object: Literal["list"] | None = None
    data: list[ModelDocument] | list[ModelInfo]


# --------------------------------------------------------------------------------------------
# Parsing helpers

RequestT = TypeVar("RequestT", bound=BaseModel)


def parse_request(cls: type[RequestT], data: bytes | str | dict[str, Any]) -> RequestT:
    """Validate a request, turning pydantic's errors into one readable InvalidRequestError."""
    try:
        if isinstance(data, dict):
            return cls.model_validate(data)
        return cls.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or None
        message = first.get("msg", "invalid request")
        detail = f"{where}: {message}" if where else message
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise InvalidRequestError(f"Invalid request: {detail}{more}", param=where) from None
