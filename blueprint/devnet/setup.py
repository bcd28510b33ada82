"""Blueprint, operator and service set-up through the real TNT Core contracts.

Used by ``python -m blueprint dev``, tests and benchmarks. Each step is one small async function
over a :class:`~blueprint.tangle.chain.ChainClient`; ids are read from the events the contracts
emit (request ids and service ids are separate counters, so a service id is never guessed).
Steps that may already be done (bonding, registration) check the chain first and do nothing
when they are, so re-running ``dev`` against the same chain is harmless.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

import structlog
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_checksum_address

from blueprint.tangle import abi
from blueprint.tangle.chain import ChainClient, ChainError, checksum_all, logs_with_topic
from blueprint.tangle.events import JobResultLog
from blueprint.tangle.keystore import Operator
from blueprint.tangle.txmanager import Receipt

log = structlog.get_logger(__name__)

ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"
#: Bond used when the staking contract asks for less (the LocalTestnet operators bond 100 TNT).
DEFAULT_BOND = 100 * 10**18

# Enum values from tnt-core's Types.sol.
MEMBERSHIP_FIXED, MEMBERSHIP_DYNAMIC = 0, 1
PRICING_PAY_ONCE, PRICING_SUBSCRIPTION, PRICING_EVENT_DRIVEN = 0, 1, 2
CONFIDENTIALITY_ANY = 0


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One job of a blueprint definition; payloads are plain ABI, so schemas stay empty."""

    name: str
    description: str = ""
    metadata_uri: str = ""


@dataclass(frozen=True, slots=True)
class BlueprintMeta:
    """The human metadata of a blueprint (``Types.BlueprintMetadata``)."""

    name: str = "LLM inference"
    description: str = "OpenAI-compatible LLM inference served by Tangle operators."
    author: str = ""
    category: str = "AI"
    code_repository: str = ""
    logo: str = ""
    website: str = ""
    license: str = "MIT OR Apache-2.0"

    def as_tuple(self) -> tuple[str, ...]:
        return (self.name, self.description, self.author, self.category, self.code_repository,
                self.logo, self.website, self.license, "")


def _operator(who: Operator | LocalAccount) -> Operator:
    if isinstance(who, Operator):
        return who
    return Operator.from_private_key(bytes(who.key))


def _account(who: Operator | LocalAccount) -> LocalAccount:
    return who.account if isinstance(who, Operator) else who


def _first_topic_int(receipt: Receipt, client: ChainClient, topic0: str, index: int, what: str) -> int:
    found = logs_with_topic(receipt, topic0, client.tangle_address)
    if not found:
        raise ChainError(f"{what}: the receipt has no such event")
    return int(found[0].topics[index], 16)


# --- staking ----------------------------------------------------------------------------------

async def required_bond(client: ChainClient) -> tuple[str, int]:
    """The bond token (zero address: native) and the least bond the staking contract accepts."""
    token = await client.call(client.staking.functions.operatorBondToken())
    minimum = int(await client.call(client.staking.functions.minOperatorStake()))
    if int(token, 16) != 0:
        config = await client.call(client.staking.functions.getAssetConfig(token))
        minimum = max(minimum, int(config[2]))
    return to_checksum_address(token), minimum


async def ensure_operator_bonded(client: ChainClient, who: Operator | LocalAccount,
                                 amount: int | None = None) -> int:
    """Register ``who`` as a staking operator with a bond, unless it already is one.

    The bond is ``amount`` (default :data:`DEFAULT_BOND`), raised to the contract's minimum.
    Returns the operator's self stake afterwards.
    """
    account = _account(who)
    staking = client.staking.functions
    if await client.call(staking.isOperator(account.address)):
        return int(await client.call(staking.getOperatorSelfStake(account.address)))
    token, minimum = await required_bond(client)
    bond = max(amount if amount is not None else DEFAULT_BOND, minimum)
    if int(token, 16) == 0:
        await client.send(account, staking.registerOperator(), value=bond)
    else:
        erc20 = client.erc20(token)
        allowance = await client.call(erc20.functions.allowance(account.address, client.staking_address))
        if allowance < bond:
            await client.send(account, erc20.functions.approve(client.staking_address, bond))
        await client.send(account, staking.registerOperatorWithAsset(token, bond))
    log.info("setup.operator_bonded", operator=account.address, token=token, bond=bond)
    return int(await client.call(staking.getOperatorSelfStake(account.address)))


async def fund_account(client: ChainClient, funder: LocalAccount, to: str, *, eth: int = 0,
                       tnt: int = 0) -> None:
    """Send ETH and TNT (the bond token) from ``funder`` to ``to`` (dev chains)."""
    to = to_checksum_address(to)
    if eth:
        txm = await client.sender(funder)
        await txm.send_and_wait(to, b"", value=eth, gas=21_000, what="fund ETH")
    if tnt:
        token = await client.call(client.staking.functions.operatorBondToken())
        if int(token, 16) == 0:
            raise ChainError("the bond token is native: fund with eth instead")
        await client.send(funder, client.erc20(token).functions.transfer(to, tnt))


# --- blueprints -------------------------------------------------------------------------------

#: What the manager runs: the console script ``pip install`` of this package puts on PATH (the
#: manager starts ``<entrypoint> run`` with its environment). No container image is built yet, so
#: none is advertised.
ENTRYPOINT = "tangle-llm-blueprint"
_SOURCE_NATIVE, _WASM_RUNTIME_UNKNOWN, _FETCHER_NONE, _FETCHER_HTTP = 2, 0, 0, 2
_ARCH_AMD64, _OS_LINUX = 5, 1
PACKAGE_ROOT = Path(__file__).resolve().parents[1]


@cache
def package_digest() -> bytes:
    """sha256 over this package's Python sources (sorted relative paths and contents).

    The contract wants a non-zero sha256 per source binary; a Python blueprint has no binary, so
    we anchor the code the operator runs instead. It changes with every code change.
    """
    digest = hashlib.sha256()
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        digest.update(path.relative_to(PACKAGE_ROOT).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.digest()


def native_source(sha256: bytes, artifact_uri: str = "") -> tuple[Any, ...]:
    """A ``Types.BlueprintSource`` of kind Native whose entry point is :data:`ENTRYPOINT`, with
    one linux/amd64 binary entry carrying ``sha256`` (the contract requires a hashed binary).

    Without ``artifact_uri`` the fetcher is None: nothing is offered for the manager to download,
    which is the truth today (operators install the package themselves; see the README's "Going
    to a real network"). An ``artifact_uri`` that really serves the package (a wheel over HTTPS)
    is advertised with the HTTP fetcher."""
    fetcher = _FETCHER_HTTP if artifact_uri else _FETCHER_NONE
    binary = (_ARCH_AMD64, _OS_LINUX, ENTRYPOINT, sha256)
    return (
        _SOURCE_NATIVE, ("", "", ""), (_WASM_RUNTIME_UNKNOWN, _FETCHER_NONE, "", ""),
        (fetcher, artifact_uri, ENTRYPOINT), ("", "", ""), [binary],
    )


def blueprint_definition(
    *,
    jobs: Sequence[str | JobSpec],
    manager: str = ZERO_ADDRESS,
    metadata: BlueprintMeta | None = None,
    metadata_uri: str = "",
    membership: int = MEMBERSHIP_DYNAMIC,
    pricing: int = PRICING_PAY_ONCE,
    min_operators: int = 1,
    max_operators: int = 0,
    event_rate: int = 0,
    subscription_rate: int = 0,
    subscription_interval: int = 0,
    artifact_uri: str = "",
    binary_sha256: bytes | None = None,
) -> tuple[Any, ...]:
    """``Types.BlueprintDefinition`` as the tuple web3 encodes.

    Job schemas are empty (inputs and results are plain ABI encodings, unvalidated on chain); the
    metadata hash is keccak256 of the metadata as canonical JSON so explorers can check it, and
    an empty ``metadata_uri`` becomes a ``data:`` URI of that JSON (the contract requires one).
    The source is :func:`native_source` (``artifact_uri`` only when one really serves the
    package); its binary hash is ``binary_sha256`` or :func:`package_digest`.
    """
    meta = metadata or BlueprintMeta()
    specs = [JobSpec(j) if isinstance(j, str) else j for j in jobs]
    if not specs:
        raise ValueError("a blueprint needs at least one job")
    job_tuples = [(s.name, s.description, s.metadata_uri, b"", b"") for s in specs]
    canonical = json.dumps({"metadata": meta.as_tuple(), "jobs": [s.name for s in specs]},
                           sort_keys=True, separators=(",", ":"))
    # The contract requires a metadata URI; without one, point at the canonical JSON itself.
    metadata_uri = metadata_uri or "data:application/json," + quote(canonical, safe=",:{}\"[]")
    config = (membership, pricing, min_operators, max_operators, subscription_rate,
              subscription_interval, event_rate)
    source = native_source(binary_sha256 or package_digest(), artifact_uri)
    return (
        metadata_uri, keccak(text=canonical), to_checksum_address(manager), 0, True, config,
        meta.as_tuple(), job_tuples, b"", b"", [source],
        [MEMBERSHIP_FIXED, MEMBERSHIP_DYNAMIC],
    )


async def create_blueprint(
    client: ChainClient,
    owner: Operator | LocalAccount,
    *,
    jobs: Sequence[str | JobSpec],
    manager: str = ZERO_ADDRESS,
    **definition: Any,
) -> int:
    """Create a blueprint (``manager`` address(0) for no hooks, or a BSM) and return its id.

    ``definition`` passes through to :func:`blueprint_definition` (pricing, rates, metadata...).
    """
    account = _account(owner)
    if "binary_sha256" not in definition:
        definition["binary_sha256"] = await asyncio.to_thread(package_digest)
    spec = blueprint_definition(jobs=jobs, manager=manager, **definition)
    receipt = await client.send(account, client.tangle.functions.createBlueprint(spec))
    blueprint_id = _first_topic_int(receipt, client, abi.BLUEPRINT_CREATED_TOPIC, 1, "createBlueprint")
    log.info("setup.blueprint_created", blueprint_id=blueprint_id, owner=account.address, manager=manager)
    return blueprint_id


async def set_job_event_rates(client: ChainClient, owner: Operator | LocalAccount, blueprint_id: int,
                              rates: Mapping[int, int]) -> None:
    """Per-job-index prices for event-driven pricing (``msg.value`` must then equal the rate)."""
    indexes = sorted(rates)
    await client.send(_account(owner), client.tangle.functions.setJobEventRates(
        blueprint_id, indexes, [rates[i] for i in indexes]))


# --- operators --------------------------------------------------------------------------------

async def register_operator(
    client: ChainClient,
    who: Operator | LocalAccount,
    blueprint_id: int,
    rpc_address: str,
    registration_inputs: bytes = b"",
) -> bool:
    """Register for a blueprint with the 65-byte public key and ``rpc_address`` (the HTTP API's
    public URL). Returns False, sending nothing, when already registered."""
    operator = _operator(who)
    tangle = client.tangle
    if await client.call(tangle.functions.isOperatorRegistered(blueprint_id, operator.address)):
        return False
    if registration_inputs:
        fn = tangle.get_function_by_signature("registerOperator(uint64,bytes,string,bytes)")(
            blueprint_id, operator.public_key, rpc_address, registration_inputs)
    else:
        fn = tangle.get_function_by_signature("registerOperator(uint64,bytes,string)")(
            blueprint_id, operator.public_key, rpc_address)
    await client.send(operator.account, fn)
    log.info("setup.operator_registered", blueprint_id=blueprint_id, operator=operator.address,
             rpc_address=rpc_address)
    return True


# --- services ---------------------------------------------------------------------------------

async def request_service(
    client: ChainClient,
    owner: Operator | LocalAccount,
    blueprint_id: int,
    operators: Sequence[str],
    *,
    permitted_callers: Sequence[str] = (),
    config: bytes = b"",
    ttl: int = 0,
    payment_token: str = ZERO_ADDRESS,
    payment_amount: int = 0,
    confidentiality: int = CONFIDENTIALITY_ANY,
) -> int:
    """Request a service of ``operators``; returns the request id (not the service id)."""
    value = payment_amount if int(payment_token, 16) == 0 else 0
    fn = client.tangle.functions.requestService(
        blueprint_id, checksum_all(operators), config, checksum_all(permitted_callers), ttl,
        to_checksum_address(payment_token), payment_amount, confidentiality,
    )
    receipt = await client.send(_account(owner), fn, value=value)
    return _first_topic_int(receipt, client, abi.SERVICE_REQUESTED_TOPIC, 1, "requestService")


async def approve_service(client: ChainClient, who: Operator | LocalAccount, request_id: int) -> int | None:
    """Approve a request with no security commitments, BLS key or TEE commitments (what the
    contract accepts from a plain operator). Returns the service id when this approval activated
    the service, else None (other operators still have to approve)."""
    params = (request_id, [], [0, 0, 0, 0], [0, 0], [])
    receipt = await client.send(_account(who), client.tangle.functions.approveService(params))
    activated = logs_with_topic(receipt, abi.SERVICE_ACTIVATED_TOPIC, client.tangle_address)
    if not activated:
        return None
    service_id = int(activated[0].topics[1], 16)
    log.info("setup.service_active", service_id=service_id, request_id=request_id)
    return service_id


async def add_permitted_caller(client: ChainClient, owner: Operator | LocalAccount, service_id: int,
                               caller: str) -> None:
    """Let ``caller`` submit jobs to the service (only the owner may by default)."""
    await client.send(_account(owner), client.tangle.functions.addPermittedCaller(
        service_id, to_checksum_address(caller)))


# --- jobs -------------------------------------------------------------------------------------

async def submit_job(client: ChainClient, caller: Operator | LocalAccount, service_id: int, job_index: int,
                     inputs: bytes, *, value: int = 0) -> int:
    """Submit one job and return its call id (topic 2 of ``JobSubmitted`` in either layout)."""
    receipt = await client.send(_account(caller), client.tangle.functions.submitJob(
        service_id, job_index, inputs), value=value)
    return _first_topic_int(receipt, client, abi.JOB_SUBMITTED_TOPIC, 2, "submitJob")


async def submit_jobs(client: ChainClient, caller: Operator | LocalAccount, service_id: int,
                      jobs: Sequence[tuple[int, bytes]], *, value: int = 0) -> list[int]:
    """Submit many ``(job_index, inputs)`` at once: consecutive nonces sent without waiting, then
    every receipt. Returns the call ids in order. For benchmarks (burst load)."""
    if not jobs:
        return []
    txm = await client.sender(_account(caller))
    calls = [bytes.fromhex(client.tangle.functions.submitJob(service_id, job_index, inputs)
                           ._encode_transaction_data().removeprefix("0x")) for job_index, inputs in jobs]
    to = client.tangle_address
    # one simulation catches permission/value errors; the longest inputs set the gas of all
    await txm.simulate(to, calls[0], value=value, what="submitJob")
    gas = int(await txm.estimate_gas(to, max(calls, key=len), value=value, what="submitJob") * 1.5) + 100_000
    sent = [await txm.send(to, data, gas=gas, value=value, simulate=False) for data in calls]
    call_ids = []
    for tx in sent:
        receipt = await txm.wait(tx)
        if receipt.status != 1:
            raise ChainError(f"submitJob {receipt.tx_hash} failed in a burst")
        call_ids.append(_first_topic_int(receipt, client, abi.JOB_SUBMITTED_TOPIC, 2, "submitJob"))
    return call_ids


async def wait_for_result(
    client: ChainClient, service_id: int, call_id: int,
    timeout: float = 60.0,  # noqa: ASYNC109 - a deadline over many polls, not one await
    *,
    operator: str | None = None, from_block: int | str = 0, poll_interval: float = 0.2,
) -> JobResultLog:
    """Poll ``JobResultSubmitted`` logs until a result for ``call_id`` (from ``operator``) appears."""
    deadline = time.monotonic() + timeout
    while True:
        found = await client.result_logs(service_id, call_id, operator, from_block=from_block)
        if found:
            return found[0]
        if time.monotonic() >= deadline:
            raise ChainError(f"no result for service {service_id} call {call_id} within {timeout}s")
        await asyncio.sleep(poll_interval)


# --- the whole dev service --------------------------------------------------------------------

@dataclass(frozen=True)
class DevService:
    """A fresh blueprint and active service with one operator, ready for jobs."""

    http_rpc_url: str
    blueprint_id: int
    service_id: int
    request_id: int
    operator: Operator = field(repr=False)
    owner: Operator = field(repr=False)
    tangle_contract: str
    staking_contract: str
    status_registry_contract: str
    rpc_address: str

    @property
    def operator_key(self) -> str:
        """The operator's secret as ``0x`` hex (dev chains only: never log it)."""
        return "0x" + bytes(self.operator.account.key).hex()

    @property
    def owner_key(self) -> str:
        return "0x" + bytes(self.owner.account.key).hex()

    def manager_env(self, *, keystore_uri: str, data_dir: str,
                    ws_rpc_url: str | None = None) -> dict[str, str]:
        """The blueprint manager's environment variables for a daemon serving this service."""
        env = {
            "HTTP_RPC_URL": self.http_rpc_url,
            "KEYSTORE_URI": keystore_uri,
            "DATA_DIR": data_dir,
            "BLUEPRINT_ID": str(self.blueprint_id),
            "SERVICE_ID": str(self.service_id),
            "PROTOCOL": "tangle",
            "CHAIN": "local_testnet",
            "TANGLE_CONTRACT": self.tangle_contract,
            "STAKING_CONTRACT": self.staking_contract,
            "STATUS_REGISTRY_CONTRACT": self.status_registry_contract,
        }
        if ws_rpc_url:
            env["WS_RPC_URL"] = ws_rpc_url
        return env


DEFAULT_JOBS: tuple[JobSpec, ...] = (
    JobSpec("chat_completion", "OpenAI chat completion: abi(string model, uint32 maxTokens, string request)"),
    JobSpec("text_completion", "OpenAI text completion: abi(string model, uint32 maxTokens, string request)"),
    JobSpec("embeddings", "OpenAI embeddings: abi(string model, uint32 maxTokens, string request)"),
)


async def setup_dev_service(
    client: ChainClient,
    *,
    owner_key: str,
    operator_key: str | None = None,
    rpc_address: str = "http://127.0.0.1:8080",
    jobs: Sequence[str | JobSpec] = DEFAULT_JOBS,
    manager: str = ZERO_ADDRESS,
    registration_inputs: bytes = b"",
    permitted_callers: Sequence[str] = (),
    job_event_rates: Mapping[int, int] | None = None,
    fund_eth: int = 100 * 10**18,
    fund_tnt: int = 1_000 * 10**18,
) -> DevService:
    """Blueprint, bonded and registered operator, requested and approved service, on a dev chain.

    ``operator_key`` None makes a fresh key funded by the owner with ``fund_eth`` and ``fund_tnt``
    (so tests never share an operator's nonce); ``job_event_rates`` switches the blueprint to
    event-driven pricing with those per-job prices.
    """
    owner = Operator.from_private_key(owner_key)
    if operator_key is None:
        operator = Operator.from_private_key(bytes(Account.create().key))
        await fund_account(client, owner.account, operator.address, eth=fund_eth, tnt=fund_tnt)
    else:
        operator = Operator.from_private_key(operator_key)
    pricing = PRICING_EVENT_DRIVEN if job_event_rates else PRICING_PAY_ONCE
    blueprint_id = await create_blueprint(client, owner, jobs=jobs, manager=manager, pricing=pricing)
    if job_event_rates:
        await set_job_event_rates(client, owner, blueprint_id, job_event_rates)
    await ensure_operator_bonded(client, operator)
    await register_operator(client, operator, blueprint_id, rpc_address, registration_inputs)
    request_id = await request_service(client, owner, blueprint_id, [operator.address],
                                       permitted_callers=permitted_callers)
    service_id = await approve_service(client, operator, request_id)
    if service_id is None:
        raise ChainError(f"request {request_id} was approved but no service was activated")
    return DevService(
        http_rpc_url=str(client.w3.provider.endpoint_uri),
        blueprint_id=blueprint_id, service_id=service_id, request_id=request_id,
        operator=operator, owner=owner,
        tangle_contract=client.tangle_address, staking_contract=client.staking_address,
        status_registry_contract=client.status_registry_address, rpc_address=rpc_address,
    )
