"""Devices, policies, templates and credentials: what operations act on."""

from __future__ import annotations

from typing import Annotated, NoReturn

from fastapi import APIRouter, Depends
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from executors.base import (
    ConfigurationError,
    Executor,
    check_target,
    get_executor,
    registry,
    username_problem,
)
from executors.shipped import shipped_templates
from requesting import TemporalUnavailable
from starter.authz import (
    ADMIN,
    APPROVER,
    OPERATOR,
    READERS,
    TEMPLATE_AUTHOR,
    Admin,
    Caller,
    Reader,
    allow,
    hidden,
)
from starter.deps import DB, State, StoreRoute
from starter.pages import Cursor, Limit, Page, by_age, keyset_page, shown_as
from starter.problems import Problem, invalid, not_found
from starter.schemas import (
    CredentialIn,
    CredentialOut,
    CredentialPatch,
    DeviceIn,
    DeviceOut,
    ExecutorOut,
    PolicyIn,
    PolicyOut,
    PolicyPatch,
)
from store import audit
from store.engine import in_thread
from store.jobs import SSH_KEY, target_for
from store.models import Credential, Device, Policy, SecretState, Template, new_id
from store.queries import DEFAULT_POLICY, latest_template
from store.ssh_keys import KeyProblem, parse_private_key
from store.vault import Vault
from triggers import schedules

router = APIRouter(route_class=StoreRoute)
# Operators keep inventory within their profiles; auditors and operators read it.
Keeper = Annotated[Caller, Depends(allow(OPERATOR))]

# Templates that need a privileged account refer to it; used to insist one is given.
_AUTH_TAGS = ("auth_password", "AUTH_PASSWORD", "auth_username", "AUTH_USER")


@router.get("/executors", response_model=Page[ExecutorOut])
def list_executors(
    caller: Annotated[Caller, Depends(allow(*READERS, TEMPLATE_AUTHOR, APPROVER))],
    limit: Limit = 100,
    cursor: Cursor = None,
) -> Page[ExecutorOut]:
    """Executors by name. Few and fixed at start, so paged in memory."""
    shipped = shipped_templates()
    names = sorted(name for name in registry() if cursor is None or name > cursor)
    shown, more = names[:limit], len(names) > limit
    executors = [
        ExecutorOut(
            name=name,
            syntax=executor.syntax,
            default_port=executor.default_port,
            default_templates=executor.default_templates,
            operation_kinds=sorted({t.kind for t in shipped if t.executor == name}),
            templates=[t.name for t in shipped if t.executor == name],
        )
        for name, executor in ((name, registry()[name]) for name in shown)
    ]
    return Page(items=executors, next_cursor=shown[-1] if more else None)


@router.post("/devices", status_code=201, response_model=DeviceOut)
def create_device(body: DeviceIn, db: DB, caller: Keeper) -> Device:
    _may_place(caller, body.profile)
    executor = known_executor(body.executor)
    default_port = executor.default_port
    if body.options.get("scheme") == "http":  # e.g. WinRM: 5985 over http, 5986 over https
        default_port = getattr(executor, "http_port", default_port)
    device = Device(**body.model_dump(exclude={"port"}), port=body.port or default_port)
    try:  # the executor alone knows its settings (options, host keys)
        check_target(executor, target_for(device, DEFAULT_POLICY))
    except ConfigurationError as exc:
        raise invalid(exc.field, exc.cause) from None
    if db.exec(select(Device).where(Device.name == body.name)).first():
        raise Problem(409, f"a device named {body.name!r} exists; choose another name")
    db.add(device)
    audit.record(
        db, "device.created", device_id=device.id, principal=caller.name, name=device.name,
        executor=device.executor,
    )  # fmt: skip
    db.commit()
    return device


@router.get("/devices", response_model=Page[DeviceOut])
def list_devices(
    db: DB, caller: Reader, limit: Limit = 100, cursor: Cursor = None
) -> Page[DeviceOut]:
    """Devices of the caller's profiles, oldest first."""
    query = select(Device).where(caller.sees_rows(Device.profile))
    return keyset_page(db, query, by_age(Device), limit, cursor, shown_as(DeviceOut))


@router.get("/devices/{device_id}", response_model=DeviceOut)
def get_device(device_id: str, db: DB, caller: Reader) -> Device:
    device = db.get(Device, device_id) or _raise(not_found("device", device_id))
    hidden(caller, device.profile, "device", device_id)
    return device


def _may_place(caller: Caller, profile: str) -> None:
    if not caller.sees(profile):
        raise Problem(
            403,
            f"{caller.name} may not place objects in profile {profile!r}; its profiles: "
            f"{', '.join(sorted(caller.profiles or ()))}",
        )


_POLICY_PROBLEMS: dict[int | str, dict[str, str]] = {
    404: {"description": "no such policy"},
    409: {"description": "another policy has this name"},
    422: {"description": "invalid field"},
    503: {"description": "Temporal did not take the policy's schedules; nothing was changed"},
}


@router.post(
    "/policies",
    status_code=201,
    response_model=PolicyOut,
    responses={k: v for k, v in _POLICY_PROBLEMS.items() if k != 404},
)
async def create_policy(body: PolicyIn, app: State, caller: Admin) -> Policy:
    """A policy with an expiry or a verification period gets its schedules at once."""
    policy = Policy(id=new_id(), **body.model_dump())
    await in_thread(app.engine, lambda db: _name_is_free(db, policy.name, policy.id))
    await _apply_schedules(app, policy)
    try:
        await in_thread(app.engine, lambda db: _save(db, policy, "policy.created", caller))
    except IntegrityError:  # the same name, created meanwhile: undo the schedules
        await _apply_schedules(app, Policy(id=policy.id, name=policy.name), policy)
        raise Problem(409, f"a policy named {body.name!r} exists; choose another name") from None
    return policy


@router.patch("/policies/{policy_id}", response_model=PolicyOut, responses=_POLICY_PROBLEMS)
async def update_policy(policy_id: str, body: PolicyPatch, app: State, caller: Admin) -> Policy:
    """Change any field; its schedules are updated, paused, resumed or removed at once, before
    the change is stored (so a 503 leaves both as they were)."""
    policy = await in_thread(app.engine, lambda db: db.get(Policy, policy_id))
    if policy is None:
        raise not_found("policy", policy_id)
    try:
        merged = PolicyIn(
            **{
                **PolicyIn.model_validate(policy, from_attributes=True).model_dump(),
                **body.model_dump(exclude_unset=True),
            }
        )
    except ValidationError as exc:
        errors = [
            {"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()
        ]
        detail = "; ".join(f"{e['field'] or 'body'}: {e['message']}" for e in errors)
        raise Problem(422, detail, errors=errors) from None
    updated = Policy(id=policy.id, created_at=policy.created_at, **merged.model_dump())
    await in_thread(app.engine, lambda db: _name_is_free(db, updated.name, updated.id))
    await _apply_schedules(app, updated, policy)
    try:
        await in_thread(app.engine, lambda db: _save(db, updated, "policy.updated", caller))
    except IntegrityError:
        await _apply_schedules(app, policy, updated)
        raise Problem(409, f"a policy named {updated.name!r} exists; choose another name") from None
    return updated


def _name_is_free(db: Session, name: str, policy_id: str) -> None:
    other = db.exec(select(Policy).where(Policy.name == name)).first()
    if other is not None and other.id != policy_id:
        raise Problem(409, f"a policy named {name!r} exists; choose another name")


def _save(db: Session, policy: Policy, event: str, caller: Caller) -> None:
    db.merge(policy)
    audit.record(db, event, principal=caller.name, policy_id=policy.id, name=policy.name)
    db.commit()


async def _apply_schedules(app: State, policy: Policy, before: Policy | None = None) -> None:
    """Temporal is asked only when the policy has or had schedules."""
    if not schedules.Wanted.of(policy).purposes and (
        before is None or not schedules.Wanted.of(before).purposes
    ):
        return
    try:
        await schedules.apply(app.client, app.settings, schedules.Wanted.of(policy))
    except TemporalUnavailable as exc:
        raise Problem(503, str(exc)) from None


@router.get("/policies", response_model=Page[PolicyOut])
def list_policies(
    db: DB, caller: Reader, limit: Limit = 100, cursor: Cursor = None
) -> Page[PolicyOut]:
    """Policies, oldest first."""
    return keyset_page(db, select(Policy), by_age(Policy), limit, cursor, shown_as(PolicyOut))


@router.get("/policies/{policy_id}", response_model=PolicyOut)
def get_policy(policy_id: str, db: DB, caller: Reader) -> Policy:
    return db.get(Policy, policy_id) or _raise(not_found("policy", policy_id))


@router.post("/credentials", status_code=201, response_model=CredentialOut)
def create_credential(body: CredentialIn, db: DB, app: State, caller: Keeper) -> CredentialOut:
    """A credential's profile is its device's (a ``profile`` given must be the same)."""
    device = db.get(Device, body.device_id)
    if device is None or not caller.sees(device.profile):
        raise invalid("device_id", f"no device with id {body.device_id!r}")
    if "profile" in body.model_fields_set and body.profile != device.profile:
        raise invalid("profile", f"a credential's profile is its device's: {device.profile!r}")
    auth = None
    if body.auth_credential_id:
        auth = db.get(Credential, body.auth_credential_id)
        if auth is None or not caller.sees(auth.profile):
            raise invalid(
                "auth_credential_id", f"no credential with id {body.auth_credential_id!r}"
            )
        if auth.device_id != device.id:
            raise invalid("auth_credential_id", "the auth credential must be on the same device")
    executor = known_executor(device.executor)
    refused = username_problem(executor, body.username)
    if refused is not None:
        raise invalid("username", refused)
    secret = _registered_secret(body)
    key = body.secret_type == SSH_KEY
    change_kind = "key-install" if key else "change"
    change_name = body.change_template or _default_template(executor, change_kind, auth is not None)
    verify_name = body.verify_template or _default_template(executor, "verify", False)
    change = _template_for("change_template", change_name, device.executor, change_kind, db)
    _template_for("verify_template", verify_name, device.executor, "verify", db)
    remove_name = None
    if key:
        remove_name = body.key_remove_template or _default_template(
            executor, "key-remove", auth is not None, field="key_remove_template"
        )
        remove = _template_for(
            "key_remove_template", remove_name, device.executor, "key-remove", db
        )
        if auth is None and any(tag in remove.body for tag in _AUTH_TAGS):
            raise invalid(
                "auth_credential_id",
                f"template {remove_name!r} connects with a privileged account: give "
                "auth_credential_id",
            )
        _check_key_targets(db, caller, device, body.key_targets)
    elif body.key_targets or body.key_remove_template:
        field = "key_targets" if body.key_targets else "key_remove_template"
        raise invalid(field, "only an ssh-key credential (secret_type ssh-key) takes it")
    uses_auth = any(tag in change.body for tag in _AUTH_TAGS)
    if auth is None and uses_auth:
        raise invalid(
            "auth_credential_id",
            f"template {change_name!r} connects with a privileged account: give auth_credential_id",
        )
    if auth is not None and uses_auth and caller.role != ADMIN:
        raise Problem(
            403,
            f"only an admin may point {change_name!r}, a template that uses another credential's "
            "password (auth_password), at that credential",
        )
    for kind, name in body.lifecycle_templates.items():
        _template_for(f"lifecycle_templates.{kind}", name, device.executor, kind, db)
    credential = Credential(
        lifecycle_templates={str(kind): name for kind, name in body.lifecycle_templates.items()},
        device_id=device.id,
        username=body.username,
        profile=device.profile,
        change_template=change_name,
        verify_template=verify_name,
        auth_credential_id=body.auth_credential_id,
        policy_id=body.policy_id,
        parent_id=body.parent_id,
        reconcile_credential_id=body.reconcile_credential_id,
        auto_reconcile=body.auto_reconcile,
        secret_type=body.secret_type,
        key_targets=list(body.key_targets),
        key_remove_template=remove_name,
    )
    _check_links(db, credential, caller)
    db.add(credential)
    db.flush()
    version = app.vault.add(db, credential.id, secret, SecretState.CURRENT)
    audit.record(
        db, "credential.created", credential_id=credential.id, principal=caller.name,
        username=credential.username, version_id=version.id,
    )  # fmt: skip
    db.commit()
    return _credential_out(credential, version.id)


@router.patch("/credentials/{credential_id}", response_model=CredentialOut)
def update_credential(
    credential_id: str, body: CredentialPatch, db: DB, caller: Keeper
) -> CredentialOut:
    credential = db.get(Credential, credential_id) or _raise(not_found("credential", credential_id))
    hidden(caller, credential.profile, "credential", credential_id)
    for field, value in body.model_dump(exclude_unset=True).items():
        if field == "auto_reconcile" and value is None:
            raise invalid(field, "must be true or false")
        setattr(credential, field, value)
    with db.no_autoflush:  # checked before the store sees the links (a flush would hit the FK)
        _check_links(db, credential, caller)
    db.add(credential)
    audit.record(
        db, "credential.updated", credential_id=credential.id, principal=caller.name,
        fields=sorted(body.model_dump(exclude_unset=True)),
    )  # fmt: skip
    db.commit()
    return _credential_out(credential, _current_id(db, credential.id))


def _registered_secret(body: CredentialIn) -> str:
    """The credential's current secret: a password, or for an ssh-key credential an OpenSSH
    private key that parses (refused, naming the field, before anything is stored)."""
    if body.secret_type != SSH_KEY:
        if body.private_key is not None:
            raise invalid("private_key", "a password credential takes password; or set "
                          "secret_type to ssh-key")  # fmt: skip
        if body.password is None:
            raise invalid("password", "the credential's current password is required")
        return body.password.get_secret_value()
    if body.password is not None:
        raise invalid("password", "an ssh-key credential takes private_key, not password")
    if body.private_key is None:
        raise invalid("private_key", "an ssh-key credential needs its current private key")
    private_key = body.private_key.get_secret_value()
    try:
        parse_private_key(private_key)
    except KeyProblem as exc:
        raise invalid("private_key", str(exc)) from None
    return private_key


def _check_key_targets(db: DB, caller: Caller, device: Device, key_targets: list[str]) -> None:
    """Each key target is another device of the caller's profiles whose executor can install
    keys (one outside them is "no device", as everywhere: ids do not leak)."""
    if len(set(key_targets)) != len(key_targets):
        raise invalid("key_targets", "names a device twice")
    for index, device_id in enumerate(key_targets):
        field = f"key_targets.{index}"
        other = db.get(Device, device_id)
        if other is None or not caller.sees(other.profile):
            raise invalid(field, f"no device with id {device_id!r}")
        if other.id == device.id:
            raise invalid(field, "is the credential's own device; list other devices only")
        defaults = known_executor(other.executor).default_templates
        if not {"key-install", "key-remove"} <= set(defaults):
            raise invalid(field, f"executor {other.executor!r} of device {other.name!r} "
                          "ships no key templates: it cannot hold an SSH key")  # fmt: skip


def _check_links(db: DB, credential: Credential, caller: Caller) -> None:
    """Parent and reconcile links must name existing credentials of the caller's profiles, and
    parents form no cycle."""
    if credential.policy_id and db.get(Policy, credential.policy_id) is None:
        raise invalid("policy_id", f"no policy with id {credential.policy_id!r}")
    if credential.reconcile_credential_id:
        reconcile = db.get(Credential, credential.reconcile_credential_id)
        if reconcile is None or not caller.sees(reconcile.profile):
            raise invalid(
                "reconcile_credential_id",
                f"no credential with id {credential.reconcile_credential_id!r}",
            )
        if reconcile.device_id != credential.device_id or reconcile.id == credential.id:
            raise invalid(
                "reconcile_credential_id",
                "must be another credential on the same device (a privileged account)",
            )
    if credential.auto_reconcile and not credential.reconcile_credential_id:
        raise invalid("auto_reconcile", "needs a reconcile_credential_id to reconcile with")
    seen = {credential.id}
    parent_id = credential.parent_id
    while parent_id:
        if parent_id in seen:
            raise invalid("parent_id", "this parent link would make a cycle of credentials")
        seen.add(parent_id)
        parent = db.get(Credential, parent_id)
        if parent is None or not caller.sees(parent.profile):
            raise invalid("parent_id", f"no credential with id {parent_id!r}")
        parent_id = parent.parent_id


@router.get("/credentials", response_model=Page[CredentialOut])
def list_credentials(
    db: DB, caller: Reader, limit: Limit = 100, cursor: Cursor = None
) -> Page[CredentialOut]:
    """Credentials of the caller's profiles, oldest first."""
    query = select(Credential).where(caller.sees_rows(Credential.profile))
    return keyset_page(
        db, query, by_age(Credential), limit, cursor,
        lambda c: _credential_out(c, _current_id(db, c.id)),
    )  # fmt: skip


@router.get("/credentials/{credential_id}", response_model=CredentialOut)
def get_credential(credential_id: str, db: DB, caller: Reader) -> CredentialOut:
    credential = db.get(Credential, credential_id) or _raise(not_found("credential", credential_id))
    hidden(caller, credential.profile, "credential", credential_id)
    return _credential_out(credential, _current_id(db, credential.id))


def _credential_out(credential: Credential, current_version_id: str | None) -> CredentialOut:
    return CredentialOut(**credential.model_dump(), current_version_id=current_version_id)


def _current_id(db: DB, credential_id: str) -> str | None:
    current = Vault.current(db, credential_id)
    return current.id if current else None


def known_executor(name: str) -> Executor:
    try:
        return get_executor(name)
    except LookupError as exc:
        raise invalid("executor", str(exc)) from None


def _default_template(
    executor: Executor, kind: str, privileged: bool, field: str | None = None
) -> str:
    defaults = executor.default_templates
    key = f"{kind}-as-admin" if kind != "verify" and privileged else kind
    name = defaults.get(key)
    if name is None:
        field = field or ("verify_template" if kind == "verify" else "change_template")
        raise invalid(field, f"executor {executor.name!r} has no default {key} template; name one")
    return name


def _template_for(field: str, name: str, executor: str, kind: str, db: DB) -> Template:
    try:
        template = latest_template(db, name)
    except LookupError as exc:  # none, or none approved yet
        exists = db.exec(select(Template.id).where(Template.name == name)).first()
        shown = str(exc) if exists else f"no template named {name!r}"
        raise invalid(field, f"{shown}; list them with GET /v1/templates") from None
    if template.executor != executor:
        raise invalid(
            field, f"{name!r} is a {template.executor} template, the device uses {executor}"
        )
    if template.kind != kind:
        raise invalid(field, f"{name!r} is a {template.kind} template, not a {kind} template")
    return template


def _raise(problem: Problem) -> NoReturn:
    raise problem
