"""Store reads that activities, the request path and the API share."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, bindparam, true
from sqlmodel import Session, col, select

from store.models import Credential, Device, Operation, Policy, Template

DEFAULT_POLICY = Policy(name="(default)")
_Row = TypeVar("_Row")


def within_profiles(profile: Any, profiles: Sequence[str] | None) -> ColumnElement[bool]:
    """Rows whose ``profile`` column is one of ``profiles``; every row when None (an admin)."""
    return true() if profiles is None else col(profile).in_(profiles)


def latest_template(session: Session, name: str, as_of: datetime | None = None) -> Template:
    """The newest approved version of a template; ``as_of``: the newest approved by then. An
    operation runs the versions approved when it was requested, whatever is saved or approved
    while it waits or runs; a version still pending (or rejected) runs nowhere."""
    if as_of is None:
        template = session.exec(_LATEST, params={"named": name}).first()
    else:
        template = session.exec(_LATEST_AS_OF, params={"named": name, "as_of": as_of}).first()
    if template is None:
        exists = session.exec(select(Template.id).where(Template.name == name)).first()
        raise LookupError(
            f"template {name!r} has no approved version yet"
            if exists
            else f"template {name!r} does not exist"
        )
    return template


# Made once: every change and verify step loads its template (an ORM statement built per call
# cost twice as much to run).
_LATEST = (
    select(Template)
    .where(Template.name == bindparam("named"), col(Template.approved_at).is_not(None))
    .order_by(col(Template.version).desc())
)
_LATEST_AS_OF = _LATEST.where(col(Template.approved_at) <= bindparam("as_of"))


def policy_for(session: Session, credential: Credential) -> Policy:
    if credential.policy_id:
        policy = session.get(Policy, credential.policy_id)
        if policy is not None:
            return policy
    return DEFAULT_POLICY


# An operation, its credential, the credential's device and its policy.
OperationRows = tuple[Operation, Credential, Device, Policy]


def operation_rows(session: Session, operation_id: str) -> OperationRows | None:
    """An operation with its credential, the credential's device and its policy, in one
    statement (every executor step loads all four); None when one of them is missing."""
    row = session.exec(_ON_DEVICE, params={"of_operation": operation_id}).first()
    if row is None:
        return None
    operation, credential, device, policy = row
    return operation, credential, device, policy or DEFAULT_POLICY


def operation_on_device(session: Session, operation_id: str) -> OperationRows:
    """``operation_rows``, or a LookupError that names what is missing, as ``get_or_raise``
    would."""
    rows = operation_rows(session, operation_id)
    if rows is None:  # something is missing: name it, one lookup at a time
        operation = get_or_raise(session, Operation, operation_id)
        credential = get_or_raise(session, Credential, operation.on_credential)
        get_or_raise(session, Device, credential.device_id)
        raise LookupError(f"operation {operation_id} not found")  # removed meanwhile
    return rows


_ON_DEVICE = (
    select(Operation, Credential, Device, Policy)
    .join(Credential, col(Credential.id) == col(Operation.credential_id))
    .join(Device, col(Device.id) == col(Credential.device_id))
    .outerjoin(Policy, col(Policy.id) == col(Credential.policy_id))
    .where(Operation.id == bindparam("of_operation"))
)


def get_or_raise(session: Session, model: type[_Row], key: str) -> _Row:
    """The row, or a LookupError that names what is missing."""
    row = session.get(model, key)
    if row is None:
        raise LookupError(f"{model.__name__.lower()} {key} not found")
    return row
