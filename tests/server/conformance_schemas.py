"""The schemas of the conformance suite: function parameters in the spirit of the public
tool-call verifiers (nested objects, arrays, enums, bounded integers, required fields, unions,
``$ref``) and response formats."""

from __future__ import annotations

from typing import Any


def _obj(properties: dict[str, Any], required: list[str] | None = None, *,
         closed: bool = True) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties,
                              "required": list(properties) if required is None else required}
    if closed:
        schema["additionalProperties"] = False
    return schema


STR = {"type": "string"}
INT = {"type": "integer"}
NUM = {"type": "number"}
BOOL = {"type": "boolean"}

FUNCTIONS: dict[str, dict[str, Any]] = {
    "get_weather": _obj({"city": STR, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}),
    "add_numbers": _obj({"a": INT, "b": INT}),
    "set_volume": _obj({"level": {"type": "integer", "minimum": 0, "maximum": 100}}),
    "book_flight": _obj({"from": {"type": "string", "minLength": 3, "maxLength": 3},
                         "to": {"type": "string", "minLength": 3, "maxLength": 3},
                         "passengers": {"type": "integer", "minimum": 1, "maximum": 9},
                         "class": {"enum": ["economy", "business", "first"]}}),
    "send_email": _obj({"to": {"type": "array", "items": STR, "minItems": 1, "maxItems": 3},
                        "subject": STR, "body": STR, "urgent": BOOL}, ["to", "subject"]),
    "create_event": _obj({"title": STR, "start": {"type": "string", "format": "date-time"},
                          "attendees": {"type": "array", "items": _obj({"name": STR, "email": STR})}},
                         ["title", "start"]),
    "search_products": _obj({"query": STR, "filters": _obj({"min_price": NUM, "max_price": NUM,
                                                            "in_stock": BOOL}, ["in_stock"]),
                             "sort": {"enum": ["price", "rating", "newest"]}}, ["query"]),
    "move_robot": _obj({"steps": {"type": "array", "items": _obj({
        "direction": {"enum": ["up", "down", "left", "right"]},
        "distance": {"type": "integer", "minimum": 1, "maximum": 10}}), "maxItems": 4}}),
    "convert_currency": _obj({"amount": {"type": "number", "minimum": 0},
                              "from": {"type": "string", "pattern": "^[A-Z]{3}$"},
                              "to": {"type": "string", "pattern": "^[A-Z]{3}$"}}),
    "update_profile": _obj({"user_id": INT, "changes": _obj({"nickname": STR, "age": {
        "type": "integer", "minimum": 13, "maximum": 120}, "newsletter": BOOL}, [])}),
    "lookup": _obj({"id": {"anyOf": [{"type": "integer", "minimum": 0},
                                     {"type": "string", "maxLength": 12}]}}),
    "rate_movie": _obj({"title": STR, "stars": {"type": "integer", "minimum": 1, "maximum": 5},
                        "review": {"type": ["string", "null"]}}),
    "create_order": {"$defs": {"item": _obj({"sku": STR, "qty": {"type": "integer", "minimum": 1}})},
                     **_obj({"customer": STR, "items": {"type": "array", "items": {"$ref": "#/$defs/item"},
                                                        "minItems": 1}})},
    "get_stock_price": _obj({"symbol": {"type": "string", "pattern": "^[A-Z]{1,5}$"}}),
    "translate": _obj({"text": STR, "target": {"enum": ["fr", "de", "es", "ja"]}, "formal": BOOL},
                      ["text", "target"]),
    "schedule_reminder": _obj({"minutes": {"type": "integer", "exclusiveMinimum": 0, "maximum": 1440},
                               "message": {"type": "string", "maxLength": 40}}),
    "matrix_op": _obj({"op": {"const": "transpose"}, "rows": {"type": "array", "maxItems": 3, "items": {
        "type": "array", "maxItems": 3, "items": NUM}}}),
    "set_thermostat": _obj({"zone": {"enum": [1, 2, 3]}, "target": {"type": "number", "minimum": 10,
                                                                     "maximum": 30}}),
    "no_arguments": {"type": "object", "properties": {}},
    "tag_photo": _obj({"photo_id": STR, "tags": {"type": "array", "items": STR, "maxItems": 5},
                       "location": _obj({"lat": {"type": "number", "minimum": -90, "maximum": 90},
                                         "lon": {"type": "number", "minimum": -180, "maximum": 180}})},
                      ["photo_id", "tags"]),
    "open_ticket": _obj({"priority": {"enum": ["low", "medium", "high"]},
                         "labels": {"type": "array", "items": {"enum": ["bug", "ui", "backend"]}},
                         "details": {"type": "object", "additionalProperties": STR}}, ["priority"],
                        closed=False),
    "compute_route": _obj({"waypoints": {"type": "array", "minItems": 2, "maxItems": 4,
                                         "items": _obj({"x": INT, "y": INT})},
                           "avoid_tolls": BOOL}),
}

RESPONSE_FORMATS: dict[str, dict[str, Any]] = {
    "person": _obj({"name": STR, "age": {"type": "integer", "minimum": 0, "maximum": 150}}),
    "sentiment": _obj({"label": {"enum": ["positive", "negative", "neutral"]},
                       "score": {"type": "number", "minimum": 0, "maximum": 1}}),
    "todo_list": _obj({"items": {"type": "array", "items": _obj({"task": STR, "done": BOOL})}}),
    "address": _obj({"street": STR, "city": STR, "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                     "country": {"const": "US"}}),
    "recipe": _obj({"title": STR, "servings": {"type": "integer", "minimum": 1, "maximum": 12},
                    "ingredients": {"type": "array", "minItems": 1,
                                    "items": _obj({"name": STR, "grams": NUM})}}),
    "classification": _obj({"categories": {"type": "array", "items": {"enum": ["a", "b", "c"]},
                                           "maxItems": 3}}),
    "nested": _obj({"outer": _obj({"inner": _obj({"value": INT})})}),
    "optional_fields": _obj({"id": INT, "note": STR, "flag": BOOL}, ["id"]),
    "nullable": _obj({"maybe": {"type": ["integer", "null"]}}),
    "union": _obj({"value": {"anyOf": [INT, STR, BOOL]}}),
    "array_root": {"type": "array", "items": INT, "maxItems": 5},
    "string_root": {"type": "string", "maxLength": 20},
    "enum_root": {"enum": ["yes", "no", "maybe"]},
    "entity_extraction": _obj({"people": {"type": "array", "items": STR},
                               "places": {"type": "array", "items": STR}}),
    "invoice": {"$defs": {"line": _obj({"desc": STR, "amount": {"type": "number", "minimum": 0}})},
                **_obj({"number": INT, "lines": {"type": "array", "items": {"$ref": "#/$defs/line"}},
                        "paid": BOOL})},
    "coordinates": _obj({"points": {"type": "array", "maxItems": 3, "items": {
        "type": "array", "prefixItems": [NUM, NUM], "items": False, "minItems": 2}}}),
    "free_metadata": _obj({"meta": {"type": "object"}}),
    "date_range": _obj({"from": {"type": "string", "format": "date"},
                        "to": {"type": "string", "format": "date"}}),
    "open_object": {"type": "object", "properties": {"known": INT}, "required": ["known"]},
    "scores": _obj({"scores": {"type": "object", "additionalProperties": {"type": "integer",
                                                                         "minimum": 0, "maximum": 10}}}),
}
