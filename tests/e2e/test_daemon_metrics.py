"""``GET /metrics`` of the daemon's HTTP API carries the job pipeline and the chain layer.

The first test: the daemon runs in-process through :func:`blueprint.assembly.run_daemon` (what ``python -m
blueprint run`` calls) against anvil loaded with the real TNT Core state, a fresh service, a
transformers node on the tiny model and the HTTP API on a loopback port. One job is submitted on
chain; the scrapes before and after, parsed with prometheus_client's own parser, must show the
job counters move and sensible chain figures (cursor past the job's block, the job confirmed in
the ledger, the WebSocket up, transactions sent and none reverted).

The second drives a real transaction manager into the rarer paths (a fee bump, an on-chain
revert) and a failing snapshot refresh, and reads them back through the collector.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from eth_account import Account
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from blueprint.assembly import run_daemon
from blueprint.config import load_settings
from blueprint.context.metrics import ChainMetrics
from blueprint.devnet.anvil import DEV_KEYS, Anvil
from blueprint.devnet.setup import submit_job, wait_for_result
from blueprint.devnet.stack import TANGLE, chain_client, create_service, write_config
from blueprint.jobs.codec import decode_result_json, encode_inputs
from blueprint.tangle.ledger import Ledger
from blueprint.tangle.txmanager import TxManager

pytestmark = [pytest.mark.chain, pytest.mark.slow]

MODEL = "tiny"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _parse(text: str) -> Samples:
    """Every sample of an exposition, keyed by (sample name, labels)."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def _value(samples: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    assert key in samples, f"{name}{labels} not exposed"
    return samples[key]


async def _eventually(condition: Callable[[], bool], within: float) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def _scrape(http: httpx.AsyncClient) -> Samples:
    response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return _parse(response.text)


async def test_metrics_carry_job_and_chain_figures(anvil: Anvil, tmp_path: Path,
                                                   tiny_model_dir: Path) -> None:
    started = time.monotonic()
    async with chain_client(anvil) as client:
        service = await create_service(client, DEV_KEYS[0], tmp_path / "keystore")
    config = write_config(tmp_path / "config.toml", [
        {"engine": "transformers", "model": MODEL, "path": str(tiny_model_dir), "device": "cpu",
         "max_batch_size": 2},
    ], server_port=_free_port(), jobs={"poll_interval_s": 0.2, "shutdown_timeout_s": 10})
    env = service.manager_env(keystore_uri=str(tmp_path / "keystore"), data_dir=str(tmp_path / "data"),
                              ws_rpc_url=anvil.ws_url)
    settings = load_settings(config, **{key.lower(): value for key, value in env.items()})
    assert settings.server.enabled and settings.server.is_loopback()

    stop = asyncio.Event()
    daemon = asyncio.create_task(run_daemon(settings, stop=stop, install_signals=False))
    base = f"http://127.0.0.1:{settings.server.port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            deadline = time.monotonic() + 60
            while True:  # until the API answers (the daemon is taking jobs by then)
                assert not daemon.done(), daemon.exception()
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get("/ready")).status_code == 200:
                        break
                assert time.monotonic() < deadline, "daemon API not up"
                await asyncio.sleep(0.1)
            assert (await http.get("/v1/models")).status_code == 200  # one HTTP request counted

            before = await _scrape(http)
            # the job families exist before any job, with nothing counted yet
            assert _value(before, "blueprint_jobs_submitted_total") == 0
            assert _value(before, "blueprint_jobs_in_flight") == 0
            assert ("blueprint_jobs_seen_total", frozenset({("job_index", "0")})) not in before

            async with chain_client(anvil) as client:
                head_before = int(await client.w3.eth.block_number)
                call_id = await submit_job(client, service.owner, service.service_id, 0,
                                           encode_inputs(MODEL, 6, {"messages": [
                                               {"role": "user", "content": "Hi"}], "temperature": 0}))
                result = await wait_for_result(client, service.service_id, call_id, 60,
                                               operator=service.operator.address)
            assert decode_result_json(result.output)["object"] == "chat.completion"

            deadline = time.monotonic() + 20
            while True:  # the ledger snapshot refreshes every few seconds; the job counters at once
                after = await _scrape(http)
                if _value(after, "blueprint_ledger_jobs", state="confirmed") >= 1:
                    break
                assert time.monotonic() < deadline, "ledger snapshot never showed the confirmed job"
                await asyncio.sleep(0.5)
    finally:
        stop.set()
        await asyncio.wait_for(daemon, 60)

    # HTTP metrics and per-node gauges are still there
    assert _value(after, "blueprint_http_requests_total", route="models", model="-", status="200") == 1
    assert _value(after, "blueprint_node_healthy", node=f"transformers:{MODEL}") == 1

    # the job pipeline moved by exactly the one job
    assert _value(after, "blueprint_jobs_seen_total", job_index="0") == 1
    assert _value(after, "blueprint_jobs_answered_total", job_index="0", outcome="ok") == 1
    assert _value(after, "blueprint_jobs_submitted_total") == 1
    assert _value(after, "blueprint_jobs_failed_total") == 0
    assert _value(after, "blueprint_jobs_in_flight") == 0
    assert _value(after, "blueprint_job_handler_seconds_count", job_index="0") == 1
    assert 0 < _value(after, "blueprint_job_handler_seconds_sum", job_index="0") < 30
    assert _value(after, "blueprint_job_overhead_seconds_count") == 1

    # the ledger: the job is confirmed and nothing is stuck or lost
    assert _value(after, "blueprint_ledger_jobs", state="confirmed") == 1
    for state in ("seen", "running", "answered", "submitted", "failed", "orphaned"):
        assert _value(after, "blueprint_ledger_jobs", state=state) == 0, state
    assert 0 <= _value(after, "blueprint_chain_snapshot_age_seconds") < 10
    assert _value(after, "blueprint_chain_snapshot_errors_total") == 0

    # the producer: it scanned past the job's block, over the socket, without trouble
    cursor = _value(after, "blueprint_producer_cursor_block")
    head = _value(after, "blueprint_chain_head_block")
    assert head_before < cursor <= head
    assert 0 <= _value(after, "blueprint_producer_head_lag_blocks") <= head - head_before
    assert _value(after, "blueprint_producer_scans_total") > _value(before, "blueprint_producer_scans_total")
    assert _value(after, "blueprint_producer_delivered_total") == 1
    assert _value(after, "blueprint_producer_ws_connected") == 1
    assert _value(after, "blueprint_producer_ws_connects_total") >= 1
    assert _value(after, "blueprint_producer_pending_jobs") == 0
    for name in ("scan_errors", "reorgs", "orphaned", "decode_errors"):
        assert _value(after, f"blueprint_producer_{name}_total") == 0, name

    # the transaction manager: at least the result went out (heartbeats share it); nothing reverted
    assert _value(after, "blueprint_tx_sent_total") >= 1
    assert _value(after, "blueprint_tx_nonce_resyncs_total") >= 1
    assert _value(after, "blueprint_tx_reverted_total") == 0
    assert _value(after, "blueprint_tx_bumped_total") == 0
    assert time.monotonic() - started < 60


async def test_collector_reads_tx_bumps_reverts_and_survives_a_failed_refresh(
    anvil: Anvil, tmp_path: Path
) -> None:
    ledger = await Ledger.open(tmp_path / "data")
    async with chain_client(anvil) as client:
        txm = TxManager(client.w3, Account.from_key(DEV_KEYS[1]), bump_after=0.2, receipt_timeout=10.0)
        metrics = ChainMetrics(ledger, txm=txm, w3=client.w3, refresh_interval_s=0.05)
        registry = CollectorRegistry()
        registry.register(metrics)
        idle = _parse(generate_latest(registry).decode())
        assert _value(idle, "blueprint_tx_sent_total") == 0  # families exist before any snapshot
        assert ("blueprint_ledger_jobs", frozenset({("state", "confirmed")})) not in idle
        assert not any(name.startswith("blueprint_producer_") for name, _ in idle)  # no producer given

        anvil.rpc("evm_setAutomine", [False])  # a transaction nobody mines is bumped
        try:
            sent = await txm.send(txm.address, b"", gas=30_000, simulate=False)
            waiter = asyncio.create_task(txm.wait(sent))
            await _eventually(lambda: len(sent.hashes) >= 2, within=5)
            anvil.rpc("evm_mine", [])
            assert (await asyncio.wait_for(waiter, 5)).status == 1
        finally:
            anvil.rpc("evm_setAutomine", [True])
        # an unknown selector on the Tangle proxy, unsimulated: mined, and reverted
        sent = await txm.send(TANGLE, b"\xde\xad\xbe\xef", gas=100_000, simulate=False)
        assert (await txm.wait(sent)).status == 0

        await metrics.refresh()
        head = int(await client.w3.eth.block_number)
        samples = _parse(generate_latest(registry).decode())
        assert _value(samples, "blueprint_tx_sent_total") == 2
        assert _value(samples, "blueprint_tx_bumped_total") >= 1
        assert _value(samples, "blueprint_tx_reverted_total") == 1
        assert _value(samples, "blueprint_tx_nonce_resyncs_total") == 1
        assert _value(samples, "blueprint_chain_head_block") == head
        assert _value(samples, "blueprint_ledger_jobs", state="confirmed") == 0

        # the ledger goes away: the refresh task counts the failure and the last snapshot stays
        await ledger.close()
        await metrics.start()
        try:
            await _eventually(lambda: metrics.refresh_errors >= 2, within=5)
        finally:
            await metrics.stop()
        samples = _parse(generate_latest(registry).decode())
        assert _value(samples, "blueprint_chain_snapshot_errors_total") >= 2
        assert _value(samples, "blueprint_ledger_jobs", state="confirmed") == 0
        assert _value(samples, "blueprint_chain_head_block") == head
