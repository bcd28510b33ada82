"""Make a JSON schema finite, and tell how many bytes its longest instance can take.

Why: a grammar guarantees the *shape* of what a model writes, not that it ends. A string, an
array, a number's digits or a free-form object can go on for ever, and a random-weight model
(or a real one in a loop) happily does, until ``max_tokens`` cuts it: then the output is
truncated JSON. To guarantee that every constrained answer finishes valid within its budget we
constrain with a **bounded** copy of the schema whose longest compact serialisation fits the
budget: every token the grammar allows adds at least one byte, so an instance of at most
``budget`` bytes is always finished in at most ``budget`` tokens.

The bounded schema only ever *narrows* the original (caps on lengths, counts, digits; extra
properties dropped where named ones exist): whatever it admits also validates against the
schema the client sent. :func:`bounded_schema` tries caps from generous to tight and returns the
first copy that fits, so a large budget leaves real models all the room they need; when even the
tightest caps cannot fit (many required fields, large ``minItems``, recursion) the result says
so, and the engine finishes with ``length`` rather than claiming a valid answer.

Byte counts assume compact JSON (no whitespace, as the grammar is compiled) and the escapes the
grammar allows in strings (at most six bytes per character, ``\\u00XX``).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

#: Largest integer magnitude ever given to integers without bounds (JSON's exact-integer range).
INTEGER_LIMIT = 2**53 - 1
#: Bytes one string character can take: a ``\\u00XX`` escape (UTF-8 needs at most 4).
BYTES_PER_CHAR = 6
#: How deep ``$ref`` chains are inlined; deeper (recursive) schemas count as unbounded.
MAX_REF_DEPTH = 8
#: The least room a cap leaves a string with a ``pattern`` or ``format`` (a date-time takes 20-35
#: characters; tighter caps would make such schemas unsatisfiable).
PATTERN_FLOOR = 40
#: Longest strings of the formats the grammar knows.
FORMAT_LENGTHS = {"date": 10, "time": 32, "date-time": 40, "uuid": 36, "ipv4": 15, "ipv6": 45,
                  "duration": 40}
#: The longest key of a free-form object (keys are ``[A-Za-z0-9_]`` runs).
MAX_FREE_KEY = 32


@dataclass(frozen=True, slots=True)
class Caps:
    """Caps laid on what the schema leaves open: string length, items (or free-form
    properties) per array (object), and the digits of a number without bounds (``digits``
    before the point, at most six after)."""

    string: int
    items: int
    digits: int = 15

    @property
    def integer_limit(self) -> int:
        return min(INTEGER_LIMIT, 10**self.digits - 1)

    @property
    def number_limit(self) -> int:
        return 10**self.digits

    @property
    def number_step(self) -> float:
        return float(Decimal(1).scaleb(-min(6, self.digits)))


#: Tried in order; the first whose longest instance fits the budget wins.
CAP_LADDER: tuple[Caps, ...] = (
    Caps(1024, 64), Caps(512, 32), Caps(256, 16), Caps(128, 8), Caps(64, 8), Caps(32, 4, 9),
    Caps(16, 4, 6), Caps(8, 2, 4), Caps(4, 2, 3), Caps(2, 1, 2), Caps(0, 1, 1), Caps(0, 0, 1),
)


class UnboundedSchema(Exception):
    """The schema has an instance of unbounded length even with every cap (recursion)."""


@dataclass(frozen=True, slots=True)
class Bounded:
    """A bounded copy of a schema and the byte length of its longest compact instance."""

    schema: dict[str, Any]
    max_bytes: int | None
    caps: Caps

    def fits(self, budget: int) -> bool:
        return self.max_bytes is not None and self.max_bytes <= budget


def bounded_schema(schema: dict[str, Any], budget: int) -> Bounded:
    """The loosest bounded copy of ``schema`` whose longest instance fits ``budget`` bytes; the
    tightest one (``fits`` false) when none does."""
    return best_fit(lambda caps: bound(schema, caps), budget)


def best_fit(make: Any, budget: int) -> Bounded:
    """The first of :data:`CAP_LADDER` for which ``make(caps)`` fits ``budget``, else the last."""
    result: Bounded | None = None
    for caps in CAP_LADDER:
        result = make(caps)
        if result.fits(budget):
            return result
    assert result is not None
    return result


def bound(schema: dict[str, Any], caps: Caps) -> Bounded:
    """``schema`` with ``caps`` applied everywhere it is open, and its longest instance's bytes."""
    defs = {**schema.get("definitions", {}), **schema.get("$defs", {})}
    try:
        inlined = _inline(schema, defs, 0)
    except UnboundedSchema:
        return Bounded(copy.deepcopy(schema), None, caps)
    body = _bound(inlined, caps)
    try:
        size = max_bytes(body)
    except UnboundedSchema:
        size = None
    return Bounded(body, size, caps)


def any_value(caps: Caps) -> dict[str, Any]:
    """Any JSON value, bounded: a scalar, or an array or object of scalars."""
    scalar = {"type": ["string", "number", "boolean", "null"], "maxLength": caps.string,
              "minimum": -caps.number_limit, "maximum": caps.number_limit, "multipleOf": caps.number_step}
    return {"anyOf": [scalar,
                      {"type": "array", "items": scalar, "maxItems": caps.items},
                      free_object(scalar, caps)]}


def free_object(values: dict[str, Any], caps: Caps) -> dict[str, Any]:
    """An object of up to ``caps.items`` properties with short word keys and ``values``."""
    key = min(MAX_FREE_KEY, max(1, caps.string))
    return {"type": "object", "patternProperties": {f"^[A-Za-z0-9_]{{1,{key}}}$": values},
            "additionalProperties": False, "maxProperties": caps.items}


# ------------------------------------------------------------------------------ inlining $ref


def _inline(node: Any, defs: dict[str, Any], depth: int) -> Any:
    if isinstance(node, list):
        return [_inline(item, defs, depth) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        ref = node["$ref"]
        name = ref.rsplit("/", 1)[-1]
        if not (ref.startswith("#/$defs/") or ref.startswith("#/definitions/")) or name not in defs:
            raise UnboundedSchema(f"unresolvable $ref {ref!r}")
        if depth >= MAX_REF_DEPTH:
            raise UnboundedSchema("recursive schema")
        rest = {k: v for k, v in node.items() if k != "$ref"}
        target = _inline(defs[name], defs, depth + 1)
        return {**target, **_inline(rest, defs, depth)} if rest else target
    return {k: (v if k in ("$defs", "definitions", "enum", "const", "required") else _inline(v, defs, depth))
            for k, v in node.items() if k not in ("$defs", "definitions")}


# ------------------------------------------------------------------------------ applying caps

_OPEN = object()


def _types(node: dict[str, Any]) -> list[str] | None:
    kind = node.get("type")
    if kind is None:
        return None
    return [kind] if isinstance(kind, str) else list(kind)


def _is_any(node: Any) -> bool:
    if node is True:
        return True
    if not isinstance(node, dict):
        return False
    shaping = {"type", "enum", "const", "anyOf", "oneOf", "allOf", "properties", "items", "$ref",
               "prefixItems", "patternProperties", "additionalProperties"}
    return not (shaping & node.keys())


def _bound(node: Any, caps: Caps) -> Any:
    if _is_any(node):
        described = {k: v for k, v in node.items()} if isinstance(node, dict) else {}
        return {**described, **any_value(caps)}
    if not isinstance(node, dict):
        return node
    out = dict(node)
    for key in ("anyOf", "oneOf", "allOf"):
        if key in out:
            out[key] = [_bound(branch, caps) for branch in out[key]]
    if "enum" in out or "const" in out:
        return out
    types = _types(out)
    if types is None:
        if "properties" in out or "additionalProperties" in out or "patternProperties" in out:
            types = ["object"]
        elif "items" in out or "prefixItems" in out:
            types = ["array"]
        else:
            return out
    if "string" in types:
        low = int(out.get("minLength", 0))
        cap = caps.string
        if "pattern" in out or "format" in out:
            # A cap below what the pattern or format needs would make the schema unsatisfiable:
            # such strings keep their own length (a bounded pattern) or a generous floor.
            width = _pattern_width(out.get("pattern")) if "pattern" in out else FORMAT_LENGTHS.get(
                str(out.get("format")), PATTERN_FLOOR)
            cap = width if width is not None else max(cap, PATTERN_FLOOR)
        out["maxLength"] = max(low, min(int(out.get("maxLength", cap)), cap))
    if "integer" in types and "number" not in types:
        if "minimum" not in out and "exclusiveMinimum" not in out:
            out["minimum"] = -caps.integer_limit
        if "maximum" not in out and "exclusiveMaximum" not in out:
            out["maximum"] = caps.integer_limit
    if "number" in types:
        if "minimum" not in out and "exclusiveMinimum" not in out:
            out["minimum"] = -caps.number_limit
        if "maximum" not in out and "exclusiveMaximum" not in out:
            out["maximum"] = caps.number_limit
        out.setdefault("multipleOf", caps.number_step)
    if "array" in types:
        _bound_array(out, caps)
    if "object" in types:
        _bound_object(out, caps)
    return out


def _bound_array(out: dict[str, Any], caps: Caps) -> None:
    prefix = out.get("prefixItems") or []
    if prefix:
        out["prefixItems"] = [_bound(item, caps) for item in prefix]
    if out.get("items") is not False:
        out["items"] = _bound(out.get("items", True), caps)
    low = int(out.get("minItems", 0))
    out["maxItems"] = max(low, len(prefix) if out.get("items") is False else 0,
                          min(int(out.get("maxItems", caps.items + len(prefix))), caps.items + len(prefix)))


def _bound_object(out: dict[str, Any], caps: Caps) -> None:
    properties = dict(out.get("properties") or {})
    extra = out.get("additionalProperties", True)
    required = [name for name in out.get("required", []) if isinstance(name, str)]
    for name in required:  # required names allowed only as extra properties become named ones
        if name not in properties:
            properties[name] = extra if isinstance(extra, dict) else True
    if properties or out.get("patternProperties"):
        out["properties"] = {name: _bound(value, caps) for name, value in properties.items()}
        out["additionalProperties"] = False
        if not _all_required(out):  # llguidance bounds property counts only then
            out.pop("maxProperties", None)
        if "patternProperties" in out:
            out["patternProperties"] = {p: _bound(v, caps) for p, v in out["patternProperties"].items()}
        return
    if extra is False:
        return
    values = _bound(extra if isinstance(extra, dict) else True, caps)
    low = int(out.get("minProperties", 0))
    limit = max(low, min(int(out.get("maxProperties", caps.items)), caps.items))
    out.pop("additionalProperties", None)
    out.update(free_object(values, Caps(caps.string, limit)))


def _pattern_width(pattern: Any) -> int | None:
    """The most characters a regular expression can match, None when unbounded or unknown."""
    import re._parser as sre_parse  # the stdlib parser behind ``re``

    try:
        width = sre_parse.parse(str(pattern).removeprefix("^").removesuffix("$")).getwidth()[1]
    except Exception:  # an unusual pattern just gets the generous floor
        return None
    return int(width) if width < 10_000 else None


def _all_required(node: dict[str, Any]) -> bool:
    return set(node.get("properties", {})) <= set(node.get("required", []))


# ------------------------------------------------------------------------------ measuring


def _json_bytes(value: Any) -> int:
    """Bytes of a constant, whether the grammar writes non-ASCII raw or escaped."""
    return max(len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()),
               len(json.dumps(value, separators=(",", ":"))))


def max_bytes(node: Any) -> int:
    """The longest compact instance of a bounded schema, in bytes; raises UnboundedSchema."""
    if node is True or node is None or _is_any(node):
        raise UnboundedSchema("any value")
    if node is False:
        return 0
    if "const" in node:
        return _json_bytes(node["const"])
    if "enum" in node:
        return max(_json_bytes(v) for v in node["enum"])
    sizes = []
    if "anyOf" in node or "oneOf" in node:
        sizes.append(max(max_bytes(b) for b in node.get("anyOf", node.get("oneOf", []))))
    if "allOf" in node:
        bounded = []
        for branch in node["allOf"]:
            try:
                bounded.append(max_bytes(branch))
            except UnboundedSchema:
                continue
        if bounded:
            sizes.append(min(bounded))
    types = _types(node)
    if types is None:
        if "properties" in node or "patternProperties" in node:
            types = ["object"]
        elif "items" in node or "prefixItems" in node:
            types = ["array"]
    if types:
        own = max(_type_bytes(node, kind) for kind in types)
        return min([own, *sizes]) if sizes and "allOf" in node else max([own, *sizes])
    if not sizes:
        raise UnboundedSchema("no type")
    return max(sizes)


def _type_bytes(node: dict[str, Any], kind: str) -> int:
    if kind == "null":
        return 4
    if kind == "boolean":
        return 5
    if kind == "string":
        if "maxLength" not in node:
            raise UnboundedSchema("string without maxLength")
        # Pattern and format strings are matched as text: UTF-8, no escapes (4 bytes a character).
        per_char = 4 if "pattern" in node or "format" in node else BYTES_PER_CHAR
        return 2 + per_char * int(node["maxLength"])
    if kind in ("integer", "number"):
        return _number_bytes(node, kind)
    if kind == "array":
        return _array_bytes(node)
    if kind == "object":
        return _object_bytes(node)
    raise UnboundedSchema(f"unknown type {kind!r}")


def _number_bytes(node: dict[str, Any], kind: str) -> int:
    low = node.get("minimum", node.get("exclusiveMinimum"))
    high = node.get("maximum", node.get("exclusiveMaximum"))
    if low is None or high is None:
        raise UnboundedSchema("number without bounds")
    digits = max(len(str(int(abs(Decimal(str(low)))))), len(str(int(abs(Decimal(str(high)))))))
    sign = 1 if Decimal(str(low)) < 0 else 0
    if kind == "integer":
        return sign + digits
    step = node.get("multipleOf")
    if step is None:
        raise UnboundedSchema("number without multipleOf")
    exponent = Decimal(str(step)).normalize().as_tuple().exponent
    decimals = max(0, -int(exponent))
    return sign + digits + (1 + decimals if decimals else 0)


def _array_bytes(node: dict[str, Any]) -> int:
    prefix = node.get("prefixItems") or []
    if "maxItems" not in node:
        raise UnboundedSchema("array without maxItems")
    count = int(node["maxItems"])
    sizes = [max_bytes(item) for item in prefix[:count]]
    rest = count - len(sizes)
    if rest > 0 and node.get("items") is not False:
        sizes.extend([max_bytes(node.get("items", True))] * rest)
    return 2 + sum(sizes) + max(0, len(sizes) - 1)


def _object_bytes(node: dict[str, Any]) -> int:
    entries = [_json_bytes(name) + 1 + max_bytes(value)
               for name, value in (node.get("properties") or {}).items()]
    patterns = node.get("patternProperties") or {}
    if patterns:
        if "maxProperties" not in node:
            raise UnboundedSchema("free-form object without maxProperties")
        key = 2 + BYTES_PER_CHAR * MAX_FREE_KEY
        for pattern in patterns:
            if pattern.endswith("}$") and "{1," in pattern:
                key = 2 + int(pattern.rsplit("{1,", 1)[1][:-2])
        value = max(max_bytes(v) for v in patterns.values())
        free = max(0, int(node["maxProperties"]) - len(entries))
        entries.extend([key + 1 + value] * free)
    elif node.get("additionalProperties", True) is not False:
        raise UnboundedSchema("object open to any property")
    return 2 + sum(entries) + max(0, len(entries) - 1)
