"""Everyday mistakes end in one or two lines that say what to do, never a traceback (``-v``
brings it back): missing keystore, RPC unreachable, config key typo, contract revert, port in
use, a service id that does not exist; and ``run`` without a service or in registration mode."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from blueprint.contracts.offer import decode_offer
from blueprint.devnet.anvil import DEV_KEYS, Anvil, free_port
from blueprint.tangle.keystore import write_sdk_key
from tests.devnet_support import devnet_anvil
from tests.fresh.cli_support import Ran, blueprint

OWNER = {"OWNER_KEY": DEV_KEYS[0]}


def assert_short(ran: Ran, first: str, *, code: int) -> None:
    """The error is ``error: ...`` plus at most a hint line, and the exit code says so."""
    assert ran.code == code, ran.stderr
    assert "Traceback" not in ran.stderr
    assert 1 <= len(ran.err_lines) <= 2, ran.stderr
    assert ran.err_lines[0].startswith(f"error: {first}"), ran.err_lines[0]


def failed_event(ran: Ran, code: int) -> dict:
    """A daemon's error: its last stderr line, one JSON event with ``error`` and ``hint``."""
    assert ran.code == code, ran.stderr
    assert "Traceback" not in ran.stderr
    event = ran.events[-1]
    assert event["event"] == "command.failed" and event["level"] == "error"
    assert len(ran.err_lines) == len(ran.events)  # every line one event
    return event


@pytest.fixture(scope="module")
def anvil() -> Iterator[Anvil]:
    with devnet_anvil() as node:
        yield node


def test_missing_keystore(tmp_path: Path) -> None:
    ran = blueprint("submit", "--service-id", "0", "--model", "m", "--request", "{}",
                    "--keystore-uri", str(tmp_path / "nope"), "--http-rpc-url", "http://127.0.0.1:9")
    assert_short(ran, f"keystore not found at {tmp_path / 'nope'}", code=2)
    assert "keys new" in ran.err_lines[1]


def test_rpc_unreachable() -> None:
    port = free_port()
    ran = blueprint("operators", "--service-id", "0", "--http-rpc-url", f"http://127.0.0.1:{port}")
    assert_short(ran, f"cannot reach the chain RPC at 127.0.0.1:{port}", code=1)
    assert "HTTP_RPC_URL" in ran.err_lines[1]


def test_config_key_typo_names_file_line_and_key(tmp_path: Path) -> None:
    config = tmp_path / "operator.toml"
    config.write_text('[[nodes]]\nmodel = "m"\nenigne = "openai"\n')
    ran = blueprint("config", "--config", str(config))
    assert_short(ran, f"{config}:3: nodes[0].enigne: unknown key (did you mean 'engine'?)", code=2)
    verbose = blueprint("config", "--config", str(config), "-v")
    assert "Traceback" in verbose.stderr and verbose.code == 2


def test_config_value_typo_stops_the_daemon_at_load(tmp_path: Path) -> None:
    config = tmp_path / "operator.toml"
    config.write_text('[balancer]\nstrategy = "least_load"\n')
    ran = blueprint("serve", "--config", str(config), "--port", "0")
    event = failed_event(ran, 2)
    assert event["error"].startswith(f"{config}:2: balancer.strategy: unknown strategy 'least_load' "
                                     "(did you mean 'least_loaded'?)")


def test_port_in_use() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        ran = blueprint("serve", "--port", str(port))
    event = failed_event(ran, 2)
    assert event["error"] == f"cannot listen: 127.0.0.1:{port} is already in use"
    assert "--port" in event["hint"]


def test_run_without_a_service_says_so() -> None:
    event = failed_event(blueprint("run"), 2)
    assert event["error"].startswith("SERVICE_ID is not set")
    assert "REGISTRATION_MODE_ON" in event["error"]


def test_registration_mode_writes_the_offer_and_exits_0(tmp_path: Path, tiny_model_dir: Path) -> None:
    config = tmp_path / "operator.toml"
    config.write_text(f'[[nodes]]\nmodel = "tiny"\npath = "{tiny_model_dir}"\ncontext_length = 512\n'
                      '[server]\npublic_url = "https://llm.example.org"\n')
    output = tmp_path / "out" / "registration.bin"
    ran = blueprint("run", "--config", str(config),
                    env={"REGISTRATION_MODE_ON": "true", "REGISTRATION_OUTPUT_PATH": str(output)})
    assert ran.code == 0, ran.stderr
    offer = decode_offer(output.read_bytes())
    assert offer.endpoint == "https://llm.example.org"
    assert [(m.model, m.context_length) for m in offer.models] == [("tiny", 512)]
    assert ran.stdout.count("\n") == 1 and '"registration_inputs"' in ran.stdout  # stdout: the result alone


def test_contract_revert_is_decoded_with_a_hint(anvil: Anvil) -> None:
    ran = blueprint("service", "approve", "--request-id", "999", "--private-key-env", "OWNER_KEY",
                    "--http-rpc-url", anvil.http_url, env=OWNER)
    assert_short(ran, "approveService reverted in simulation: ServiceRequestNotFound(999)", code=1)
    assert "service request" in ran.err_lines[1]


def test_submit_to_a_service_that_does_not_exist(anvil: Anvil) -> None:
    ran = blueprint("submit", "--service-id", "99", "--model", "m", "--request", "{}",
                    "--private-key-env", "OWNER_KEY", "--http-rpc-url", anvil.http_url, env=OWNER)
    assert_short(ran, "submitJob reverted in simulation: ServiceNotFound(99)", code=1)
    assert "SERVICE_ID" in ran.err_lines[1]


def test_run_with_a_service_that_does_not_exist(anvil: Anvil, tmp_path: Path) -> None:
    write_sdk_key(tmp_path / "keystore", DEV_KEYS[1])
    ran = blueprint("run", "--service-id", "99", "--keystore-uri", str(tmp_path / "keystore"),
                    "--data-dir", str(tmp_path / "data"), "--http-rpc-url", anvil.http_url)
    event = failed_event(ran, 2)
    assert event["error"].startswith("service 99 does not exist on the Tangle contract")
    assert "SERVICE_ID" in event["hint"]


def test_run_with_a_key_that_is_not_an_operator_of_the_service(anvil: Anvil, tmp_path: Path) -> None:
    write_sdk_key(tmp_path / "keystore", DEV_KEYS[5])
    ran = blueprint("run", "--service-id", "0", "--keystore-uri", str(tmp_path / "keystore"),
                    "--data-dir", str(tmp_path / "data"), "--http-rpc-url", anvil.http_url)
    event = failed_event(ran, 2)
    assert event["error"].endswith("is not an operator of service 0 (blueprint 0)")


def test_a_request_that_is_not_json() -> None:
    ran = blueprint("submit", "--service-id", "0", "--model", "m", "--request", '{"messages":',
                    "--private-key-env", "OWNER_KEY", "--http-rpc-url", "http://127.0.0.1:9", env=OWNER)
    assert_short(ran, "--request is not valid JSON: Expecting value", code=2)

