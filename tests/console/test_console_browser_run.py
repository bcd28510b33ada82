"""The console of a real ``python -m blueprint run`` on anvil with the TNT Core state and the tiny
model, in headless Chromium: the chain panel shows the service, the operator, cursor and head,
the jobs from the ledger with their state, timings and transaction links; opening a job's row
shows its request and result. The screenshot is ``bench/out/console-run.png``."""

from __future__ import annotations

import asyncio
import json
import textwrap
from pathlib import Path

import httpx
import pytest

from blueprint.devnet.anvil import DEV_KEYS
from blueprint.devnet.setup import submit_job, wait_for_result
from blueprint.devnet.stack import DaemonProcess, chain_client, create_service
from blueprint.jobs.codec import decode_result_json, encode_inputs
from blueprint.server.runner import free_port
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
from tests.devnet_support import devnet_anvil

pytestmark = [pytest.mark.chain, pytest.mark.slow]

EXPLORER = "https://explorer.example/tx/{tx}"


async def test_console_against_run_on_anvil(tmp_path: Path, tiny_model_dir: Path) -> None:
    chromium = require_chromium()
    with devnet_anvil() as anvil:
        async with chain_client(anvil) as client:
            service = await create_service(client, DEV_KEYS[0], tmp_path / "keystore")
        port = free_port()
        config = tmp_path / "operator.toml"
        config.write_text(textwrap.dedent(f"""
            [[nodes]]
            name = "tiny-node"
            engine = "transformers"
            model = "tiny"
            path = "{tiny_model_dir}"
            device = "cpu"
            dtype = "float32"
            max_batch_size = 2
            [server]
            port = {port}
            api_keys = ["{USER_KEY}"]
            admin_keys = ["{ADMIN_KEY}"]
            [server.console]
            refresh_s = 0.5
            tx_url = "{EXPLORER}"
            [jobs]
            poll_interval_s = 0.2
            shutdown_timeout_s = 10
            """))
        env = service.manager_env(keystore_uri=str(tmp_path / "keystore"), data_dir=str(tmp_path / "data"),
                                  ws_rpc_url=anvil.ws_url)
        env["BLUEPRINT_CONFIG"] = str(config)
        env["API_KEYS"] = ""
        daemon = DaemonProcess(env, tmp_path / "daemon.log").start()
        try:
            await asyncio.to_thread(daemon.wait_ready)
            base = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(base_url=base, timeout=10) as http:
                refused = await http.get("/console/api/state",
                                         headers={"Authorization": f"Bearer {USER_KEY}"})
                assert refused.status_code == 401

            jobs = [(0, encode_inputs("tiny", 6, {"messages": [{"role": "user", "content": "Hi"}],
                                                  "temperature": 0})),
                    (1, encode_inputs("tiny", 6, {"prompt": "Once upon", "temperature": 0}))]
            async with chain_client(anvil) as client:
                call_ids = [await submit_job(client, service.owner, service.service_id, index, inputs)
                            for index, inputs in jobs]
                for call_id in call_ids:
                    result = await wait_for_result(client, service.service_id, call_id, 60,
                                                   operator=service.operator.address)
                    assert "error" not in decode_result_json(result.output)

            async with browser_page(chromium) as page:
                await page.viewport(1280, 1000)
                await log_in(page, base)
                summary = await page.wait_for(
                    "(() => { const t = document.querySelector('#chain-summary').textContent;"
                    f" return t.includes({service.operator.address!r}) ? t : null; }})()")
                assert str(service.service_id) in summary
                rows = await page.wait_for(
                    "(() => { const r = [...document.querySelectorAll('#jobs tbody tr')].map(tr => "
                    "[tr.dataset.call, tr.querySelector('.badge').textContent]);"
                    " return r.filter(x => x[1] === 'confirmed').length >= 2 ? r : null; })()", within=60)
                assert {int(call) for call, _state in rows} >= set(call_ids)
                link = await page.eval("document.querySelector('#jobs tbody tr a').href")
                assert link.startswith("https://explorer.example/tx/0x")
                await page.wait_for("document.querySelector('#chain-summary').textContent.includes('us') ||"
                                    " [...document.querySelectorAll('#jobs tbody tr')].some("
                                    "tr => tr.textContent.includes('us'))")

                # HTTP traffic next to the jobs: the charts move
                served = await chat_load(base, "tiny", asyncio.Event(), max_requests=40)
                assert served >= 40
                await wait_moving_chart(page, "requests", within=30)


                fetch_state = ("fetch('/console/api/state', {headers: {'X-Console-Token': "
                               "document.querySelector('meta[name=\"console-token\"]').content}})"
                               ".then(r => r.text())")
                for _ in range(60):  # the cursor and head snapshot refreshes every 5 s
                    chain = json.loads(await page.eval(fetch_state))["chain"]
                    if chain["cursor_block"] is not None and chain["head_block"] is not None:
                        break
                    await asyncio.sleep(0.5)
                assert chain["service_id"] == service.service_id
                assert chain["operator"] == service.operator.address
                assert chain["head_block"] >= chain["cursor_block"] > 0
                assert chain["ledger"].get("confirmed", 0) >= 2
                assert chain["txs_sent"] >= 2 and chain["balance_wei"] is not None
                chat_call = call_ids[0]
                job = next(j for j in chain["jobs"] if j["call_id"] == chat_call)
                assert job["state"] == "confirmed" and job["answered_by"] == "us"
                assert job["seen_at"] <= job["answered_at"] <= job["confirmed_at"]

                row = f"document.querySelector('#jobs tbody tr[data-call=\"{chat_call}\"]')"
                await page.eval(row + ".click()")
                detail = await page.wait_for(
                    "(() => { const d = document.querySelector('#job-detail');"
                    " return d.hidden ? null : d.textContent; })()")
                # the ledger keeps no inputs or result after confirmation: both are read from chain
                assert f"Job {chat_call}" in detail and "chat.completion" in detail and "Hi" in detail
                await page.wait_for("document.querySelector('#chain-summary').textContent"
                                    ".includes('confirmed')")
                await page.screenshot(SHOTS / "console-run.png")
        finally:
            daemon.stop(timeout=30)
