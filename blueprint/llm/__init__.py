"""What an LLM client is: the wire types, the client interface, and how engines are built.

Engines live in ``blueprint.llm.engines`` (one module each) and are imported lazily through
``create_client``.
"""

from blueprint.llm.client import Capabilities, LlmClient, MetricsTracker, NodeMetrics
from blueprint.llm.config import NodeConfig
from blueprint.llm.registry import create_client, resolve_engine
from blueprint.llm.types import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatMessage,
    Completion,
    CompletionChunk,
    CompletionRequest,
    EmbeddingRequest,
    EmbeddingResponse,
    ModelInfo,
    Pricing,
    Usage,
    parse_request,
)

__all__ = [
    "Capabilities", "ChatCompletion", "ChatCompletionChunk", "ChatCompletionRequest",
    "ChatMessage", "Completion", "CompletionChunk", "CompletionRequest", "EmbeddingRequest",
    "EmbeddingResponse", "LlmClient", "MetricsTracker", "ModelInfo", "NodeConfig", "NodeMetrics",
    "Pricing", "Usage", "create_client", "parse_request", "resolve_engine",
]
