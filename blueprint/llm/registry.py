"""Build an LLM client from its node config: built-in engines by name, custom engines by dotted
path (``pkg.module:Class``) or by an entry point in the ``blueprint.engines`` group.

Engines are imported lazily so that a node running only HTTP backends never imports torch, and so
that the vLLM extra is needed only when a vLLM node is configured.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points

from blueprint.errors import InvalidRequestError
from blueprint.llm.client import LlmClient
from blueprint.llm.config import NodeConfig

EngineFactory = Callable[[NodeConfig], LlmClient]

BUILTIN_ENGINES: dict[str, str] = {
    "transformers": "blueprint.llm.engines.transformers:TransformersClient",
    "openai": "blueprint.llm.engines.openai_http:OpenAIHttpClient",
    "vllm": "blueprint.llm.engines.vllm:VllmClient",
}
ENTRY_POINT_GROUP = "blueprint.engines"


def _load(target: str) -> EngineFactory:
    module_name, _, attr = target.partition(":")
    if not attr:
        raise InvalidRequestError(f"Engine {target!r} must be written as 'package.module:Class'.")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidRequestError(f"Cannot import engine module {module_name!r}: {exc}") from exc
    try:
        return getattr(module, attr)
    except AttributeError as exc:
        raise InvalidRequestError(f"Engine module {module_name!r} has no {attr!r}.") from exc


def resolve_engine(engine: str, *, import_paths: bool = True) -> EngineFactory:
    """The factory (usually a class) for an engine name, dotted path or entry point.

    ``import_paths=False`` (the admin API) accepts registered names only, built-ins and installed
    entry points: a ``module:callable`` from a request would let its sender import and call
    anything in the server's process (``sys:exit`` stopped it)."""
    if engine in BUILTIN_ENGINES:
        return _load(BUILTIN_ENGINES[engine])
    if ":" in engine:
        if not import_paths:
            raise InvalidRequestError(
                f"Engine {engine!r}: over the admin API engines are named by their registered name "
                f"({', '.join(sorted(BUILTIN_ENGINES))} or a {ENTRY_POINT_GROUP!r} entry point), "
                "never by an import path.", code="unknown_engine", param="engine")
        return _load(engine)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == engine:
            try:
                return ep.load()
            except (ImportError, AttributeError) as exc:
                raise InvalidRequestError(
                    f"Engine entry point {engine!r} ({ep.value}) cannot be loaded: {exc}") from exc
    known = ", ".join(sorted(BUILTIN_ENGINES))
    raise InvalidRequestError(
        f"Unknown engine {engine!r}: use one of {known}, 'package.module:Class', or an entry "
        f"point in the {ENTRY_POINT_GROUP!r} group.", code="unknown_engine", param="engine",
    )


def create_client(config: NodeConfig, *, import_paths: bool = True) -> LlmClient:
    """Instantiate (not start) the client for one node (``import_paths``: see :func:`resolve_engine`)."""
    client = resolve_engine(config.engine, import_paths=import_paths)(config)
    if not isinstance(client, LlmClient):
        raise InvalidRequestError(f"Engine {config.engine!r} did not produce an LlmClient.")
    return client
