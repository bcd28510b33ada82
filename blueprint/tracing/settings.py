"""Settings of OpenTelemetry tracing (the ``[tracing]`` table): off unless an OTLP endpoint is set."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class TracingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    otlp_endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP traces URL (e.g. http://collector:4318/v1/traces); None: tracing off.")
    service_name: str = Field(default="tangle-llm-blueprint", description="`service.name` of the spans.")
    sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0,
                                description="Share of new traces kept (a caller's sampled flag wins).")
    headers: dict[str, SecretStr] = Field(default_factory=dict,
                                          description="Headers sent to the collector (e.g. auth).")
    timeout_s: float = Field(default=10.0, gt=0, description="Export timeout of one batch.")
