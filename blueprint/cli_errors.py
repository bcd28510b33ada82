"""The mistakes an operator makes every day, as one or two lines that say what to do.

:func:`explain` turns an exception raised by a command into an :class:`Explained` (the message,
a hint, the exit code); the CLI prints it instead of a traceback, which ``-v`` brings back. An
exception nobody explained is still shown in one line, marked as unexpected.
"""

from __future__ import annotations

import errno
import re
import sys
import traceback
from dataclasses import dataclass
from typing import TextIO

from blueprint.config_errors import ConfigError

#: Exit codes: 1 a failure at run time, 2 a usage or configuration mistake, 130 interrupted.
EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130

RPC_HINT = ("check HTTP_RPC_URL / --http-rpc-url, and that the node runs "
            "(a local devnet: `python -m blueprint dev`)")
KEYSTORE_HINT = ("point KEYSTORE_URI / --keystore-uri at the operator's keystore (SDK folder or V3 "
                 "JSON file); make one with `python -m blueprint keys new` or `keys import`")

NO_RESULT_HINT = ("the job is on chain but no operator answered in time: is an operator's daemon "
                  "running for this service (`python -m blueprint run`)? a longer --timeout waits more")

#: Hints for the contract errors people cause (TNT Core and our service manager).
REVERT_HINTS: dict[str, str] = {
    "ServiceNotFound": "no service with this id on this chain: check --service-id / SERVICE_ID "
                       "(and TANGLE_CONTRACT); `python -m blueprint service show --service-id N`",
    "ServiceNotActive": "the service is not active (not yet approved, or terminated): "
                        "`python -m blueprint service show --service-id N`",
    "BlueprintNotFound": "no blueprint with this id on this chain: check --blueprint-id / BLUEPRINT_ID "
                         "(`python -m blueprint deploy` prints it)",
    "ServiceRequestNotFound": "no pending service request with this id: `service request` prints it",
    "ServiceRequestAlreadyProcessed": "this request was already approved or rejected",
    "AlreadyApproved": "this operator already approved the request",
    "NotPermittedCaller": "only the service owner and permitted callers may submit jobs: use the "
                          "owner's key, or let the owner run `python -m blueprint service permit`",
    "NotRegisteredOperator": "this key is not an operator of the service: "
                             "`python -m blueprint register`, then be part of a service",
    "OperatorNotRegistered": "this key is not registered for the blueprint: `python -m blueprint register`",
    "OperatorNotActive": "this operator is not active in the staking contract: bond first "
                         "(`python -m blueprint register --bond WEI`)",
    "NotOperator": "this key is not a staking operator: bond first "
                   "(`python -m blueprint register --bond WEI`)",
    "AlreadyRegistered": "already registered: change the offer with "
                         "`python -m blueprint register --update`",
    "OperatorAlreadyRegistered": "already registered: change the offer with "
                                 "`python -m blueprint register --update`",
    "InvalidMsgValue": "send exactly the job's rate with --value (first number expected, second sent)",
    "ModelNotOffered": "no operator of the service offers this model: "
                       "`python -m blueprint operators --service-id N`",
    "MaxTokensAboveLimit": "lower --max-tokens to the offer's limit (the last number): "
                           "`python -m blueprint operators --service-id N`",
    "NotRegistered": "the manager holds no offer of this operator: register first",
    "InsufficientStake": "the bond is below the staking minimum: raise --bond",
    "ERC20InsufficientBalance": "the account lacks the bond token: fund it first",
    "ERC20InsufficientAllowance": "approve the bond token for the staking contract first",
}


class UsageError(Exception):
    """A command was called without what it needs; the message says what to pass."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class CommandFailed(Exception):
    """A command could not do its work for a reason the message explains in full."""


@dataclass(frozen=True, slots=True)
class Explained:
    """What to print for an exception: ``error: message`` and an optional ``hint``."""

    message: str
    hint: str | None = None
    exit_code: int = EXIT_FAILURE

    def lines(self) -> list[str]:
        return [f"error: {self.message}"] + ([f"  {self.hint}"] if self.hint else [])


def explain(exc: BaseException) -> Explained | None:
    """One or two lines for a known mistake; None for an exception we cannot explain."""
    from blueprint.devnet.anvil import DevnetError
    from blueprint.errors import BlueprintError
    from blueprint.tangle.chain import ChainError, TxRevertedError
    from blueprint.tangle.keystore import KeystoreError
    from blueprint.tangle.preflight import PreflightError

    if isinstance(exc, (ConfigError, UsageError)):
        return Explained(str(exc), getattr(exc, "hint", None), exit_code=EXIT_USAGE)
    if isinstance(exc, CommandFailed):
        return Explained(str(exc))
    if isinstance(exc, PreflightError):
        return Explained(exc.message, exc.hint, EXIT_USAGE)
    if isinstance(exc, KeystoreError):
        return Explained(exc.message, KEYSTORE_HINT, EXIT_USAGE)
    if isinstance(exc, TxRevertedError):
        name = exc.revert.name
        return Explained(exc.message, REVERT_HINTS.get(name, "the contract refused it; -v shows the call"))
    unreachable = rpc_unreachable(exc)
    if unreachable is not None:
        return Explained(unreachable, RPC_HINT)
    if isinstance(exc, ChainError):
        return Explained(exc.message, NO_RESULT_HINT if exc.message.startswith("no result") else None)
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        return Explained(f"cannot listen: {_bind_target(exc)} is already in use",
                         "pick another port (--port, or [server] port / SERVER__PORT), or stop "
                         "the process holding it (`ss -ltnp`)", EXIT_USAGE)
    if isinstance(exc, DevnetError):
        return Explained(str(exc), exit_code=EXIT_USAGE)
    if isinstance(exc, BlueprintError):
        return Explained(exc.message)
    if isinstance(exc, FileNotFoundError):
        return Explained(f"no such file: {exc.filename}", exit_code=EXIT_USAGE)
    return None


def rpc_unreachable(exc: BaseException) -> str | None:
    """``cannot reach the chain at host:port (...)`` when ``exc`` (or its cause) is a refused or
    failed connection to the RPC node; None otherwise."""
    import aiohttp

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, aiohttp.ClientConnectorError):
            why = current.strerror or "refused"
            return f"cannot reach the chain RPC at {current.host}:{current.port} ({why})"
        if isinstance(current, (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
            return f"the chain RPC dropped the connection ({current})"
        if isinstance(current, ConnectionRefusedError):
            return f"cannot reach the chain RPC ({current})"
        current = current.__cause__ or current.__context__
    return None


def _bind_target(exc: OSError) -> str:
    found = re.search(r"\('([^']*)',\s*(\d+)\)", str(exc))
    return f"{found.group(1)}:{found.group(2)}" if found else "the address"


def report(exc: BaseException, *, verbose: int = 0, as_event: bool = False,
           stream: TextIO | None = None) -> int:
    """Print ``exc`` for a person and return the exit code. With ``verbose`` the traceback
    comes first; an unexplained exception says it is unexpected. ``as_event``: one log event
    (``command.failed`` with ``error`` and ``hint``) instead of plain lines, for the daemons whose
    stderr is a log of one event per line."""
    out = stream or sys.stderr
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    explained = explain(exc) or Explained(
        f"unexpected {type(exc).__name__}: {exc}",
        None if verbose else "rerun with -v for the traceback (and report it if it looks like a bug)")
    if as_event:
        import structlog

        fields = {"error": explained.message, "hint": explained.hint, "exit_code": explained.exit_code}
        if verbose:
            fields["exc_info"] = exc
        structlog.get_logger("blueprint.cli").error("command.failed", **fields)
        return explained.exit_code
    if verbose:
        traceback.print_exception(exc, file=out)
    for line in explained.lines():
        print(line, file=out)
    return explained.exit_code
