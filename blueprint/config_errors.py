"""Configuration mistakes as short messages that name where they are and what to do.

A bad config must stop the operator before it serves anything, and the person reading the error
must not have to guess which file, table or variable is meant: each problem names its source
(``operator.toml:7``, or the environment variable), the key (``nodes[0].engine``), what is wrong
and, for unknown keys and names, the closest valid one.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ValidationError

Loc = tuple[str | int, ...]

#: At most this many problems are spelled out; the rest are counted.
SHOWN = 2
REFERENCE_HINT = "all keys: python -m blueprint config --reference"


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One wrong setting: where it is (``loc`` in the settings model) and what is wrong."""

    loc: Loc
    message: str


class ConfigError(ValueError):
    """The configuration cannot be used; ``str()`` is one or two lines for a person."""

    def __init__(self, text: str, problems: Sequence[ConfigProblem] = ()) -> None:
        super().__init__(text)
        self.problems = tuple(problems)


def dotted(loc: Loc) -> str:
    """``('nodes', 0, 'engine')`` -> ``nodes[0].engine``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def env_name(loc: Loc) -> str:
    """The environment variable that sets ``loc`` (nested tables joined by ``__``)."""
    return "__".join(str(part) for part in loc if not isinstance(part, int)).upper()


def find_line(text: str, loc: Loc) -> int | None:
    """The 1-based line of ``loc``'s key in TOML ``text`` (tables, arrays of tables, plain keys);
    None when it is not written there as a plain ``key = value`` line or table header."""
    table: list[str | int] = []
    arrays: dict[tuple[str, ...], int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        header = re.fullmatch(r"\[\[\s*([\w.\-]+)\s*\]\]", line)
        if header:
            names = tuple(header.group(1).split("."))
            arrays[names] = arrays.get(names, -1) + 1
            table = _with_indexes(names, arrays)
            if tuple(table) == tuple(loc):
                return number
            continue
        header = re.fullmatch(r"\[\s*([\w.\-]+)\s*\]", line)
        if header:
            table = _with_indexes(tuple(header.group(1).split(".")), arrays)
            if tuple(table) == tuple(loc):
                return number
            continue
        key = re.match(r"([\w\-]+)\s*=", line)
        if key and (*table, key.group(1)) == tuple(loc[: len(table) + 1]):
            return number
    return None


def _with_indexes(names: tuple[str, ...], arrays: dict[tuple[str, ...], int]) -> list[str | int]:
    """A table header's path with the current index after each array of tables in it
    (``[nodes.options]`` after the second ``[[nodes]]`` is ``nodes[1].options``)."""
    path: list[str | int] = []
    for depth, name in enumerate(names, start=1):
        path.append(name)
        if names[:depth] in arrays:
            path.append(arrays[names[:depth]])
    return path


def where(loc: Loc, config_file: Path | None) -> str:
    """``operator.toml:7`` when the file holds the key, else the environment variable that
    sets it, else the file (the key may be inherited from a table)."""
    if config_file is not None:
        try:
            line = find_line(config_file.read_text(), loc)
        except OSError:
            line = None
        if line is not None:
            return f"{config_file}:{line}"
    name = env_name(loc)
    if name and any(key.upper() == name for key in os.environ):
        return f"environment {name}"
    return str(config_file) if config_file is not None else "settings"


def closest(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` or an empty string."""
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _fields_at(model: type[BaseModel], loc: Loc) -> list[str]:
    """The valid keys of the table that holds ``loc``'s last part."""
    current: type[BaseModel] | None = model
    for part in loc[:-1]:
        if isinstance(part, int) or current is None:
            continue
        field = current.model_fields.get(part)
        if field is None:
            return []
        current = _model_in(field.annotation)
    return list(current.model_fields) if current is not None else []


def _model_in(annotation: object) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def problems_from_validation(exc: ValidationError, model: type[BaseModel]) -> list[ConfigProblem]:
    out = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        if error["type"] == "extra_forbidden" and loc and isinstance(loc[-1], str):
            message = f"unknown key{closest(loc[-1], _fields_at(model, loc))}"
        else:
            shown = error.get("input")
            value = f" (got {shown!r})" if isinstance(shown, (str, int, float, bool)) else ""
            message = error["msg"][0].lower() + error["msg"][1:] + value
        out.append(ConfigProblem(loc, message))
    return out


def config_error(problems: Sequence[ConfigProblem], config_file: Path | None) -> ConfigError:
    """One line per problem (at most :data:`SHOWN`), each ``where: key: what``."""
    lines = [f"{where(p.loc, config_file)}: {dotted(p.loc) or '(top level)'}: {p.message}"
             for p in problems[:SHOWN]]
    if len(problems) > SHOWN:
        lines[-1] += f" (and {len(problems) - SHOWN} more)"
    if any("unknown key" in p.message for p in problems[:SHOWN]) and len(lines) < 2:
        lines.append(REFERENCE_HINT)
    return ConfigError("\n".join(lines), problems)


def toml_error(exc: tomllib.TOMLDecodeError, config_file: Path) -> ConfigError:
    return ConfigError(f"{config_file}: not valid TOML: {exc}")
