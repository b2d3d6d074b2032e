"""Domain errors: what went wrong in terms of the request, never in terms of HTTP.

The API maps each class to one AWS error shape in one place (``api/errors.py``); workers and tools can raise
and catch the same classes without knowing about HTTP.
"""

from __future__ import annotations


class FerryError(Exception):
    """A refusal the caller can act on. ``parameter`` names the request member at fault, when there is one."""

    def __init__(self, message: str, parameter: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.parameter = parameter


class InvalidRequestError(FerryError):
    """The request is malformed or breaks a rule of the API (AWS: BadRequestException)."""


class ResourceNotFoundError(FerryError):
    """The addressed replicator does not exist for this caller (AWS: NotFoundException)."""


class ConflictError(FerryError):
    """The request collides with an existing resource, e.g. a replicator name in use (AWS: ConflictException)."""


class DependencyUnavailableError(FerryError):
    """Something Ferry depends on (e.g. the AWS API) did not answer; retrying later may work (AWS: 503)."""


class AuthenticationError(FerryError):
    """The caller could not be identified: no, an unknown, a revoked or a wrong signature, or an expired one (AWS:
    UnauthorizedException). The message never says more than AWS's does."""


class PermissionDeniedError(FerryError):
    """The caller is known but its key may not do this (AWS: ForbiddenException)."""


class LimitExceededError(FerryError):
    """A quota or rate limit: too many replicators in the account, or too many requests per second from one
    access key (AWS: TooManyRequestsException)."""
