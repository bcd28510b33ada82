"""``serve`` freezes its start-up heap (``tune_gc``): the cyclic collector's full passes would
otherwise walk every module, setting and route again and stall the event loop under load (a full
pass took 30-130 ms on a loaded box, seen in streams' time to first chunk and gap tails)."""

from __future__ import annotations

import asyncio
import gc

from blueprint.balancer import Balancer
from blueprint.server import ServerSettings
from blueprint.server.runner import RunningServer, serve


async def test_serve_freezes_what_start_up_built() -> None:
    gc.unfreeze()
    stop = asyncio.Event()
    frozen: list[int] = []

    def ready(_running: RunningServer) -> None:
        frozen.append(gc.get_freeze_count())
        stop.set()

    balancer = Balancer([])
    threshold = gc.get_threshold()
    try:
        await asyncio.wait_for(serve(balancer, ServerSettings(port=0), stop=stop, on_ready=ready), 10)
    finally:
        gc.unfreeze()  # the rest of the test session collects as usual
        gc.set_threshold(*threshold)
        await balancer.close()
    assert frozen and frozen[0] > 1000
