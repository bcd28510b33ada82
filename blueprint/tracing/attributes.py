"""Span and attribute names: OpenTelemetry's GenAI semantic conventions where they have a name,
``blueprint.*`` / ``tangle.*`` for what they do not cover (routing, jobs, transactions)."""

from __future__ import annotations

# GenAI semantic conventions (gen-ai spans, registry "gen_ai").
OPERATION = "gen_ai.operation.name"
PROVIDER = "gen_ai.provider.name"
SYSTEM = "gen_ai.system"  # the older name of the provider attribute, still read by many back ends
REQUEST_MODEL = "gen_ai.request.model"
REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
REQUEST_TEMPERATURE = "gen_ai.request.temperature"
REQUEST_TOP_P = "gen_ai.request.top_p"
REQUEST_SEED = "gen_ai.request.seed"
RESPONSE_MODEL = "gen_ai.response.model"
RESPONSE_ID = "gen_ai.response.id"
RESPONSE_FINISH_REASONS = "gen_ai.response.finish_reasons"
RESPONSE_TTFC = "gen_ai.response.time_to_first_chunk"
USAGE_INPUT = "gen_ai.usage.input_tokens"
USAGE_OUTPUT = "gen_ai.usage.output_tokens"

#: ``gen_ai.operation.name`` values by balancer call.
OPERATION_CHAT = "chat"
OPERATION_COMPLETION = "text_completion"
OPERATION_EMBEDDINGS = "embeddings"
#: What this operator is, as ``gen_ai.provider.name`` (the conventions allow a custom value).
PROVIDER_NAME = "tangle-llm-blueprint"

# HTTP semantic conventions.
HTTP_METHOD = "http.request.method"
HTTP_ROUTE = "http.route"
HTTP_STATUS = "http.response.status_code"
URL_PATH = "url.path"
REQUEST_ID = "blueprint.request_id"

# Routing.
NODE = "blueprint.node"
STRATEGY = "blueprint.route.strategy"
ROUTE_REASON = "blueprint.route.reason"
ATTEMPT = "blueprint.route.attempt"
CANDIDATES = "blueprint.route.candidates"
QUEUED = "blueprint.admission.queued"
QUEUE_DEPTH = "blueprint.admission.queue_depth"

# Jobs and transactions.
SERVICE_ID = "tangle.service_id"
CALL_ID = "tangle.call_id"
JOB_INDEX = "tangle.job_index"
JOB_OUTCOME = "tangle.job.outcome"
TX_HASH = "tangle.tx.hash"
TX_STATUS = "tangle.tx.status"
RESULT_BYTES = "tangle.result.bytes"
