"""Signed per-request price quotes (``POST /v1/quote``) for ``submitJobFromQuote``.

Beside ``jobs`` and the chain SDK: a quote prices the job inputs exactly as the daemon will read
them (:mod:`blueprint.jobs`) and signs them with the operator's key (:mod:`blueprint.tangle.quotes`).
The HTTP server hosts it through a small Protocol and imports none of that.
"""
