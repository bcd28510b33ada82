"""Settings of the job pipeline (the ``[jobs]`` table; env ``JOBS__MAX_CONCURRENT`` etc.)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class JobsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_concurrent: int = Field(default=64, ge=1, description="Jobs computed at once (the semaphore).")
    job_timeout_s: float = Field(default=300.0, gt=0,
                                 description="Longest a handler may run; then an error result.")
    max_handler_runs: int = Field(
        default=2, ge=1,
        description="Starts of a job's handler that never finished (the process died with it) "
                    "before the job is answered with a `job_crashed` error instead of run again.",
    )
    shutdown_timeout_s: float = Field(default=30.0, ge=0,
                                      description="On SIGTERM, how long running jobs may finish.")
    confirmations: int = Field(default=0, ge=0, description="Blocks a JobSubmitted log waits before it runs.")
    poll_interval_s: float = Field(default=1.0, gt=0,
                                   description="eth_getLogs polling period (fallback and backfill).")
    start_block: int | None = Field(
        default=None, ge=0,
        description="First block to scan when the ledger has no cursor (None: the service's activation).",
    )
    batch_window_s: float = Field(default=0.0, ge=0,
                                  description="Extra wait to batch results (0: whatever accumulated).")
    simulate_before_send: bool = Field(
        default=True,
        description="eth_call each submitResult(s) before sending it (a revert costs no gas; slower bursts).",
    )
    max_batch: int = Field(default=32, ge=1, description="Most results in one submitResults.")
    submit_concurrency: int = Field(
        default=1, ge=1,
        description="Result transactions being simulated and broadcast at once (fewer: bigger "
                    "batches, fewer transactions and less gas per job; more: less waiting behind "
                    "a slow node).",
    )
    submit_retry_s: float = Field(default=300.0, gt=0,
                                  description="Keep retrying a result this long on RPC errors.")
    takeover_after_s: float = Field(
        default=20.0, gt=0,
        description="Several operators: the k-th in a job's ranking takes over after k x this many "
                    "seconds without a result (and the one before it stops waiting for capacity).",
    )
    assignment_weighting: Literal["equal", "inverse_price"] = Field(
        default="equal",
        description="Rank operators by plain rendezvous hashing, or weighted by the inverse of "
                    "their completion price (cheaper operators answer more jobs).",
    )
    offers_refresh_s: float = Field(
        default=60.0, gt=0,
        description="Re-read the service's offers this often (they are also re-read on every "
                    "offer event of the manager).",
    )
