"""How an operator declares an LLM node (one ``[[nodes]]`` table of the TOML config)."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from blueprint.llm.types import ModelInfo, Pricing

#: No file system path or hub id holds a control character; a NUL would reach ``os.stat``.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class VllmSettings(BaseModel):
    """The in-process vLLM engine's knobs (``[nodes.vllm]``, ``engine = "vllm"`` only), typed so a
    typo or an out-of-range value stops at load instead of inside vLLM minutes later. The node's
    ``context_length`` is vLLM's ``max_model_len`` and its ``max_batch_size`` is ``max_num_seqs``;
    anything else goes through ``options.engine_args`` as is (applied last)."""

    model_config = ConfigDict(extra="forbid")

    gpu_memory_utilization: float | None = Field(
        default=None, gt=0, le=1, description="Share of each GPU's memory vLLM takes (vLLM: 0.9).")
    tensor_parallel_size: int | None = Field(
        default=None, ge=1, description="GPUs each layer is split across (inside one machine).")
    pipeline_parallel_size: int | None = Field(
        default=None, ge=1, description="Pipeline stages (layers split across machines).")
    distributed_executor_backend: Literal["mp", "ray", "uni", "external_launcher"] | None = Field(
        default=None, description="Workers: mp (one machine), ray (several, on a Ray cluster).")
    quantization: str | None = Field(
        default=None, description="vLLM's quantization method: awq, gptq, fp8, bitsandbytes...")
    enable_prefix_caching: bool | None = Field(
        default=None, description="Reuse the KV cache of shared prompt prefixes.")
    enforce_eager: bool | None = Field(default=None, description="No CUDA graphs (less memory, slower).")
    max_num_batched_tokens: int | None = Field(
        default=None, ge=1, description="Tokens scheduled in one step (prefill chunk budget).")


class NodeConfig(BaseModel):
    """One LLM node. ``engine`` is ``transformers``, ``openai`` (any OpenAI-compatible server:
    ``vllm serve``, SGLang, llama.cpp, Ollama, another operator), ``vllm`` (in-process), or a
    custom engine as ``package.module:Class`` or the name of a ``blueprint.engines`` entry point."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, description="Unique node name; defaults to engine:model.")
    engine: str = "transformers"
    model: str = Field(description="The model id clients ask for (OpenAI `model`).")
    path: str | None = Field(default=None, description="Local model directory or HF id (in-process engines).")
    base_url: str | None = Field(default=None, description="Server URL up to /v1 (openai engine).")
    api_key: str | None = Field(default=None, repr=False, description="Bearer key for base_url.")
    served_model: str | None = Field(default=None, description="Model name the backend knows.")
    device: str = Field(default="auto", description="cpu, cuda, cuda:N or auto.")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    max_batch_size: int = Field(default=16, ge=1, description="Requests decoded together.")
    max_queue: int = Field(default=64, ge=0, description="Requests waiting beyond the batch before 429.")
    context_length: int | None = Field(default=None, ge=1, description="Override the model's context length.")
    max_output_tokens: int | None = Field(default=None, ge=1, description="Cap on tokens per request.")
    timeout_s: float = Field(default=120.0, gt=0, description=(
        "openai engine: bound on a non-streamed answer, and on a stream's first event and each "
        "silence after it (never on a whole stream)."))
    connect_timeout_s: float = Field(default=5.0, gt=0)
    weight: float = Field(default=1.0, gt=0, description="Static weight for the weighted strategy.")
    hugging_face_id: str | None = None
    display_name: str | None = None
    description: str | None = None
    quantization: str | None = None
    pricing: Pricing = Field(default_factory=Pricing)
    vllm: VllmSettings = Field(default_factory=VllmSettings)
    options: dict[str, Any] = Field(default_factory=dict, description="Engine-specific options.")

    @field_validator("path")
    @classmethod
    def _printable_path(cls, value: str | None) -> str | None:
        if value is not None and _CONTROL.search(value):
            raise ValueError("path holds a control character")
        return value

    @property
    def node_name(self) -> str:
        return self.name or f"{self.engine}:{self.model}"

    def model_card(self, *, context_length: int | None, engine_quantization: str | None = None,
                   default_max_output: int | None = None, **engine_fields: Any) -> ModelInfo:
        """This node's ``/v1/models`` card: what the operator declared here (id, Hugging Face id,
        display name, description, quantization, output cap, pricing) joined with what only the
        engine knows once loaded, so every engine fills the declared fields the same way.

        ``context_length`` is the engine's effective context (None: the card's default);
        ``engine_quantization`` and ``default_max_output`` apply when the operator declared none;
        ``engine_fields`` are any other ``ModelInfo`` fields (``is_ready``, ``supported_features``,
        ``endpoints``, ``created``...)."""
        card: dict[str, Any] = {
            "id": self.model, "hugging_face_id": self.hugging_face_id,
            "name": self.display_name or self.model, "description": self.description,
            "quantization": self.quantization or engine_quantization,
            "max_output_length": self.max_output_tokens or default_max_output,
            "pricing": self.pricing,
        }
        if context_length:
            card["context_length"] = context_length
        card.update(engine_fields)
        return ModelInfo(**card)
