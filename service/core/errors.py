"""Errors that become HTTP answers, and the start-up error."""

from __future__ import annotations

from niff_contract import ContractError


class ServiceError(Exception):
    """A failure with a status code and a message meant for the client (the JSON body's ``error``)."""

    status_code = 500

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequest(ServiceError):
    status_code = 400


class Unsupported(BadRequest):
    """Something this server does not do (Triton's UNSUPPORTED: 400 over HTTP, UNIMPLEMENTED over gRPC)."""


class Unauthorized(ServiceError):
    status_code = 401

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class NotFound(ServiceError):
    status_code = 404


class RequestTimeout(ServiceError):
    """The client did not finish sending its body in time."""

    status_code = 408


class PayloadTooLarge(ServiceError):
    status_code = 413


class UnsupportedMediaType(ServiceError):
    status_code = 415


class UnprocessableContent(ServiceError):
    """Well-formed, but outside what this server processes (an image of an extreme aspect ratio)."""

    status_code = 422


class ClientClosedRequest(ServiceError):
    """The client went away; nobody reads this answer, the status only labels logs and metrics."""

    status_code = 499


class InferenceFailed(ServiceError):
    """The backend raised while running a batch; only that batch's requests see it."""

    status_code = 500


class ServiceUnavailable(ServiceError):
    status_code = 503

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class QueueFull(ServiceUnavailable):
    pass


class DeadlineExceeded(ServiceError):
    status_code = 504


class ConfigurationError(ContractError):
    """Settings or a model folder that cannot be served; stops start-up with this message.

    Problems the model-folder contract finds are ContractErrors; start-up handles both as one.
    """
