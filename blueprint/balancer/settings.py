"""Settings of the load balancer (the ``[balancer]`` table)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class BalancerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    strategy: str = Field(default="least_loaded", description="Default strategy for every model.")
    per_model: dict[str, str] = Field(default_factory=dict, description="Strategy per model id.")
