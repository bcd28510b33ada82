"""OpenRouter's typed provider document (schema 2.4) for ``GET /v1/models``.

Each model is described by typed modality objects that own their limits, parameters, pricing
and capacity (``../shared/openrouter/``, component ``ModelDocumentV2``; a test validates what we
serve against that schema). It is built from the same :class:`ModelInfo` the legacy flat
document is, so both formats say the same thing:

* every sampling parameter a node declares becomes a typed descriptor with the range our wire
  types accept (a value inside it is never refused);
* ``tools``, ``tool_choice``, ``parallel_tool_calls``, ``response_format``,
  ``structured_outputs`` and ``reasoning`` appear only where the node's engine declares the
  feature (the transformers engine does once its grammar library is loaded: it enforces them);
* prices of zero are left out (OpenRouter asks providers not to "zero-stuff");
* the operator's data policy (``compliance``, ``datacenters``, ``deployment_region``,
  ``deprecation_date``, ``is_free``) comes from ``[server.model_catalog]``.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from blueprint.llm.types import ModelInfo

SCHEMA_VERSION = "2.4"
QUANTIZATIONS = frozenset({"int4", "int8", "fp4", "mxfp4", "nvfp4", "fp6", "fp8", "mxfp8", "fp16",
                           "bf16", "fp32"})

#: What our wire types accept, per sampling parameter (``blueprint.llm.types.SamplingFields``).
SAMPLING_DESCRIPTORS: dict[str, dict[str, Any]] = {
    "temperature": {"type": "range", "min": 0, "max": 2},
    "top_p": {"type": "range", "min": 0, "max": 1},
    "top_k": {"type": "integer", "min": -1},
    "min_p": {"type": "range", "min": 0, "max": 1},
    "frequency_penalty": {"type": "range", "min": -2, "max": 2},
    "presence_penalty": {"type": "range", "min": -2, "max": 2},
    "repetition_penalty": {"type": "range", "min": 0, "max": 10},
    "stop": {"type": "array", "max_items": 16},
    "seed": {"type": "integer"},
    "logit_bias": {"type": "unknown"},  # token id -> bias in [-100, 100]; keys are not describable
    "logprobs": {"type": "boolean"},
    "top_logprobs": {"type": "integer", "min": 0, "max": 20},
}

#: Parameters a declared feature brings.
FEATURE_DESCRIPTORS: dict[str, dict[str, dict[str, Any]]] = {
    "tools": {"tools": {"type": "boolean"},
              "tool_choice": {"type": "enum", "values": ["none", "auto", "required"]},
              "parallel_tool_calls": {"type": "boolean"}},
    "json_mode": {"response_format": {"type": "enum", "values": ["text", "json_object"]}},
    "structured_outputs": {"structured_outputs": {"type": "boolean"},
                           "response_format": {"type": "enum",
                                               "values": ["text", "json_object", "json_schema"]}},
    "reasoning": {"reasoning": {"type": "boolean"}, "include_reasoning": {"type": "boolean"}},
    "logprobs": {"logprobs": {"type": "boolean"},
                 "top_logprobs": {"type": "integer", "min": 0, "max": 20}},
}


def _price(kind: str, unit: str, value: str) -> list[dict[str, str]]:
    """One pricing entry, or none for a zero price."""
    try:
        amount = Decimal(value)
    except ArithmeticError:
        return []
    if amount <= 0:
        return []
    return [{"type": kind, "unit": unit, "cost_usd": format(amount.normalize(), "f")}]


def supported_parameters(info: ModelInfo) -> dict[str, dict[str, Any]]:
    """The typed descriptors of what this model's node accepts."""
    params: dict[str, dict[str, Any]] = {}
    for name in info.supported_sampling_parameters:
        if name == "max_tokens":
            limit = info.max_output_length or info.context_length
            params[name] = {"type": "integer", "min": 1, "max": limit, "unit": "token"}
        elif name in SAMPLING_DESCRIPTORS:
            params[name] = dict(SAMPLING_DESCRIPTORS[name])
    for feature in info.supported_features:
        params.update({k: dict(v) for k, v in FEATURE_DESCRIPTORS.get(feature, {}).items()})
    return params


def model_document(info: ModelInfo, policy: dict[str, Any] | None = None) -> dict[str, Any]:
    """``info`` as a ``ModelDocumentV2``; ``policy`` holds the operator's declared extras
    (``deprecation_date``, ``is_free``, ``datacenters``, ``deployment_region``, ``compliance``)."""
    text_in: dict[str, Any] = {"type": "text", "supported_inputs": {
        "max_context_length": {"value": info.context_length, "unit": "token"}}}
    pricing_in = (_price("prompt", "token", info.pricing.prompt)
                  + _price("cached_prompt", "token", info.pricing.input_cache_read))
    if pricing_in:
        text_in["pricing"] = pricing_in
    if info.capacity_tpm:
        text_in["capacity"] = [{"type": "prompt", "unit": "token", "per": "minute",
                                "value": info.capacity_tpm}]
    inputs = [text_in]
    if "image" in info.input_modalities:
        image: dict[str, Any] = {"type": "image"}
        if _price("prompt", "image", info.pricing.image):
            image["pricing"] = _price("prompt", "image", info.pricing.image)
        inputs.append(image)
    outputs: list[dict[str, Any]] = []
    if "chat" in info.endpoints or "completion" in info.endpoints:
        text_out: dict[str, Any] = {"type": "text", "streaming": True,
                                    "supported_parameters": supported_parameters(info)}
        if info.max_output_length:
            text_out["max_length"] = {"value": info.max_output_length, "unit": "token"}
        pricing_out = _price("completion", "token", info.pricing.completion)
        if pricing_out:
            text_out["pricing"] = pricing_out
        outputs.append(text_out)
    if "embedding" in info.endpoints:
        outputs.append({"type": "embeddings", "supported_parameters": {
            "encoding_format": {"type": "enum", "values": ["float", "base64"]},
            "dimensions": {"type": "integer", "min": 1}}})
    doc: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "id": info.id, "name": info.name or info.id,
        "created": info.created,
        "quantization": info.quantization if info.quantization in QUANTIZATIONS else None,
        "input_modalities": inputs, "output_modalities": outputs,
    }
    if info.hugging_face_id:
        doc["hugging_face_id"] = info.hugging_face_id
    if info.description:
        doc["description"] = info.description
    request_price = _price("request", "request", info.pricing.request)
    if request_price:
        doc["pricing"] = request_price
    if info.is_ready is not None:
        doc["is_ready"] = info.is_ready
    for key, value in (policy or {}).items():
        if value is not None:
            doc[key] = value
    return doc
