"""The local stack as building blocks: a dev service with its keystore, and the daemon as a
subprocess started the way the blueprint manager starts it.

Shared by ``python -m blueprint dev``, the end-to-end tests and ``bench/chain.py`` so that all
three exercise the production path: ``python -m blueprint run`` in its own process, configured
only by the manager's environment variables and a TOML file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from eth_account import Account

from blueprint.contracts.manager import deploy_manager
from blueprint.contracts.offer import Offer, encode_offer
from blueprint.devnet import setup
from blueprint.devnet.anvil import REPO_ROOT, Anvil
from blueprint.devnet.setup import DevService, setup_dev_service
from blueprint.tangle.chain import ChainClient, ChainError
from blueprint.tangle.keystore import Operator, write_sdk_key

#: TNT Core LocalTestnet addresses (shared/tnt-core/README.md); also the Settings defaults.
TANGLE = "0x0165878A594ca255338adfa4d48449f69242Eb8F"
STAKING = "0xDc64a140Aa3E981100a9becA4E685f962f0cF6C9"
STATUS_REGISTRY = "0x2bdCC0de6bE1f7D2ee689a0342D76F52E8EFABa3"


def chain_client(anvil: Anvil | str) -> ChainClient:
    """A ChainClient on an anvil (or an HTTP RPC URL) with the LocalTestnet addresses."""
    url = anvil if isinstance(anvil, str) else anvil.http_url
    return ChainClient.connect(url, tangle_address=TANGLE, staking_address=STAKING,
                               status_registry_address=STATUS_REGISTRY)


async def create_service(client: ChainClient, owner_key: str, keystore: Path,
                         rpc_address: str = "http://127.0.0.1:8080") -> DevService:
    """A fresh blueprint + active service with a new operator, whose key is written to
    ``keystore`` in the SDK layout (what ``KEYSTORE_URI`` points at)."""
    service = await setup_dev_service(client, owner_key=owner_key, rpc_address=rpc_address)
    write_sdk_key(keystore, service.operator_key)
    return service


@dataclass(frozen=True)
class MultiService:
    """One service of several operators, each with its own offer, under our service manager.

    ``operators[i]`` is a :class:`DevService` seen from operator ``i`` (same blueprint and
    service; its ``operator`` and ``manager_env`` are that operator's), so each daemon is started
    exactly like a single operator's.
    """

    manager: str
    operators: tuple[DevService, ...]
    offers: tuple[Offer, ...]

    @property
    def service_id(self) -> int:
        return self.operators[0].service_id

    @property
    def blueprint_id(self) -> int:
        return self.operators[0].blueprint_id

    @property
    def owner(self) -> Operator:
        return self.operators[0].owner


async def create_multi_service(client: ChainClient, owner_key: str, offers: Sequence[Offer],
                               keystores: Sequence[Path], *,
                               job_event_rates: Mapping[int, int] | None = None) -> MultiService:
    """Deploy our manager, create a blueprint with it, register one fresh operator per offer
    (funded, bonded, its key written to the matching keystore), request a service with all of
    them and have each approve it. ``job_event_rates`` switches to flat-rate (event-driven)
    pricing with those per-job rates."""
    if len(offers) != len(keystores):
        raise ValueError("one keystore per offer")
    owner = Operator.from_private_key(owner_key)
    manager = await deploy_manager(client, owner.account)
    pricing = setup.PRICING_EVENT_DRIVEN if job_event_rates else setup.PRICING_PAY_ONCE
    blueprint_id = await setup.create_blueprint(client, owner, jobs=setup.DEFAULT_JOBS, manager=manager,
                                                pricing=pricing)
    if job_event_rates:
        await setup.set_job_event_rates(client, owner, blueprint_id, job_event_rates)
    operators: list[Operator] = []
    for offer, keystore in zip(offers, keystores, strict=True):
        operator = Operator.from_private_key(bytes(Account.create().key))
        await setup.fund_account(client, owner.account, operator.address, eth=100 * 10**18,
                                 tnt=1_000 * 10**18)
        await setup.ensure_operator_bonded(client, operator)
        await setup.register_operator(client, operator, blueprint_id, offer.endpoint, encode_offer(offer))
        write_sdk_key(keystore, "0x" + bytes(operator.account.key).hex())
        operators.append(operator)
    request_id = await setup.request_service(client, owner, blueprint_id, [o.address for o in operators])
    service_id = None
    for operator in operators:
        service_id = await setup.approve_service(client, operator, request_id) or service_id
    if service_id is None:
        raise ChainError(f"request {request_id} was approved by every operator but no service was activated")
    views = tuple(
        DevService(
            http_rpc_url=str(client.w3.provider.endpoint_uri), blueprint_id=blueprint_id,
            service_id=service_id, request_id=request_id, operator=operator, owner=owner,
            tangle_contract=client.tangle_address, staking_contract=client.staking_address,
            status_registry_contract=client.status_registry_address, rpc_address=offer.endpoint,
        )
        for operator, offer in zip(operators, offers, strict=True)
    )
    return MultiService(manager, views, tuple(offers))


def toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def write_config(path: Path, nodes: list[Mapping[str, Any]], *, server_port: int | None = 0,
                 server_enabled: bool = True, jobs: Mapping[str, Any] | None = None,
                 balancer: Mapping[str, Any] | None = None) -> Path:
    """A TOML config with ``[[nodes]]`` tables, a ``[server]`` and optional ``[jobs]`` and
    ``[balancer]`` tables."""
    lines: list[str] = []
    for node in nodes:
        lines.append("[[nodes]]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in node.items()]
        lines.append("")
    lines.append("[server]")
    lines.append(f"enabled = {_toml_value(server_enabled)}")
    if server_port is not None:
        lines.append(f"port = {server_port}")
    if jobs:
        lines += ["", "[jobs]"] + [f"{key} = {_toml_value(value)}" for key, value in jobs.items()]
    if balancer:
        lines += ["", "[balancer]"] + [f"{key} = {_toml_value(value)}" for key, value in balancer.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml_value(value: Any) -> str:
    if isinstance(value, Mapping):  # an inline table
        return "{ " + ", ".join(f"{key} = {_toml_value(item)}" for key, item in value.items()) + " }"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, dict):  # an inline table (a node's options)
        return "{ " + ", ".join(f"{toml_string(str(k))} = {_toml_value(v)}" for k, v in value.items()) + " }"
    return toml_string(str(value))


@dataclass
class DaemonProcess:
    """``python -m blueprint run`` in a subprocess, with the manager's environment.

    ``env`` holds the manager's variables (``DevService.manager_env``) plus ``BLUEPRINT_CONFIG``;
    logs (JSON lines) go to ``log_path``.
    """

    env: dict[str, str]
    log_path: Path
    args: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None
    _log_file: IO[bytes] | None = None

    def start(self) -> DaemonProcess:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **self.env}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        self._log_file = open(self.log_path, "ab")  # closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "blueprint", "run", *self.args], env=env, cwd=str(REPO_ROOT),
            stdout=self._log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        return self

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Until the daemon logs ``daemon.ready`` (it then takes jobs); raise if it died."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.process.returncode}:\n{self.tail()}")
            if any(line.get("event") == "daemon.ready" for line in self.log_lines()):
                return
            time.sleep(0.1)
        raise TimeoutError(f"daemon not ready within {timeout}s:\n{self.tail()}")

    def log_lines(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far (other lines skipped)."""
        out = []
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return out
        for line in text.splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        return out

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def stop(self, timeout: float = 60.0, sig: int = signal.SIGTERM) -> int:
        """Send ``sig`` (SIGTERM: graceful) and wait; kill after ``timeout``. Returns the exit code."""
        code = -1
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(sig)
                try:
                    self.process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            code = self.process.returncode
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return code

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
