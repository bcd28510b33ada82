"""``python -m blueprint config``: the effective configuration (secrets hidden), or with
``--reference`` the Markdown reference of every setting, generated from the one config model so
that the README's reference cannot drift from the code (a test compares them)."""

from __future__ import annotations

import argparse
import json
import re
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from blueprint.config import Settings, load_settings
from blueprint.llm.config import NodeConfig

#: Top-level settings that the blueprint manager passes as environment variables.
_TABLES: tuple[tuple[str, type[BaseModel], str], ...] = (
    ("", Settings, "Top level (environment: the name in capitals, e.g. `HTTP_RPC_URL`)"),
    ("[[nodes]]", NodeConfig, "One table per LLM node"),
)


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(arg) for arg in typing.get_args(annotation))
    if origin is typing.Literal:
        return " \\| ".join(f"`{arg}`" for arg in typing.get_args(annotation))
    if origin is typing.Annotated:
        return _type_name(typing.get_args(annotation)[0])
    if origin is not None:
        args = ", ".join(_type_name(arg) for arg in typing.get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if annotation is type(None):
        return "none"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        try:
            value = field.default_factory()  # type: ignore[call-arg]
        except TypeError:
            return "(computed)"
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return "(table)"
    return f"`{json.dumps(value, default=str)}`"


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _rows(prefix: str, model: type[BaseModel]) -> list[tuple[str, str, str, str]]:
    rows: list[tuple[str, str, str, str]] = []
    for name, field in model.model_fields.items():
        if model is Settings and name == "nodes":
            continue
        nested = _nested_model(field.annotation)
        key = f"{prefix}{name}"
        if nested is not None:
            rows.extend(_rows(f"{key}.", nested))
            continue
        rows.append((key, _type_name(field.annotation), _default(field), field.description or ""))
    return rows


def reference_markdown() -> str:
    """The configuration reference as Markdown tables."""
    parts: list[str] = []
    for title, model, caption in _TABLES:
        parts.append(f"**{title or 'Settings'}**: {caption}.\n")
        parts.append("| key | type | default | meaning |\n|---|---|---|---|")
        for key, type_name, default, doc in _rows("", model):
            parts.append(f"| `{key}` | {type_name} | {default} | {doc} |")
        parts.append("")
    return "\n".join(parts)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML config file (default: $BLUEPRINT_CONFIG).")
    parser.add_argument("--reference", action="store_true", help="Print the settings reference (Markdown).")


def main(args: argparse.Namespace) -> int:
    if args.reference:
        print(reference_markdown())
        return 0
    settings = load_settings(args.config)
    # SecretStr fields dump as '**********'; plain-string secrets (a node's upstream api_key, a
    # token in an engine's options) are masked by name.
    print(json.dumps(_masked(settings.model_dump(mode="json")), indent=2))
    return 0


#: Keys whose string values are secrets wherever they appear (``api_key``, ``hf_token``, ...).
_SECRET_NAME = re.compile(r"(^|_)(api_key|key|password|passphrase|secret|token|private_key)$", re.I)
MASK = "**********"


def _masked(value: Any, name: str = "") -> Any:
    """``value`` with every string under a secret-looking key replaced by :data:`MASK`."""
    if isinstance(value, dict):
        return {key: _masked(item, key) for key, item in value.items()}
    if isinstance(value, list):
        return [_masked(item, name) for item in value]
    if isinstance(value, str) and value and _SECRET_NAME.search(name):
        return MASK
    return value
