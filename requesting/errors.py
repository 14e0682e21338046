"""Why a request did not become an operation; each message says what to do."""

from __future__ import annotations


class RequestFailed(Exception):
    """The operation could not be requested; the message says what to do."""


class CredentialNotFound(RequestFailed):
    def __init__(self, credential_id: str) -> None:
        self.credential_id = credential_id
        super().__init__(f"no credential with id {credential_id!r}")


class TemporalUnavailable(RequestFailed):
    """Temporal did not take the workflow (unreachable, or it kept ending as requests came)."""


class InvalidRequest(RequestFailed):
    """The request names something its kind cannot take (``field`` says which part); nothing
    was stored and nothing started."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")
