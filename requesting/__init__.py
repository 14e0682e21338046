"""One way to request an operation, for every front door.

The HTTP API, the CLI, and (as they arrive) schedules, sweeps and event triggers all call
``request_operation``; the starter and the activities stand above this package, which stands on
the store and the workflow contracts only. A program with nothing but a Temporal client may also
start the operation workflow itself: the workflow registers its own row, so both paths behave
the same.
"""

from requesting.chosen import SecretChoice
from requesting.errors import CredentialNotFound, InvalidRequest, RequestFailed, TemporalUnavailable
from requesting.operations import OperationRequest, Requested, request_operation

__all__ = [
    "CredentialNotFound",
    "InvalidRequest",
    "OperationRequest",
    "RequestFailed",
    "Requested",
    "SecretChoice",
    "TemporalUnavailable",
    "request_operation",
]
