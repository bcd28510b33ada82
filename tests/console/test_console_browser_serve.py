"""The console in headless Chromium against a real ``python -m blueprint serve`` with the tiny
model: log in with the admin key, see the nodes table, watch the requests chart move while a load
runs, drain a node with its button and see it draining. Screenshots go to ``bench/out/``
(desktop and phone widths)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.console.browser_support import (
    ADMIN_KEY,
    SHOTS,
    USER_KEY,
    chat_load,
    log_in,
    require_chromium,
    wait_moving_chart,
)
from tests.console.cdp import browser_page

pytestmark = pytest.mark.slow


async def _serve(config: Path) -> tuple[asyncio.subprocess.Process, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("API_KEYS", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "blueprint", "serve", "--config", str(config), "--port", "0",
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 120)
    assert line.startswith(b"READY "), line
    return proc, f"http://127.0.0.1:{int(line.split()[1])}"


async def test_console_against_serve(tmp_path: Path, tiny_model_dir: Path) -> None:
    chromium = require_chromium()
    config = tmp_path / "operator.toml"
    nodes = "".join(textwrap.dedent(f"""
        [[nodes]]
        name = "{name}"
        engine = "transformers"
        model = "tiny"
        path = "{tiny_model_dir}"
        device = "cpu"
        dtype = "float32"
        max_batch_size = 2
        options = {{ torch_threads = 1 }}
        """) for name in ("tiny-a", "tiny-b"))
    config.write_text(nodes + textwrap.dedent(f"""
        [server]
        api_keys = ["{USER_KEY}"]
        admin_keys = ["{ADMIN_KEY}"]
        [server.console]
        refresh_s = 0.5
        """))
    proc, base = await _serve(config)
    stop = asyncio.Event()
    load: asyncio.Task[int] | None = None
    try:
        async with browser_page(chromium) as page:
            await page.viewport(1280, 900)
            # an ordinary API key is no way in
            await page.goto(base + "/")
            await page.eval(f"document.querySelector('#key').value = {USER_KEY!r}")
            refused = page.expect("Page.loadEventFired")
            await page.eval("document.querySelector('#login').click()")
            await asyncio.wait_for(refused, 30)
            assert "not an admin key" in await page.eval("document.querySelector('#message').textContent")
            assert await page.eval("document.querySelector('#nodes')") is None

            await log_in(page, base)
            names = await page.wait_for(
                "(() => { const n = [...document.querySelectorAll('#nodes tbody tr')]"
                ".map(r => r.dataset.node); return n.length === 2 ? n : null; })()")
            assert names == ["tiny-a", "tiny-b"]
            await page.wait_for("[...document.querySelectorAll('#nodes .health')].every("
                                "c => c.textContent === 'closed')")
            assert await page.eval("document.querySelector('#models tbody').textContent.includes('tiny')")
            assert "serve" in await page.eval("document.querySelector('#chain-summary').textContent")

            load = asyncio.create_task(chat_load(base, "tiny", stop))
            points = await wait_moving_chart(page, "requests", within=90)
            assert max(points) > 0
            await page.wait_for("window.consoleCharts.latency && window.consoleCharts.tokens"
                                " && window.consoleCharts.ttft")
            await page.screenshot(SHOTS / "console-serve.png")

            drain = "document.querySelector('tr[data-node=\"tiny-b\"] button[data-action=drain]')"
            await page.eval(drain + ".click()")
            await page.wait_for("document.querySelector('tr[data-node=\"tiny-b\"] .health').textContent"
                                " === 'draining'", within=60)
            assert await page.eval(drain + ".disabled")
            assert await page.eval("document.querySelector('tr[data-node=\"tiny-a\"] .health').textContent") \
                == "closed"
            stop.set()
            served = await asyncio.wait_for(load, 60)
            assert served > 0

            # add a node from the registered engines with the form, then remove it by its button
            await page.eval("document.querySelector('#add-node').open = true")
            form = "document.querySelector('#add-form')"
            await page.eval(f"{form}.engine.value = 'transformers'; {form}.model.value = 'tiny';"
                            f" {form}.name.value = 'tiny-c'; {form}.path.value = {str(tiny_model_dir)!r};"
                            f" {form}.max_batch_size.value = '1'")
            await page.eval(f"{form}.querySelector('button[type=submit]').click()")
            await page.wait_for("document.querySelector('tr[data-node=\"tiny-c\"] .health')?.textContent"
                                " === 'closed'", within=90)
            remove = "document.querySelector('tr[data-node=\"tiny-c\"] button[data-action=remove]')"
            await page.eval(remove + ".click()")  # arms the button
            assert await page.eval(remove + ".textContent") == "Confirm remove"
            await page.eval(remove + ".click()")
            await page.wait_for("document.querySelector('tr[data-node=\"tiny-c\"]') === null", within=60)

            await page.viewport(390, 844, mobile=True, scale=2)
            await asyncio.sleep(1.0)
            assert await page.eval("document.documentElement.scrollWidth <= window.innerWidth + 1")
            await page.screenshot(SHOTS / "console-phone.png", full_page=False)
    finally:
        stop.set()
        if load is not None and not load.done():
            load.cancel()
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()
