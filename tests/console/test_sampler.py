"""The console's chart series: rates from two readings of the real metric registry, percentiles
from the histograms' bucket deltas (only the last period), gaps where there is no data, and the
prefix-cache hit rate per node from its counters."""

from __future__ import annotations

import math

import pytest

from blueprint.server.console.sampler import MetricsSampler, quantile
from blueprint.server.metrics import ServerMetrics
from tests.clock import ManualClock as Clock


def test_quantile_interpolates_within_buckets() -> None:
    buckets = {0.1: 0.0, 0.5: 50.0, 1.0: 100.0, math.inf: 100.0}
    assert quantile(0.5, buckets) == pytest.approx(0.5)
    assert quantile(0.25, buckets) == pytest.approx(0.3)
    assert quantile(0.99, buckets) == pytest.approx(0.99)
    assert quantile(0.5, {0.1: 0.0, math.inf: 0.0}) is None
    assert quantile(0.99, {1.0: 0.0, math.inf: 10.0}) == 1.0  # all above the last bound


def test_rates_and_percentiles_over_one_period() -> None:
    metrics = ServerMetrics()
    rows = [{"name": "vllm-a", "prefix_cache_hits": 0, "prefix_cache_queries": 0},
            {"name": "tiny-b"}]
    clock = Clock()
    sampler = MetricsSampler(metrics.registry, lambda: rows, lambda: 3, period_s=2.0, points=5, clock=clock)
    old = metrics.route("chat_completions", "m1")
    for _ in range(50):  # before the first reading: must not show in the first period's figures
        old.finished(200, 5.0)
    sampler.sample()
    assert sampler.series()["t"] == []

    clock.now += 2.0
    route = metrics.route("chat_completions", "m1")
    for _ in range(10):
        route.finished(200, 0.02)
        route.first_token(0.004)
    metrics.route("chat_completions", "m1").finished(429, 0.001)
    metrics.route("models", "-").finished(200, 0.001)  # not an inference route
    metrics.route("quote", "-").finished(200, 0.001)
    metrics.tokens.labels("m1", "completion").inc(100)
    rows[0].update(prefix_cache_hits=30, prefix_cache_queries=40)
    sampler.sample()

    series = sampler.series()
    assert series["t"] == [1002.0]
    assert series["requests_per_s"] == {"m1": [5.5]}  # 11 chat requests (one a 429) in 2 s
    assert series["output_tokens_per_s"] == {"m1": [50.0]}
    assert series["rejected_429_per_s"] == [0.5]
    assert series["queue_depth"] == [3.0]
    assert 0.01 < series["latency_p50_s"][0] <= 0.025  # this period only: the 5 s requests are old
    assert 0.0025 < series["ttft_p50_s"][0] <= 0.005
    assert series["prefix_cache_hit_rate"] == {"vllm-a": [0.75]}
    assert series["jobs_per_s"] == [None]  # serve: no job metrics in the registry
    assert sampler.totals["quotes_issued"] == 1

    clock.now += 2.0
    metrics.route("chat_completions", "m2").finished(200, 0.01)  # a new model joins with a padded series
    sampler.sample()
    series = sampler.series()
    assert series["requests_per_s"] == {"m1": [5.5, 0.0], "m2": [None, 0.5]}
    assert series["ttft_p50_s"] == [pytest.approx(0.0043, abs=1e-3), None]  # no first token this period
    assert series["prefix_cache_hit_rate"] == {"vllm-a": [0.75, None]}

    for _ in range(10):  # the history is bounded
        clock.now += 2.0
        sampler.sample()
    assert len(sampler.series()["t"]) == 5
    assert all(len(values) == 5 for values in sampler.series()["requests_per_s"].values())
