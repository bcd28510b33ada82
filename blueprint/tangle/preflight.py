"""What ``run`` checks on chain before it loads a model: that ``SERVICE_ID`` names a service
that exists, is active and counts this operator among its operators.

Without these checks a typo in ``SERVICE_ID`` starts a daemon that waits forever for jobs that
cannot come and retries heartbeats the contract refuses; with them it stops at once and says
which setting to fix.
"""

from __future__ import annotations

from blueprint.errors import BlueprintError
from blueprint.tangle.chain import ChainClient, TxRevertedError


class PreflightError(BlueprintError):
    """The settings point at a service this operator cannot serve; ``hint`` says what to do."""

    code = "preflight_failed"

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


async def check_service(chain: ChainClient, service_id: int, operator: str) -> None:
    """Raise :class:`PreflightError` unless ``operator`` can answer jobs of ``service_id``."""
    try:
        service = await chain.call(chain.tangle.functions.getService(service_id))
    except TxRevertedError as exc:
        if exc.revert.name != "ServiceNotFound":
            raise
        service = None
    if service is None or int(service[1], 16) == 0:  # no owner: the id was never used
        where = f"the Tangle contract {chain.tangle_address}"
        count = await chain.call(chain.tangle.functions.serviceCount())
        raise PreflightError(
            f"service {service_id} does not exist on {where} ({count} services there)",
            "check SERVICE_ID / --service-id and TANGLE_CONTRACT; see one with "
            "`python -m blueprint service show --service-id N`") from None
    if not await chain.call(chain.tangle.functions.isServiceActive(service_id)):
        raise PreflightError(f"service {service_id} is not active (terminated or never approved)",
                             "`python -m blueprint service show --service-id N` shows its state")
    if not await chain.call(chain.tangle.functions.isServiceOperator(service_id, operator)):
        raise PreflightError(
            f"{operator} is not an operator of service {service_id} (blueprint {service[0]})",
            "check KEYSTORE_URI (the operator key) and SERVICE_ID; an operator joins a service by "
            "approving its request: `python -m blueprint service approve --request-id N`")
