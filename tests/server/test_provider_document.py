"""``GET /v1/models``: OpenRouter's typed document (schema 2.4) validated against the published
schema (a copy in ``tests/data/openrouter/``, with its provenance), declared parameters each
accepted with a valid value, stable ``created``, the operator's data policy, and the legacy flat
document by configuration."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from blueprint.llm.config import NodeConfig
from blueprint.server.settings import ModelCatalogEntry
from tests.server.conftest import API_KEY, TINY, LiveServer, settings

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "data" / "openrouter" / \
    "provider-monitor-schema-v2.openapi.json"
HEADERS = {"Authorization": f"Bearer {API_KEY}"}


def _validator() -> jsonschema.Draft202012Validator:
    spec = json.loads(SCHEMA_FILE.read_text())
    schema = {"$ref": "#/components/schemas/ModelDocumentV2", "components": spec["components"]}
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


POLICY = ModelCatalogEntry(description="A tiny random model.", deprecation_date="2030-01-01",
                           datacenters=[{"country_code": "DE", "region": "eu-central"}],
                           deployment_region="eu", compliance={"zdr": True, "hipaa": False},
                           capacity_tpm=60000)


@pytest.fixture(scope="module")
def served(tiny_model_dir: Path) -> Iterator[LiveServer]:
    config = NodeConfig(name="tiny-node", engine="transformers", model=TINY, path=str(tiny_model_dir),
                        device="cpu", dtype="float32", max_batch_size=2, max_output_tokens=64,
                        pricing={"prompt": "0.0000001", "completion": "0.0000002"},
                        options={"torch_threads": 1})
    live = LiveServer(lambda _: [config], settings(model_catalog={TINY: POLICY})).start()
    try:
        yield live
    finally:
        live.stop()


def _documents(server: LiveServer) -> list[dict[str, Any]]:
    response = httpx.get(server.url + "/v1/models", headers=HEADERS, timeout=10)
    assert response.status_code == 200
    return response.json()["data"]


def test_document_validates_against_openrouter_schema(served: LiveServer) -> None:
    validator = _validator()
    (doc,) = _documents(served)
    validator.validate(doc)
    assert doc["schema_version"] == "2.4" and doc["id"] == TINY
    assert doc["compliance"] == {"zdr": True, "hipaa": False}
    assert doc["datacenters"] == [{"country_code": "DE", "region": "eu-central"}]
    assert doc["deprecation_date"] == "2030-01-01" and doc["is_ready"] is True
    text_in = doc["input_modalities"][0]
    assert text_in["pricing"] == [{"type": "prompt", "unit": "token", "cost_usd": "0.0000001"}]
    assert text_in["capacity"][0]["value"] == 60000
    text_out = next(m for m in doc["output_modalities"] if m["type"] == "text")
    assert text_out["max_length"] == {"value": 64, "unit": "token"}
    params = text_out["supported_parameters"]
    assert {"tools", "tool_choice", "response_format", "structured_outputs", "logprobs"} <= set(params)
    assert params["max_tokens"]["max"] == 64


def test_created_is_stable(served: LiveServer) -> None:
    first, second = _documents(served)[0]["created"], _documents(served)[0]["created"]
    assert first == second


def _valid_value(name: str, descriptor: dict[str, Any]) -> Any:
    kind = descriptor["type"]
    if kind == "range":
        return (descriptor["min"] + descriptor["max"]) / 2 or 0.5
    if kind == "integer":
        return max(descriptor.get("min", 1), min(descriptor.get("max", 3), 3))
    if kind == "boolean":
        return True
    if kind == "enum":
        return descriptor["values"][-1]
    if kind == "array":
        return ["\n\n"]
    if name == "logit_bias":
        return {"5": 1.0}
    raise AssertionError(f"no valid value for {name}: {descriptor}")


_TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {
    "type": "object", "properties": {"x": {"type": "integer", "minimum": 0, "maximum": 9}},
    "required": ["x"], "additionalProperties": False}}}]


def _request_for(name: str, value: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": TINY, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    if name == "tools":
        body["tools"] = _TOOLS
    elif name in ("tool_choice", "parallel_tool_calls"):
        body.update(tools=_TOOLS, **{name: value})
    elif name == "response_format":
        body[name] = {"type": value, **({"json_schema": {"name": "x", "schema": _TOOLS[0]["function"][
            "parameters"]}} if value == "json_schema" else {})}
        body["max_tokens"] = 32
    elif name == "structured_outputs":
        body["response_format"] = {"type": "json_schema", "json_schema": {
            "name": "x", "schema": _TOOLS[0]["function"]["parameters"], "strict": True}}
        body["max_tokens"] = 32
    elif name == "top_logprobs":
        body.update(logprobs=True, top_logprobs=value)
    elif name in ("reasoning", "include_reasoning"):
        body["reasoning"] = {"enabled": True}
    else:
        body[name] = value
    return body


def test_every_declared_parameter_is_accepted_with_a_valid_value(served: LiveServer) -> None:
    (doc,) = _documents(served)
    params = next(m for m in doc["output_modalities"] if m["type"] == "text")["supported_parameters"]
    with httpx.Client(base_url=served.url, headers=HEADERS, timeout=60) as client:
        for name, descriptor in params.items():
            body = _request_for(name, _valid_value(name, descriptor))
            response = client.post("/v1/chat/completions", json=body)
            assert response.status_code == 200, (name, body, response.text)
            choice = response.json()["choices"][0]
            if name == "structured_outputs" or (name == "response_format" and body[name]["type"] != "text"):
                assert choice["finish_reason"] == "stop"
                json.loads(choice["message"]["content"])


def test_legacy_flat_document_by_configuration(tiny_model_dir: Path) -> None:
    config = NodeConfig(name="tiny-node", engine="transformers", model=TINY, path=str(tiny_model_dir),
                        device="cpu", max_batch_size=1)
    live = LiveServer(lambda _: [config], settings(models_document="legacy",
                                                   model_catalog={TINY: POLICY})).start()
    try:
        (entry,) = httpx.get(live.url + "/v1/models", headers=HEADERS, timeout=10).json()["data"]
    finally:
        live.stop()
    assert entry["object"] == "model" and entry["context_length"] > 0
    assert isinstance(entry["pricing"]["prompt"], str)
    assert {"tools", "json_mode", "structured_outputs"} <= set(entry["supported_features"])
    assert "compliance" not in entry  # data policy is a v2 field
