"""Settings of the load balancer (the ``[balancer]`` table).

Every knob has a default that works for one to a few dozen nodes; the nested tables group the
knobs of one concern (health, retries, and the strategies that have parameters).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HealthSettings(_Table):
    """Active checks and the per-node circuit breaker."""

    check_interval_s: float = Field(default=10.0, gt=0, description="Seconds between active health checks.")
    check_timeout_s: float = Field(default=5.0, gt=0, description="A health check slower than this fails.")
    failure_threshold: int = Field(default=5, ge=1, description="Consecutive failures that open the breaker.")
    window_s: float = Field(default=60.0, gt=0, description="Window of the failure-rate rule.")
    failure_rate: float = Field(default=0.5, gt=0, le=1, description="Failure rate in the window that opens.")
    min_requests: int = Field(default=10, ge=1, description="Requests in the window before the rate counts.")
    open_base_s: float = Field(default=2.0, gt=0, description="First open period (then doubled per reopen).")
    open_max_s: float = Field(default=60.0, gt=0, description="Cap on the open period.")
    jitter: float = Field(default=0.2, ge=0, le=1, description="Relative random spread of the open period.")
    metrics_interval_s: float = Field(default=5.0, gt=0, description="Refresh of backend metrics (vLLM).")


class RetrySettings(_Table):
    """Retries of requests that failed before their first token."""

    max_attempts: int = Field(default=3, ge=1, description="Attempts in all, each on a different node.")
    backoff_base_s: float = Field(default=0.05, ge=0, description="Backoff before the second attempt.")
    backoff_max_s: float = Field(default=1.0, ge=0, description="Cap on one backoff.")
    request_timeout_s: float | None = Field(
        default=None, gt=0, description="Longest wait for one attempt of a non-streamed request."
    )
    first_token_timeout_s: float | None = Field(
        default=None, gt=0,
        description="A node that sends nothing for this long is treated as failed (then retried).",
    )


class CacheAwareSettings(_Table):
    """SGLang-style cache-aware routing."""

    match_threshold: float = Field(default=0.3, ge=0, le=1, description="Prefix match ratio to follow.")
    balance_abs_threshold: int = Field(default=8, ge=0, description="Imbalance: max-min load above this...")
    balance_rel_threshold: float = Field(default=1.5, ge=1, description="...and max above rel*min.")
    max_chars_per_node: int = Field(default=2_000_000, ge=1, description="Prefix tree size per node.")
    chunk_chars: int = Field(
        default=16, ge=1,
        description="Granularity of a prefix match: whole chunks of this many characters count (a "
        "prompt found in full counts in full).",
    )
    placement: Literal["least_loaded", "prefix_hash"] = Field(
        default="least_loaded",
        description="Home of a prefix no node holds: least loaded, or a hash of its start (the same "
        "node from every server worker; `server.workers` > 1 sets it).",
    )
    hash_prefix_chars: int = Field(default=256, ge=1, description="prefix_hash: characters hashed.")


class LatencySettings(_Table):
    """Latency-based routing (TTFT and time per output token kept apart)."""

    alpha: float = Field(default=0.2, gt=0, le=1, description="EWMA weight of a new observation.")
    expected_tokens: int = Field(default=128, ge=1, description="Output tokens when max_tokens is unset.")
    explore_requests: int = Field(default=3, ge=0, description="Probes a new node gets first.")
    epsilon: float = Field(default=0.02, ge=0, le=1, description="Chance of a random pick.")
    load_penalty: float = Field(default=1.0, ge=0, description="latency * (1 + k*load/limit).")


class BalancerSettings(_Table):
    strategy: str = Field(default="least_loaded", description="Default strategy for every model.")
    per_model: dict[str, str] = Field(default_factory=dict, description="Strategy per model id.")
    nodes_file: Path | None = Field(default=None, description="TOML file of [[nodes]] watched for changes.")
    watch_interval_s: float = Field(default=2.0, gt=0, description="mtime poll period of nodes_file.")
    queue_timeout_s: float | None = Field(
        default=None, gt=0, description="Longest wait in the queue before 429 (None: wait for a slot)."
    )
    drain_timeout_s: float = Field(default=30.0, ge=0, description="Longest wait for in-flight on remove.")
    reserved_job_share: float = Field(
        default=0.0, ge=0, lt=1,
        description="Share of each node's slots only chain jobs may use (HTTP gets the rest).",
    )
    health: HealthSettings = Field(default_factory=HealthSettings)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    cache_aware: CacheAwareSettings = Field(default_factory=CacheAwareSettings)
    latency: LatencySettings = Field(default_factory=LatencySettings)
    weight_source: Literal["weight", "price"] = Field(
        default="weight", description="weighted strategy: NodeConfig.weight, or the inverse of its price."
    )
    seed: int | None = Field(default=None, description="Seed of the random choices (tests, benchmarks).")

    def strategy_for(self, model: str) -> str:
        return self.per_model.get(model, self.strategy)
