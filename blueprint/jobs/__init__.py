"""The jobs of this blueprint: the on-chain codec, the router and the handlers.

Job 0 is a chat completion, 1 a text completion, 2 embeddings (DESIGN.md section 4).
"""

from blueprint.jobs.codec import (
    JobIndex,
    JobInputs,
    decode_inputs,
    decode_result,
    decode_result_json,
    encode_inputs,
    encode_result,
)
from blueprint.jobs.router import RouteOutcome, Router

__all__ = [
    "JobIndex", "JobInputs", "RouteOutcome", "Router", "decode_inputs", "decode_result",
    "decode_result_json", "encode_inputs", "encode_result",
]
