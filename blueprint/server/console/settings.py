"""Settings of the operator console (the ``[server.console]`` table)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


class ConsoleSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=True, description="Serve the console at / (only with admin keys).")
    refresh_s: float = Field(default=2.0, ge=0.2, le=60.0,
                             description="Sampling period of the charts (and the page's poll).")
    history_points: int = Field(default=180, ge=10, le=5000, description="Chart points kept per series.")
    session_ttl_s: float = Field(default=12 * 3600.0, gt=0, description="Lifetime of a console login.")
    recent_jobs: int = Field(default=50, ge=1, le=1000, description="Ledger jobs listed in the chain panel.")
    tx_url: str | None = Field(
        default=None,
        description="Explorer link for a transaction, with `{tx}` for its hash (None: hashes only).")

    @field_validator("tx_url")
    @classmethod
    def _tx_template(cls, value: str | None) -> str | None:
        if value is not None and (not value.startswith(("http://", "https://")) or "{tx}" not in value):
            raise ValueError("tx_url must be an http(s) URL containing {tx}, e.g. https://explorer/tx/{tx}")
        return value
