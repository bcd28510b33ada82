"""The daemon's own metrics: jobs by outcome, timings of each stage, in-flight jobs.

Kept in a private ``CollectorRegistry`` per context (not the process-global one), so that tests
and the benchmark can build several contexts in one process; the HTTP server exposes
``registry`` next to its own metrics.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class JobMetrics:
    """Counters and histograms of the job pipeline (names prefixed ``blueprint_job``)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.jobs_seen = Counter("blueprint_jobs_seen", "Jobs read from the chain.", ["job_index"],
                                 registry=self.registry)
        self.jobs_answered = Counter(
            "blueprint_jobs_answered", "Jobs answered, by outcome (ok or the error code).",
            ["job_index", "outcome"], registry=self.registry,
        )
        self.jobs_submitted = Counter("blueprint_jobs_submitted", "Results sent to the chain.",
                                      registry=self.registry)
        self.jobs_failed = Counter("blueprint_jobs_failed", "Jobs whose result could not be submitted.",
                                   registry=self.registry)
        self.in_flight = Gauge("blueprint_jobs_in_flight", "Jobs being computed now.", registry=self.registry)
        self.handler_seconds = Histogram(
            "blueprint_job_handler_seconds", "Time in the handler (inference included).", ["job_index"],
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.overhead_seconds = Histogram(
            "blueprint_job_overhead_seconds",
            "Daemon time from job seen to result sent, minus the handler time.",
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
