"""One error hierarchy for the whole operator.

Every failure that a user can cause or observe is a :class:`BlueprintError`. Each subclass carries
the HTTP status the API answers with and the OpenAI-style ``type``/``code`` that both the HTTP API
and on-chain job results put in their error object, so an error looks the same whether the request
came from OpenRouter or from the chain.
"""

from __future__ import annotations

from typing import Any


class BlueprintError(Exception):
    """Base of every error the operator reports to a client."""

    http_status: int = 500
    error_type: str = "server_error"
    code: str = "internal_error"
    #: Whether the same request may succeed on another node (the balancer retries those, but
    #: only before the first token was sent).
    retryable: bool = False

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.param = param

    def to_error_object(self) -> dict[str, Any]:
        """The OpenAI error shape: ``{"error": {"message", "type", "code", "param"}}``."""
        body: dict[str, Any] = {"message": self.message, "type": self.error_type, "code": self.code}
        if self.param is not None:
            body["param"] = self.param
        return {"error": body}


class InvalidRequestError(BlueprintError):
    """The request is malformed or asks for something out of range."""

    http_status = 400
    error_type = "invalid_request_error"
    code = "invalid_request"


class AuthenticationError(BlueprintError):
    http_status = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class ModelNotFoundError(BlueprintError):
    http_status = 404
    error_type = "invalid_request_error"
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(f"The model {model!r} is not served by this operator.", param="model")
        self.model = model


class ContextLengthExceededError(BlueprintError):
    """The prompt (plus the tokens asked for) does not fit in the model's context."""

    http_status = 413
    error_type = "invalid_request_error"
    code = "context_length_exceeded"


class RequestTooLargeError(BlueprintError):
    http_status = 413
    error_type = "invalid_request_error"
    code = "request_too_large"


class OverloadedError(BlueprintError):
    """Every queue that could take the request is full: the client should come back later."""

    http_status = 429
    error_type = "rate_limit_error"
    code = "overloaded"
    retryable = True

    def __init__(self, message: str = "The operator is at capacity; retry shortly.", *,
                 retry_after: float = 1.0, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class NoHealthyNodeError(BlueprintError):
    """No node can serve the model now (all down, draining or shut down); ``retry_after`` is
    when it is worth asking again (a broken node's breaker half-opens within seconds)."""

    http_status = 503
    error_type = "server_error"
    code = "no_healthy_node"

    def __init__(self, message: str, *, param: str | None = None, retry_after: float = 5.0,
                 code: str | None = None) -> None:
        super().__init__(message, param=param, code=code)
        self.retry_after = retry_after


class BackendError(BlueprintError):
    """An engine or upstream server failed while serving a valid request."""

    http_status = 502
    error_type = "server_error"
    code = "backend_error"
    retryable = True


class BackendTimeoutError(BackendError):
    http_status = 504
    code = "backend_timeout"


class AnswerTooLargeBackendError(BackendError):
    """A backend's answer (or one event of it) passed the node's size bound. How large an answer
    is can be the caller's choice (``n``, ``max_tokens``, logprobs), so it is neither retried on
    another node (which would make it again) nor counted against the node's health."""

    code = "answer_too_large"
    retryable = False


class StreamInterruptedError(BackendError):
    """The backend failed after tokens were already sent: never retried, reported as is."""

    code = "stream_interrupted"
    retryable = False
