"""Settings of the OpenAI-compatible HTTP API (the ``[server]`` table)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class ServerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=True, description="Serve the HTTP API from `run` too.")
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    api_keys: list[SecretStr] = Field(default_factory=list, description="Accepted Bearer keys.")
    allow_public_without_auth: bool = Field(
        default=False, description="Allow a non-loopback host with no API key (explicit opt-out)."
    )
