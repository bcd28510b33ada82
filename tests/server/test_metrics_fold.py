"""The request metrics are counted as plain integers per request and folded into the prometheus
families when the registry is read: every reader (a scrape, the console's sampler) must still see
every finished request, token and the live in-flight count, and nothing twice."""

from __future__ import annotations

from types import SimpleNamespace

from blueprint.server.metrics import NO_MODEL, ServerMetrics


def _value(metrics: ServerMetrics, name: str, **labels: str) -> float | None:
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def test_every_reader_sees_every_request_once() -> None:
    metrics = ServerMetrics()
    route = metrics.route("chat_completions", "m")
    for status in (200, 200, 429):
        route.finished(status, 0.003)
    route.usage(SimpleNamespace(prompt_tokens=5, completion_tokens=7))
    no_model = metrics.route("models", NO_MODEL)  # no token series for it
    no_model.usage(SimpleNamespace(prompt_tokens=1, completion_tokens=1))
    text = metrics.render().decode()
    assert 'blueprint_http_requests_total{model="m",route="chat_completions",status="200"} 2.0' in text
    assert 'blueprint_http_requests_total{model="m",route="chat_completions",status="429"} 1.0' in text
    assert 'blueprint_http_tokens_total{kind="prompt",model="m"} 5.0' in text
    assert 'blueprint_http_tokens_total{kind="completion",model="m"} 7.0' in text
    assert 'blueprint_http_request_duration_seconds_count{model="m",route="chat_completions"} 3.0' in text
    assert 'model="-"' not in text.split("blueprint_http_tokens")[1].split("# HELP")[0]

    route.finished(200, 0.003)  # read again (the sampler's way): folded once more, not twice
    route.usage(SimpleNamespace(prompt_tokens=1, completion_tokens=2))
    assert _value(metrics, "blueprint_http_requests_total", status="200", model="m") == 3.0
    assert _value(metrics, "blueprint_http_tokens_total", kind="completion", model="m") == 9.0
    assert _value(metrics, "blueprint_http_requests_total", status="200", model="m") == 3.0


def test_in_flight_is_read_live() -> None:
    metrics = ServerMetrics()
    metrics.in_flight_now += 2
    assert _value(metrics, "blueprint_http_in_flight") == 2.0
    metrics.in_flight_now -= 2
    assert "blueprint_http_in_flight 0.0" in metrics.render().decode()


def test_the_histograms_read_as_prometheus_histograms_of_the_same_observations() -> None:
    """The latency and TTFT histograms are counted per request as plain integers: what a reader
    gets is exactly what prometheus_client's own Histogram gives for the same observations
    (bounds inclusive, cumulative buckets, +Inf, sum and count), each observation once."""
    from prometheus_client import CollectorRegistry, Histogram

    from blueprint.server.metrics import _LATENCY_BUCKETS, _TTFT_BUCKETS

    metrics = ServerMetrics()
    reference = CollectorRegistry()
    latency = Histogram("blueprint_http_request_duration_seconds", "x", ["route", "model"],
                        buckets=_LATENCY_BUCKETS, registry=reference)
    ttft = Histogram("blueprint_http_time_to_first_token_seconds", "x", ["route", "model"],
                     buckets=_TTFT_BUCKETS, registry=reference)
    samples = [0.0, 0.0005, 0.001, 0.0011, 0.25, 0.9999, 1.0, 7.5, 119.0, 120.0, 121.0, 5000.0]
    route = metrics.route("chat_completions", "m")
    for index, value in enumerate(samples):
        route.finished(200, value)
        latency.labels("chat_completions", "m").observe(value)
        if index % 2:
            route.first_token(value)
            ttft.labels("chat_completions", "m").observe(value)
        if index == 5:  # a read midway: nothing counted twice
            metrics.render()
    metrics.route("models", NO_MODEL).finished(200, 0.002)
    latency.labels("models", NO_MODEL).observe(0.002)

    def lines(text: str) -> set[str]:
        return {line for line in text.splitlines() if line.startswith(
            ("blueprint_http_request_duration_seconds", "blueprint_http_time_to_first_token_seconds"))
            and "_created" not in line}

    from prometheus_client import generate_latest
    ours, expected = lines(metrics.render().decode()), lines(generate_latest(reference).decode())
    assert ours == expected and len(ours) > 40
    assert not any('model="-"' in line for line in ours if "time_to_first_token" in line)
