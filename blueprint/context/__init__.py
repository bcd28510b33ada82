"""The shared context of the operator: LLM clients, balancer, ledger, metrics, chain client.

Built once from the settings (:meth:`Context.create`) and handed to every job handler and to the
HTTP API, like the Rust SDK's ``Context<T>`` extractor.
"""

from blueprint.context.context import Context
from blueprint.context.metrics import JobMetrics

__all__ = ["Context", "JobMetrics"]
