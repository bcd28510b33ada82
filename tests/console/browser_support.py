"""What the browser tests share: the chromium skip rule, screenshots under ``bench/out/``, the
login through the page's form, and a bounded chat load against the API."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import httpx
import pytest

from tests.console.cdp import Page, find_chromium

REPO = Path(__file__).resolve().parents[2]
SHOTS = REPO / "bench" / "out"
USER_KEY = "sk-console-user-1111"
ADMIN_KEY = "sk-console-admin-2222"


def require_chromium() -> str:
    """The browser, or a skip when none is installed at all (``scripts/setup.sh`` installs it)."""
    found = find_chromium()
    if found is None:
        pytest.skip("no chromium installed (scripts/setup.sh installs Debian's package)")
    return found


async def log_in(page: Page, base_url: str, key: str = ADMIN_KEY) -> None:
    """Through the login form, as a person would."""
    await page.goto(base_url + "/")
    await page.wait_for("document.querySelector('#key') !== null")
    await page.eval(f"document.querySelector('#key').value = {key!r}")
    loaded = page.expect("Page.loadEventFired")
    await page.eval("document.querySelector('#login').click()")
    await asyncio.wait_for(loaded, 30)
    await page.wait_for("document.querySelector('#nodes') !== null")


async def chat_load(base_url: str, model: str, stop: asyncio.Event, *, concurrency: int = 2,
                    max_requests: int = 400) -> int:
    """Chat requests from ``concurrency`` workers until ``stop`` (at most ``max_requests``)."""
    done = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal done
        while not stop.is_set() and done < max_requests:
            body = {"model": model, "max_tokens": 6, "temperature": 0, "stream": done % 2 == 1,
                    "messages": [{"role": "user", "content": f"count {done}"}]}
            with contextlib.suppress(httpx.HTTPError):
                await (await client.send(client.build_request("POST", "/v1/chat/completions", json=body),
                                         stream=True)).aread()
            done += 1

    headers = {"Authorization": f"Bearer {USER_KEY}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return done


async def chart_points(page: Page, chart: str) -> list[float]:
    """The non-empty values of a chart's first series (what the plot draws)."""
    values = await page.eval(
        f"(() => {{ const c = window.consoleCharts[{chart!r}]; if (!c) return []; "
        "return c.plot.data.slice(1).flat().filter(v => v !== null && v !== undefined); })()")
    return list(values or [])


async def wait_moving_chart(page: Page, chart: str, within: float = 60.0) -> list[float]:
    """Until the chart shows a positive value and then gains a new point (it moves)."""
    deadline = time.monotonic() + within
    await page.wait_for(f"window.consoleCharts[{chart!r}] && window.consoleCharts[{chart!r}]"
                        ".plot.data[1].some(v => v > 0)", within=within)
    first = await page.eval(f"window.consoleCharts[{chart!r}].plot.data[0].slice(-1)[0]")
    while time.monotonic() < deadline:
        last = await page.eval(f"window.consoleCharts[{chart!r}].plot.data[0].slice(-1)[0]")
        if last != first:
            return await chart_points(page, chart)
        await asyncio.sleep(0.2)
    raise AssertionError(f"chart {chart} did not move")
