"""Checks of setting *values* that types alone cannot make: names that must exist in a registry
(balancer strategies, engines with their entry points), model paths, URLs, addresses.

They run when settings are loaded (:func:`blueprint.config.load_settings`), so a typo such as
``strategy = "least_load"`` or ``engine = "transfomers"`` stops the operator at start with the
key named, instead of a server that says it is ready and then fails every request. Settings
built in code (tests, embedding programs) are not checked here: their author sees the objects.
"""

from __future__ import annotations

import importlib.util
import os
import re
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from blueprint.config_errors import ConfigProblem, closest

if TYPE_CHECKING:
    from blueprint.config import Settings
    from blueprint.llm.config import NodeConfig

#: Engines that load weights in this process, so their ``path`` must be loadable here.
IN_PROCESS_ENGINES = ("transformers", "vllm")
_HF_ID = re.compile(r"[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")


def check_settings(settings: Settings) -> list[ConfigProblem]:
    """Every problem found, in the order of the reference (empty: the settings are usable)."""
    problems: list[ConfigProblem] = []
    problems += _url(("http_rpc_url",), settings.http_rpc_url, ("http", "https"))
    if settings.ws_rpc_url:
        problems += _url(("ws_rpc_url",), settings.ws_rpc_url, ("ws", "wss"))
    for key in ("tangle_contract", "staking_contract", "status_registry_contract"):
        value = getattr(settings, key)
        if not _ADDRESS.fullmatch(value):
            problems.append(ConfigProblem((key,), f"not a contract address (0x and 40 hex): {value!r}"))
    if settings.keystore_password_file is not None and not settings.keystore_password_file.is_file():
        problems.append(ConfigProblem(("keystore_password_file",),
                                      f"no such file: {settings.keystore_password_file}"))
    if settings.server.public_url:
        problems += _url(("server", "public_url"), settings.server.public_url, ("http", "https"))
    problems += check_strategies(settings)
    for index, node in enumerate(settings.nodes):
        problems += check_node(node, ("nodes", index))
    return problems


def check_strategies(settings: Settings) -> list[ConfigProblem]:
    from blueprint.balancer.strategies import STRATEGIES

    known = sorted(STRATEGIES)
    named = [(("balancer", "strategy"), settings.balancer.strategy)]
    named += [(("balancer", "per_model", model), name) for model, name in settings.balancer.per_model.items()]
    return [ConfigProblem(loc, f"unknown strategy {name!r}{closest(name, known)}; "
                               f"use one of {', '.join(known)}")
            for loc, name in named if name not in STRATEGIES]


def check_node(node: NodeConfig, loc: tuple[str | int, ...]) -> list[ConfigProblem]:
    problems = []
    engine_problem = check_engine(node.engine)
    if engine_problem:
        problems.append(ConfigProblem((*loc, "engine"), engine_problem))
    if node.base_url is not None:
        problems += _url((*loc, "base_url"), node.base_url, ("http", "https"))
    elif node.engine == "openai":
        problems.append(ConfigProblem((*loc, "base_url"),
                                      "required by the openai engine: the server's URL up to /v1"))
    if node.engine in IN_PROCESS_ENGINES:
        problem = check_model_source(node)
        if problem:
            problems.append(ConfigProblem((*loc, "path"), problem))
    return problems


def engine_names() -> list[str]:
    """Built-in engine names and those of installed ``blueprint.engines`` entry points."""
    from blueprint.llm.registry import BUILTIN_ENGINES, ENTRY_POINT_GROUP

    return sorted({*BUILTIN_ENGINES, *(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))})


def check_engine(engine: str) -> str | None:
    """None when ``engine`` names a built-in engine, an entry point or an importable module."""
    from blueprint.llm.registry import ENTRY_POINT_GROUP

    names = engine_names()
    if engine in names:
        return None
    if ":" in engine:
        module = engine.partition(":")[0]
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        return None if found else f"cannot find the module {module!r} of engine {engine!r}"
    return (f"unknown engine {engine!r}{closest(engine, names)}; use one of {', '.join(names)}, "
            f"'package.module:Class', or an entry point of the {ENTRY_POINT_GROUP!r} group")


def check_model_source(node: NodeConfig) -> str | None:
    """An in-process node loads ``path`` (else ``model``): a model folder, a file vLLM reads
    (GGUF), or a Hugging Face id; with ``HF_HUB_OFFLINE`` the id must already be in the cache."""
    source = node.path or node.model
    local = Path(source).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file() and not any(local.glob("*.gguf")):
            return (f"{source!r} has no config.json: point path at a Hugging Face model folder "
                    "(config.json, weights, tokenizer files) or a Hugging Face id")
        return None
    if local.is_file():
        return None if node.engine == "vllm" else f"{source!r} is a file: point path at a model folder"
    looks_local = source.startswith(("/", "./", "../", "~")) or os.path.isabs(source)
    if looks_local or not _HF_ID.fullmatch(source):
        what = "no such folder" if looks_local else "neither a folder nor a Hugging Face id"
        return f"{source!r}: {what}" + ("" if node.path else " (set path to the model folder)")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes") and not _in_hf_cache(source):
        return (f"Hugging Face id {source!r} is not in the local cache and HF_HUB_OFFLINE is set: "
                f"download it first (`hf download {source}`) or point path at a folder")
    return None


def _in_hf_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return True  # cannot tell without the hub library: loading will say
    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def _url(loc: tuple[str | int, ...], value: str, schemes: tuple[str, ...]) -> list[ConfigProblem]:
    parts = urlsplit(value)
    if parts.scheme in schemes and parts.hostname:
        return []
    want = " or ".join(f"{scheme}://" for scheme in schemes)
    return [ConfigProblem(loc, f"not a {want} URL: {value!r}")]
