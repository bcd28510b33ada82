"""A service of three operators on anvil with the real TNT Core contracts and our manager.

A offers m1, B offers m1 and m2, C offers m2. Each daemon (``python -m blueprint run``, as the
blueprint manager starts it) has ``openai`` nodes pointing at its own emulated backends, which
count the requests they serve. Every job must be computed once, by an operator that offers its
model (the first of the service's ranking, or the next one after ``takeover_after_s`` when the
first is gone), and answered exactly once on chain.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from blueprint.contracts.manager import manager_contract
from blueprint.contracts.offer import ModelOffer, Offer
from blueprint.daemon import TRANSIENT_ERRORS
from blueprint.devnet.anvil import DEV_KEYS, Anvil, free_port
from blueprint.devnet.setup import submit_job, wait_for_result
from blueprint.devnet.stack import (
    DaemonProcess,
    MultiService,
    chain_client,
    create_multi_service,
    write_config,
)
from blueprint.jobs.codec import decode_result_json, encode_inputs
from blueprint.tangle.abi import JOB_SUBMITTED_FROM_QUOTE_TOPIC
from blueprint.tangle.assignment import rank
from blueprint.tangle.chain import logs_with_topic
from blueprint.tangle.quotes import SignedJobQuote
from tests.devnet_support import devnet_anvil
from tests.reliability.reliability_support import BackendProcess

pytestmark = [pytest.mark.chain, pytest.mark.slow]

TAKEOVER_S = 4.0
#: How long the last operator of a ranking waits for a healthy node before it answers an error.
PATIENCE_S = 6.0
GWEI = 10**9
#: (name, models): A m1; B m1+m2; C m2. C's on-chain prices differ from its config on purpose.
OPERATORS = (("A", ("m1",)), ("B", ("m1", "m2")), ("C", ("m2",)))
CHAT = {"messages": [{"role": "user", "content": "Which operator answers?"}]}


def offer(port: int, models: tuple[str, ...], index: int) -> Offer:
    return Offer(f"http://127.0.0.1:{port}", tuple(
        ModelOffer(m, 8192, 256, (index + 1) * GWEI, (index + 2) * GWEI) for m in models))


@dataclass
class Op:
    name: str
    models: tuple[str, ...]
    daemon: DaemonProcess
    backends: dict[str, BackendProcess]
    port: int
    data: Path

    def states(self, call_ids: list[int]) -> dict[int, str]:
        """The job states in this operator's ledger."""
        with sqlite3.connect(self.data / "ledger.sqlite3") as db:
            marks = ",".join("?" * len(call_ids))
            rows = db.execute(f"SELECT call_id, state FROM jobs WHERE call_id IN ({marks})", call_ids)
            return dict(rows.fetchall())

    def served(self) -> int:
        return sum(stats(b)["requests"] for b in self.backends.values())


@dataclass
class Stack:
    anvil: Anvil
    service: MultiService
    ops: list[Op]

    def by_address(self) -> dict[str, Op]:
        return {view.operator.address: op for view, op in zip(self.service.operators, self.ops, strict=True)}

    def total_served(self) -> int:
        return sum(op.served() for op in self.ops)


def stats(backend: BackendProcess) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{backend.port}/stats", timeout=5) as reply:
        return json.loads(reply.read())


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("multi")
    backends: list[BackendProcess] = []
    daemons: list[DaemonProcess] = []
    try:
        with devnet_anvil() as anvil:
            ports = [free_port() for _ in OPERATORS]
            offers = [offer(port, models, i) for i, (port, (_, models)) in enumerate(zip(ports, OPERATORS,
                                                                                        strict=True))]

            async def make() -> MultiService:
                async with chain_client(anvil) as client:
                    return await create_multi_service(client, DEV_KEYS[0], offers,
                                                      [work / name / "keystore" for name, _ in OPERATORS])

            service = asyncio.run(make())
            ops = []
            for (name, models), view, port in zip(OPERATORS, service.operators, ports, strict=True):
                mine = {m: BackendProcess("--decode-s-per-token", "0.002", model=m).start() for m in models}
                backends += mine.values()
                nodes = [{"name": f"{name}-{m}", "engine": "openai", "model": m, "base_url": b.base_url,
                          "max_batch_size": 4, "options": {"price_per_prompt_token_wei": 1,
                                                           "price_per_completion_token_wei": 1}}
                         for m, b in mine.items()]
                config = write_config(work / name / "config.toml", nodes, server_port=port,
                                      jobs={"poll_interval_s": 0.2, "takeover_after_s": TAKEOVER_S,
                                            "shutdown_timeout_s": 5, "job_timeout_s": PATIENCE_S},
                                      balancer={"health": {"check_interval_s": 0.5, "open_base_s": 0.5,
                                                           "open_max_s": 1.0}})
                env = view.manager_env(keystore_uri=str(work / name / "keystore"),
                                       data_dir=str(work / name / "data"), ws_rpc_url=anvil.ws_url)
                env["BLUEPRINT_CONFIG"] = str(config)
                daemon = DaemonProcess(env, work / name / "daemon.log").start()
                daemons.append(daemon)
                ops.append(Op(name, models, daemon, mine, port, work / name / "data"))
            for daemon in daemons:
                daemon.wait_ready(120)
            yield Stack(anvil, service, ops)
    finally:
        for daemon in daemons:
            daemon.stop(timeout=20)
        for backend in backends:
            backend.stop()


async def submit_all(stack: Stack, jobs: list[tuple[int, str]],
                     wait_s: float = 60) -> list[tuple[int, str, dict]]:
    """Submit (job index, model) jobs; returns (call id, answering operator, result) for each."""
    service = stack.service
    async with chain_client(stack.anvil) as client:
        calls = [await submit_job(client, service.owner, service.service_id, job,
                                  encode_inputs(model, 8, CHAT if job == 0 else {"prompt": "Who?"}))
                 for job, model in jobs]
        found = await asyncio.gather(*(wait_for_result(client, service.service_id, c, wait_s) for c in calls))
    return [(c, f.operator, decode_result_json(f.output)) for c, f in zip(calls, found, strict=True)]


async def results_per_call(stack: Stack) -> Counter[int]:
    async with chain_client(stack.anvil) as client:
        logs = await client.result_logs(stack.service.service_id)
    return Counter(entry.call_id for entry in logs)


async def until_one_falls_to(stack: Stack, operator: str, batch: int) -> list[tuple[int, str, dict]]:
    """Batches of m1 jobs until the ranking put ``operator`` first for at least one (the operators'
    keys are random, so a single batch could miss it)."""
    answered: list[tuple[int, str, dict]] = []
    for _ in range(5):
        answered += await submit_all(stack, [(0, "m1")] * batch, wait_s=60)
        if any(responsible(stack, c, "m1") == operator for c, _, _ in answered):
            break
    return answered


def responsible(stack: Stack, call_id: int, model: str, alive: set[str] | None = None) -> str:
    able = [v.operator.address for v, op in zip(stack.service.operators, stack.ops, strict=True)
            if model in op.models and (alive is None or op.name in alive)]
    return rank(stack.service.service_id, call_id, able)[0]


async def test_each_job_computed_once_by_an_operator_offering_its_model(stack: Stack) -> None:
    before = stack.total_served()
    jobs = [(i % 2, "m1" if i % 3 else "m2") for i in range(24)]
    answered = await submit_all(stack, jobs)
    by_address = stack.by_address()
    for (_job, model), (call_id, operator, result) in zip(jobs, answered, strict=True):
        assert "error" not in result, result
        assert model in by_address[operator].models
        assert operator == responsible(stack, call_id, model)  # the first of the ranking
    await asyncio.sleep(1.0)  # any stray duplicate computation would have reached a backend by now
    assert stack.total_served() - before == 24
    counts = await results_per_call(stack)
    assert all(counts[c] == 1 for c, _, _ in answered)
    # every ledger says what became of each job: ours, another's, or never ours
    calls = [c for c, _, _ in answered]
    states = {op.name: op.states(calls) for op in stack.ops}
    for (_job, model), (call_id, operator, _) in zip(jobs, answered, strict=True):
        for view, op in zip(stack.service.operators, stack.ops, strict=True):
            if view.operator.address == operator:
                expected = "confirmed"
            elif model in op.models:
                expected = "answered_by_another"  # it stood by, then saw the result land
            else:
                expected = "skipped"
            assert states[op.name][call_id] == expected, (op.name, call_id, model)
    # both operators of m1 took a share of its 16 jobs: the work is spread, not duplicated
    m1_answerers = {op for (_, model), (_, op, _) in zip(jobs, answered, strict=True) if model == "m1"}
    assert len(m1_answerers) == 2


async def test_quote_paid_job_is_computed_by_the_quoted_operator_only(stack: Stack) -> None:
    import aiohttp

    c_view = stack.service.operators[2]
    c_op = stack.ops[2]
    before = {op.name: op.served() for op in stack.ops}
    body = {"job_index": 0, "model": "m2", "max_tokens": 8, "request": CHAT,
            "requester": stack.service.owner.address, "service_id": stack.service.service_id}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"http://127.0.0.1:{c_op.port}/v1/quote", json=body) as reply:
            assert reply.status == 200, await reply.text()
            quoted = await reply.json()
    async with chain_client(stack.anvil) as client:
        # the price is the operator's on-chain offer (not the 1-wei prices of its config)
        mgr = manager_contract(client.w3, stack.service.manager).functions
        on_chain = await mgr.quotePrice(c_view.operator.address, "m2", quoted["prompt_tokens"], 8).call()
        assert int(quoted["price_wei"]) == on_chain > quoted["prompt_tokens"] + 8
        signed = SignedJobQuote.from_json(quoted["quote"])
        inputs = bytes.fromhex(quoted["inputs"][2:])
        fn = client.tangle.functions.submitJobFromQuote(stack.service.service_id, 0, inputs,
                                                        [signed.as_tuple()])
        receipt = await client.send(stack.service.owner.account, fn, value=int(quoted["price_wei"]))
        (log,) = logs_with_topic(receipt, JOB_SUBMITTED_FROM_QUOTE_TOPIC, client.tangle_address)
        call_id = int(log.topics[2], 16)
        found = await wait_for_result(client, stack.service.service_id, call_id, 60)
    assert found.operator == c_view.operator.address
    assert "error" not in decode_result_json(found.output)
    await asyncio.sleep(1.0)
    after = {op.name: op.served() for op in stack.ops}
    assert {name: after[name] - before[name] for name in after} == {"A": 0, "B": 0, "C": 1}


async def test_a_sick_node_leaves_its_jobs_to_the_next_operator_and_only_the_last_answers_an_error(
        stack: Stack) -> None:
    a, b = stack.ops[0], stack.ops[1]
    a_address, b_address = (v.operator.address for v in stack.service.operators[:2])
    a.backends["m1"].kill()  # A's only m1 node is gone: a passing problem, as far as A knows
    try:
        answered = await until_one_falls_to(stack, a_address, 6)
        assert all(op == b_address for _, op, _ in answered)
        assert all("error" not in result for _, _, result in answered)
        left = {line.get("call_id") for line in a.daemon.log_lines()
                if line.get("event") == "daemon.job_left"}
        a_first = {c for c, _, _ in answered if responsible(stack, c, "m1") == a_address}
        assert a_first and a_first <= left  # A waited its turn out, then left them to B
        # now B's m1 node is gone too: the last of each ranking answers with the error, once
        b.backends["m1"].kill()
        started = time.monotonic()
        failed = await submit_all(stack, [(0, "m1")] * 2, wait_s=60)
        for call_id, operator, result in failed:
            ranking = rank(stack.service.service_id, call_id, [a_address, b_address])
            assert operator == ranking[-1]
            assert result["error"]["code"] in TRANSIENT_ERRORS  # the last transient trouble met
        assert time.monotonic() - started >= TAKEOVER_S + PATIENCE_S - 1.0
    finally:
        a.backends["m1"].start()  # the same ports again
        b.backends["m1"].start()
    counts = await results_per_call(stack)
    assert all(counts[c] == 1 for c, _, _ in answered + failed)


async def test_killed_operator_jobs_are_taken_over_then_it_resumes_without_answering_twice(
        stack: Stack) -> None:
    a, b = stack.ops[0], stack.ops[1]
    a_address = stack.service.operators[0].operator.address
    a.daemon.process.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
    a.daemon.process.wait(10)  # type: ignore[union-attr]
    a.daemon.stop()
    a_before, b_before = a.served(), b.served()
    started = time.monotonic()
    answered = await until_one_falls_to(stack, a_address, 8)
    elapsed = time.monotonic() - started
    a_first = [c for c, _, _ in answered if responsible(stack, c, "m1") == a_address]
    assert a_first, "no job fell to A this time: the test would prove nothing"
    assert all(op == stack.service.operators[1].operator.address for _, op, _ in answered)  # B took all
    assert all("error" not in result for _, _, result in answered)
    assert elapsed >= TAKEOVER_S  # A's jobs waited for A first
    counts = await results_per_call(stack)
    assert all(counts[c] == 1 for c, _, _ in answered)
    assert a.served() == a_before and b.served() - b_before == len(answered)
    # A comes back on the same ledger: it answers nothing again and computes nothing again
    a.daemon.start()
    a.daemon.wait_ready(120)
    await asyncio.sleep(3 * 0.2 + 2.0)
    counts = await results_per_call(stack)
    assert all(counts[c] == 1 for c, _, _ in answered)
    assert a.served() == a_before
    states = Counter(line.get("event") for line in a.daemon.log_lines())
    assert states["daemon.job_answered"] == 0 or all(
        line.get("call_id") not in {c for c, _, _ in answered}
        for line in a.daemon.log_lines() if line.get("event") == "daemon.job_answered")
