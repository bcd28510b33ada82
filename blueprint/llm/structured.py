"""What a chat request asks of the output's shape: JSON, tool calls, or free text.

Engine-agnostic on purpose: the transformers engine compiles the plan with llguidance
(:mod:`blueprint.llm.grammar`), the vLLM engine maps the same plan to vLLM's structured-output
parameters, and both parse tool calls with :mod:`blueprint.llm.tool_calls`. Requests that cannot
be honoured are refused here, before any compute, as the client's mistake (400).

* ``response_format``: ``json_object`` (any JSON object) or ``json_schema`` (its ``schema``;
  ``strict`` true or false are both enforced: a grammar costs nothing extra and a valid answer is
  what the client wants either way).
* ``tools`` + ``tool_choice``: ``none`` (no calls; the template still sees the tools), ``auto``
  (default when tools are given: the model writes text or call blocks, which are parsed),
  ``required`` (one or more calls, grammar-enforced), a named function (exactly that one,
  grammar-enforced). ``parallel_tool_calls`` false allows one call only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from blueprint.errors import InvalidRequestError
from blueprint.llm import json_bounds
from blueprint.llm.json_bounds import Bounded, Caps
from blueprint.llm.tool_calls import CALL_PREFIX, CALL_SEPARATOR, CALL_SUFFIX
from blueprint.llm.types import ChatCompletionRequest

#: Calls one answer may hold when parallel calls are allowed (bounds the grammar).
MAX_PARALLEL_CALLS = 4

#: JSON options every grammar is compiled with: compact output (no free whitespace, which would
#: be unbounded), standard escapes.
JSON_OPTIONS: dict[str, Any] = {"whitespace_flexible": False}


@dataclass(frozen=True, slots=True)
class ToolSpec:
    name: str
    parameters: dict[str, Any]


@dataclass(frozen=True, slots=True)
class OutputPlan:
    """The shape asked for. ``json_schema`` set: the whole answer is that JSON; ``forced_tools``
    set: the whole answer is 1..``max_calls`` call blocks of those tools; ``parse_tools``: the
    text is scanned for call blocks (``auto``, ``required``, named)."""

    json_schema: dict[str, Any] | None = None
    json_object: bool = False
    forced_tools: tuple[ToolSpec, ...] = ()
    max_calls: int = 1
    parse_tools: bool = False
    tools: tuple[ToolSpec, ...] = field(default=())

    @property
    def constrained(self) -> bool:
        return self.json_schema is not None or self.json_object or bool(self.forced_tools)


def plan_output(request: ChatCompletionRequest) -> OutputPlan:
    """The request's output plan (module docstring); raises InvalidRequestError on a mistake."""
    tools = tuple(_tool_spec(i, tool.function.name, tool.function.parameters)
                  for i, tool in enumerate(request.tools or []))
    names = [t.name for t in tools]
    if len(set(names)) != len(names):
        raise InvalidRequestError("Tool names must be unique.", param="tools")
    choice = request.tool_choice
    if choice is None:
        choice = "auto" if tools else "none"
    max_calls = 1 if request.parallel_tool_calls is False else MAX_PARALLEL_CALLS
    if isinstance(choice, dict):
        function = choice.get("function") if choice.get("type", "function") == "function" else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str):
            raise InvalidRequestError('tool_choice must be "none", "auto", "required" or '
                                      '{"type": "function", "function": {"name": ...}}.', param="tool_choice")
        chosen = [t for t in tools if t.name == name]
        if not chosen:
            raise InvalidRequestError(f"tool_choice names {name!r}, which is not among the tools.",
                                      param="tool_choice")
        return OutputPlan(forced_tools=tuple(chosen), max_calls=1, parse_tools=True, tools=tools)
    if choice not in ("none", "auto", "required"):
        raise InvalidRequestError('tool_choice must be "none", "auto", "required" or a named function.',
                                  param="tool_choice")
    if choice != "none" and not tools:
        raise InvalidRequestError(f'tool_choice "{choice}" needs tools.', param="tool_choice")
    if choice == "required":
        return OutputPlan(forced_tools=tools, max_calls=max_calls, parse_tools=True, tools=tools)
    fmt = request.response_format
    schema: dict[str, Any] | None = None
    as_object = False
    if fmt is not None and fmt.type == "json_schema":
        spec = fmt.json_schema or {}
        raw = spec.get("schema", {}) if isinstance(spec, dict) else None
        if not isinstance(raw, dict):
            raise InvalidRequestError("response_format.json_schema.schema must be a JSON schema object.",
                                      param="response_format")
        schema = raw or {"type": "object"}
    elif fmt is not None and fmt.type == "json_object":
        as_object = True
    return OutputPlan(json_schema=schema, json_object=as_object, max_calls=max_calls,
                      parse_tools=choice == "auto", tools=tools)


def _tool_spec(index: int, name: str, parameters: dict[str, Any] | None) -> ToolSpec:
    if not name or len(name) > 64 or not all(c.isalnum() or c in "_-" for c in name):
        raise InvalidRequestError("Tool names must be 1-64 letters, digits, '_' or '-'.",
                                  param=f"tools.{index}.function.name")
    params = parameters if parameters is not None else {"type": "object", "properties": {}}
    if not isinstance(params, dict):
        raise InvalidRequestError("Tool parameters must be a JSON schema object.",
                                  param=f"tools.{index}.function.parameters")
    return ToolSpec(name, params)


# ------------------------------------------------------------------------------ bounded grammars


@dataclass(frozen=True, slots=True)
class GrammarSpec:
    """A plan made finite for one token budget: the llguidance grammar source (``lark`` or a
    JSON ``schema``), whether its longest output fits the budget, and a cache key."""

    kind: Literal["json", "lark"]
    source: str
    fits: bool
    max_bytes: int | None

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.source}"


#: Specs already made, by plan and budget (bounding a schema costs up to a millisecond a request).
_SPECS: dict[str, GrammarSpec | None] = {}
_SPECS_LIMIT = 1024


def grammar_spec(plan: OutputPlan, budget: int) -> GrammarSpec | None:
    """The bounded grammar of a constrained plan for ``budget`` tokens (None: unconstrained)."""
    if not plan.constrained:
        return None
    key = json.dumps([plan.json_schema, plan.json_object, [[t.name, t.parameters] for t in plan.forced_tools],
                      plan.max_calls, budget], sort_keys=True, default=str)
    if key not in _SPECS:
        if len(_SPECS) >= _SPECS_LIMIT:
            _SPECS.clear()
        _SPECS[key] = _make_spec(plan, budget)
    return _SPECS[key]


def _make_spec(plan: OutputPlan, budget: int) -> GrammarSpec | None:
    if plan.forced_tools:
        return _tools_spec(plan, budget)
    if plan.json_object:
        bounded = json_bounds.best_fit(_object_bounds, budget)
    elif plan.json_schema is not None:
        bounded = json_bounds.bounded_schema(plan.json_schema, budget)
    else:
        return None
    schema = {**bounded.schema, "x-guidance": {**bounded.schema.get("x-guidance", {}), **JSON_OPTIONS}}
    return GrammarSpec("json", json.dumps(schema), bounded.fits(budget), bounded.max_bytes)


def _object_bounds(caps: Caps) -> Bounded:
    schema = json_bounds.free_object(json_bounds.any_value(caps), caps)
    return Bounded(schema, json_bounds.max_bytes(schema), caps)


def _call_schema(tool: ToolSpec, caps: Caps) -> tuple[dict[str, Any], int | None]:
    args = json_bounds.bound(tool.parameters, caps)
    schema = {"type": "object", "properties": {"name": {"const": tool.name}, "arguments": args.schema},
              "required": ["name", "arguments"], "additionalProperties": False}
    if args.max_bytes is None:
        return schema, None
    overhead = len('{"name":,"arguments":}') + len(json.dumps(tool.name))
    return schema, overhead + args.max_bytes


def _tools_spec(plan: OutputPlan, budget: int) -> GrammarSpec:
    """1..max_calls blocks ``<tool_call>\\n{"name":...,"arguments":...}\\n</tool_call>``."""
    frame = len(CALL_PREFIX) + len(CALL_SUFFIX)
    best: tuple[str, int | None, bool] | None = None
    for caps in json_bounds.CAP_LADDER:
        built = [_call_schema(tool, caps) for tool in plan.forced_tools]
        sizes = [size for _, size in built]
        body = {"anyOf": [schema for schema, _ in built]} if len(built) > 1 else built[0][0]
        body["x-guidance"] = JSON_OPTIONS
        per_call = None if any(s is None for s in sizes) else frame + max(s for s in sizes if s is not None)
        for calls in sorted({plan.max_calls, 1}, reverse=True):
            total = None if per_call is None else calls * per_call + (calls - 1) * len(CALL_SEPARATOR)
            lark = _calls_lark(body, calls)
            best = (lark, total, total is not None and total <= budget)
            if best[2]:
                return GrammarSpec("lark", lark, True, total)
    assert best is not None
    return GrammarSpec("lark", best[0], False, best[1])


def _calls_lark(body: dict[str, Any], calls: int) -> str:
    more = f' ({json.dumps(CALL_SEPARATOR)} call){{0,{calls - 1}}}' if calls > 1 else ""
    return (f"start: call{more}\n"
            f"call: {json.dumps(CALL_PREFIX)} body {json.dumps(CALL_SUFFIX)}\n"
            f"body: %json {json.dumps(body)}\n")
