"""Circuit breaker transitions over (injected) time, and the balancer's health checks."""

from __future__ import annotations

import random

from balancer_fakes import FakeClient, chat_request

from blueprint.balancer import Balancer, BalancerSettings, BreakerState, CircuitBreaker
from blueprint.balancer.settings import HealthSettings
from tests.clock import ManualClock as Clock


def breaker(clock: Clock, **knobs: object) -> CircuitBreaker:
    settings = HealthSettings.model_validate({"failure_threshold": 3, "open_base_s": 2.0, "open_max_s": 16.0,
                                              "jitter": 0.0, **knobs})
    return CircuitBreaker(settings, clock=clock, rng=random.Random(0))


def test_consecutive_failures_open_then_half_open_then_close() -> None:
    clock = Clock()
    b = breaker(clock)
    b.record_failure("x")
    b.record_failure("x")
    b.record_success()  # a success resets the consecutive count
    b.record_failure("x")
    b.record_failure("x")
    assert b.state is BreakerState.CLOSED
    b.record_failure("x")
    assert b.state is BreakerState.OPEN and not b.available()
    clock.now += 1.9
    assert b.state is BreakerState.OPEN
    clock.now += 0.2
    assert b.state is BreakerState.HALF_OPEN and b.available()
    b.on_dispatch()  # the one probe
    assert not b.available()
    b.record_success()
    assert b.state is BreakerState.CLOSED and b.available()


def test_backoff_doubles_per_reopen_and_is_capped() -> None:
    clock = Clock()
    b = breaker(clock, failure_threshold=1)
    periods = []
    for _ in range(5):
        b.record_failure("x")
        assert b.state is BreakerState.OPEN
        start = clock.now
        while b.state is BreakerState.OPEN:
            clock.now += 0.25
        periods.append(round(clock.now - start, 2))
        b.on_dispatch()  # half-open probe fails: reopen
    assert periods == [2.0, 4.0, 8.0, 16.0, 16.0]
    b.record_success()
    b.record_failure("x")
    assert b.retry_at == clock.now + 2.0  # success reset the backoff


def test_jitter_spreads_the_open_period() -> None:
    clock = Clock()
    settings = HealthSettings(failure_threshold=1, open_base_s=10.0, jitter=0.2)
    ends = set()
    for seed in range(20):
        b = CircuitBreaker(settings, clock=clock, rng=random.Random(seed))
        b.record_failure("x")
        assert b.retry_at is not None
        ends.add(round(b.retry_at - clock.now, 3))
    assert len(ends) > 10 and all(8.0 <= end <= 12.0 for end in ends)


def test_failure_rate_over_window_opens() -> None:
    clock = Clock()
    b = breaker(clock, failure_threshold=100, window_s=10.0, failure_rate=0.5, min_requests=10)
    for i in range(9):
        if i % 3:
            b.record_failure("x")
        else:
            b.record_success()
        clock.now += 0.1
    assert b.state is BreakerState.CLOSED  # below min_requests
    b.record_failure("x")
    assert b.state is BreakerState.OPEN  # 7 of 10 failed


def test_old_failures_fall_out_of_the_window() -> None:
    clock = Clock()
    b = breaker(clock, failure_threshold=100, window_s=5.0, min_requests=4)
    for _ in range(3):
        b.record_failure("x")
    clock.now += 10
    for _ in range(3):
        b.record_success()
    b.record_failure("x")
    assert b.state is BreakerState.CLOSED  # 1 of 4 in the window


async def test_active_checks_drain_and_restore_a_node() -> None:
    clock = Clock()
    settings = BalancerSettings.model_validate({
        "strategy": "round_robin",
        "health": {"failure_threshold": 2, "open_base_s": 5.0, "jitter": 0.0, "check_interval_s": 3600},
    })
    sick, well = FakeClient("sick"), FakeClient("well")
    balancer = Balancer([sick, well], settings, clock=clock)
    await balancer.start()
    try:
        sick.healthy = False
        await balancer.check_health()
        await balancer.check_health()
        assert balancer.node("sick").health is BreakerState.OPEN
        for _ in range(4):
            assert (await balancer.chat(chat_request())).choices[0].message.content == "well"
        sick.healthy = True
        await balancer.check_health()  # still open: no probe before the backoff
        assert balancer.node("sick").health is BreakerState.OPEN
        clock.now += 5.0
        assert balancer.node("sick").health is BreakerState.HALF_OPEN
        await balancer.check_health()  # the probe passes
        assert balancer.node("sick").health is BreakerState.CLOSED
        names = {(await balancer.chat(chat_request())).choices[0].message.content for _ in range(4)}
        assert names == {"sick", "well"}
        described = {n["name"]: n for n in balancer.describe()["nodes"]}
        assert described["sick"]["health"] == "closed"
    finally:
        await balancer.close()


async def test_half_open_admits_one_request_probe() -> None:
    clock = Clock()
    settings = BalancerSettings.model_validate({"health": {"failure_threshold": 1, "open_base_s": 1.0,
                                                           "jitter": 0.0}})
    client = FakeClient("a")
    balancer = Balancer([client], settings, clock=clock)
    await balancer.start()
    try:
        node = balancer.node("a")
        node.breaker.record_failure("x")
        clock.now += 1.0
        assert node.breaker.available()
        node.breaker.on_dispatch()
        assert not node.selectable()  # the probe is out: no second request
        node.breaker.release_probe()
        answer = await balancer.chat(chat_request())  # this request is the probe; success closes
        assert answer.choices[0].message.content == "a"
        assert node.health is BreakerState.CLOSED
    finally:
        await balancer.close()
