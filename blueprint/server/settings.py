"""Settings of the OpenAI-compatible HTTP API (the ``[server]`` table).

Keys come from the TOML file, from ``SERVER__API_KEYS`` (a JSON list or a comma-separated string)
or from ``API_KEYS`` (comma-separated) when neither of the others sets any. They are
``SecretStr`` so that no repr, log line or error message ever shows them.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from blueprint.llm.types import ModelInfo, Pricing
from blueprint.server.console.settings import ConsoleSettings

API_KEYS_ENV = "API_KEYS"
#: What an API or admin key may hold: visible ASCII, no spaces (what a Bearer token carries).
_KEY_RE = re.compile(r"[\x21-\x7e]+")


def _split_keys(value: Any) -> Any:
    """Accept ``"k1,k2"`` and ``'["k1", "k2"]'`` as well as a list (env vars are strings)."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        return json.loads(value)
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Datacenter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    country_code: str = Field(pattern=r"^[A-Z]{2}$", description="ISO 3166 alpha-2.")
    region: str | None = None


V2_ONLY_FIELDS = {"deprecation_date", "is_free", "datacenters", "deployment_region", "compliance"}


class ModelCatalogEntry(BaseModel):
    """What an operator adds to a model's ``/v1/models`` entry (OpenRouter's optional fields);
    every field left unset keeps what the engine reports."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    description: str | None = None
    hugging_face_id: str | None = None
    quantization: str | None = None
    context_length: int | None = Field(default=None, ge=1)
    max_output_length: int | None = Field(default=None, ge=1)
    capacity_tpm: int | None = Field(default=None, ge=0, description="Tokens/minute this operator serves.")
    is_ready: bool | None = None
    pricing: Pricing | None = None
    supported_features: list[str] | None = None
    supported_sampling_parameters: list[str] | None = None
    created: int | None = Field(default=None, ge=0, description="Unix time shown as `created` (else "
                                "the engine's, fixed at its first listing).")
    # The operator's data policy, shown in the v2 document only (OpenRouter's optional fields).
    deprecation_date: str | None = Field(
        default=None, pattern=r"^\d{4}-\d{2}-\d{2}(T\d{2}:00:00Z)?$",
        description="YYYY-MM-DD or YYYY-MM-DDTHH:00:00Z (UTC) when the model goes away.")
    is_free: bool | None = None
    datacenters: list[Datacenter] | None = None
    deployment_region: str | None = Field(default=None, min_length=1)
    compliance: dict[str, bool] | None = Field(default=None, description="e.g. {zdr = true, hipaa = false}.")

    def policy(self) -> dict[str, Any]:
        """The v2-only fields that are set (data policy, deprecation)."""
        return self.model_dump(include=V2_ONLY_FIELDS, exclude_none=True)

    def apply(self, info: ModelInfo) -> ModelInfo:
        """``info`` with this entry's set fields laid over it."""
        update = self.model_dump(exclude_none=True, exclude=V2_ONLY_FIELDS)
        if "pricing" in update:
            update["pricing"] = self.pricing
        return info.model_copy(update=update) if update else info


class ServerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=True, description="Serve the HTTP API from `run` too.")
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    public_url: str | None = Field(
        default=None, description="URL clients reach this API at: the on-chain offer's endpoint and "
        "rpcAddress (`register`, registration mode)."
    )
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="Accepted Bearer keys."
    )
    admin_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Keys for /admin/* (only these, never an API key); empty: the admin API is off."
    )
    allow_public_without_auth: bool = Field(
        default=False, description="Allow a non-loopback host with no API key (explicit opt-out)."
    )
    rate_limit_per_minute: float | None = Field(
        default=None, gt=0, description="Requests per minute per API key (token bucket); None: no limit."
    )
    rate_limit_burst: int | None = Field(
        default=None, ge=1, description="Bucket size; None: one minute's worth of requests."
    )
    auth_failures_per_minute: float | None = Field(
        default=30.0, gt=0,
        description="Failed key checks per minute per client address (TCP peer; per worker), refilling "
        "a bucket of auth_failure_burst; once it is empty the address gets 429 on every request that "
        "needs a key, the right key too. None: no limit.",
    )
    auth_failure_burst: int = Field(default=10, ge=1,
                                    description="Failed key checks an address may make in a row.")
    max_body_bytes: int = Field(default=1 << 20, ge=1024, description="Largest request body accepted (413).")
    quote_max_body_bytes: int = Field(default=1 << 18, ge=1024,
                                      description="Largest /v1/quote body accepted (413).")
    quote_rate_per_minute: float | None = Field(
        default=60.0, gt=0,
        description="/v1/quote requests per minute per client address (it needs no key); None: no limit.",
    )
    quote_burst: int = Field(default=10, ge=1, description="Bucket size of the /v1/quote rate limit.")
    request_timeout_s: float = Field(default=600.0, gt=0, description=(
        "Bound on a non-streamed request, and on each silence between two chunks of a stream."))
    first_token_timeout_s: float = Field(default=120.0, gt=0, description="Bound on the first token's wait.")
    body_timeout_s: float = Field(
        default=30.0, gt=0, description="Longest wait for a request body (a client trickling it gets 408)."
    )
    stream_keepalive_s: float = Field(
        default=5.0, gt=0, description="SSE comment keep-alive interval while no token has come yet."
    )
    stream_header_grace_s: float = Field(
        default=0.005, ge=0, le=1.0,
        description="How long a stream may wait for its first event before headers are flushed: an "
        "error raised at once (429, 503) still gets its real status instead of an SSE error.",
    )
    shutdown_timeout_s: float = Field(default=30.0, ge=0, description="Bound on finishing in-flight work.")
    idle_timeout_s: float = Field(
        default=30.0, gt=0,
        description="A connection without a complete request head for this long (idle, or trickling "
        "its headers) is closed.",
    )
    max_connections: int = Field(
        default=2048, ge=1,
        description="Open connections at most; more are answered 503 and closed, with a log line "
        "(keep it under the process's file limit, `ulimit -n`).",
    )
    access_log: bool = Field(default=False, description="aiohttp access log (costs throughput; turns the "
                             "front off).")
    fast_front: bool = Field(
        default=True,
        description="Serve chat, completions and embeddings through the lean HTTP/1.1 front (about 60 "
        "µs less per request); other requests, and unusual ones, go to aiohttp. Off with access_log "
        "or tracing.",
    )
    workers: int = Field(
        default=1, ge=1, le=64,
        description="`serve` only: server processes sharing the port (SO_REUSEPORT); for openai nodes.",
    )
    model_catalog: dict[str, ModelCatalogEntry] = Field(
        default_factory=dict, description="Per model id: fields laid over /v1/models entries."
    )
    models_document: Literal["v2", "legacy"] = Field(
        default="v2", description="/v1/models format: OpenRouter's typed schema 2.4, or the legacy flat one."
    )
    console: ConsoleSettings = Field(default_factory=ConsoleSettings)

    _split_api_keys = field_validator("api_keys", "admin_keys", mode="before")(_split_keys)

    @field_validator("api_keys", "admin_keys")
    @classmethod
    def _visible_keys(cls, keys: list[SecretStr]) -> list[SecretStr]:
        """A key is visible ASCII without spaces: an empty or whitespace key (``api_keys = [""]``)
        let tokens of U+00A0 or U+3000 in, and passed the public-bind guard."""
        for position, key in enumerate(keys):
            if not _KEY_RE.fullmatch(key.get_secret_value()):
                raise ValueError(f"key #{position + 1} is empty or holds spaces or non-ASCII characters: "
                                 "use visible ASCII only (e.g. sk-... from `openssl rand -hex 24`)")
        return keys

    @model_validator(mode="after")
    def _keys_from_env(self) -> ServerSettings:
        if not self.api_keys:
            raw = os.environ.get(API_KEYS_ENV, "")
            self.api_keys = self._visible_keys([SecretStr(key) for key in _split_keys(raw)])
        return self

    def is_loopback(self) -> bool:
        """Whether ``host`` only accepts connections from this machine."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def admin_key_values(self) -> list[str]:
        return [key.get_secret_value() for key in self.admin_keys]

    def api_key_values(self) -> list[str]:
        return [key.get_secret_value() for key in self.api_keys]
