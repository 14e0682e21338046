"""Templates under maker-checker: a template-author proposes a version, an approver other than
its author approves or rejects it, and operations run only approved versions (each the version
approved when the operation was requested). Every version stays readable with its review."""

from __future__ import annotations

import difflib
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path
from sqlmodel import Session, col, select

from starter.authz import APPROVER, READERS, TEMPLATE_AUTHOR, Caller, allow
from starter.deps import DB, StoreRoute
from starter.pages import Cursor, Limit, Page, keyset_page, shown_as
from starter.problems import Problem, invalid, problem_response
from starter.routes.inventory import known_executor
from starter.schemas import TemplateDiffOut, TemplateIn, TemplateOut, TemplateReviewIn
from store import audit
from store.models import Template, TemplateStatus, utcnow
from templating import TemplateSyntaxProblem
from templating.parameters import check_references, declared
from workflows.contracts import TASK_KIND

router = APIRouter(route_class=StoreRoute)
Author = Annotated[Caller, Depends(allow(TEMPLATE_AUTHOR))]
Approver = Annotated[Caller, Depends(allow(APPROVER))]
TemplateReader = Annotated[Caller, Depends(allow(*READERS, TEMPLATE_AUTHOR, APPROVER))]
# A version number the store can hold (an INTEGER column): larger ones are refused as 422.
Version = Annotated[int, Path(ge=1, le=2**31 - 1, description="the version number")]
_NO_VERSION = problem_response("no such template, or no such version of it")


@router.post(
    "/templates",
    status_code=201,
    response_model=TemplateOut,
    responses={
        409: problem_response("a shipped template has this name"),
        422: problem_response("the template does not parse, or is of another executor"),
    },
)
def create_template(body: TemplateIn, db: DB, caller: Author) -> Template:
    """Propose a new template, or a new version of one: it is ``pending`` and runs nowhere until
    an approver other than its author approves it. Shipped templates cannot be replaced."""
    executor = known_executor(body.executor)
    try:
        executor.validate(body.body)
        if body.kind == TASK_KIND:
            check_references(body.body, declared(body.body))  # declared, and only those read
    except TemplateSyntaxProblem as exc:
        raise Problem(
            422,
            f"template does not parse: {exc}",
            errors=[{"field": "body", "line": exc.line, "message": exc.message}],
        ) from None
    latest = db.exec(
        select(Template).where(Template.name == body.name).order_by(col(Template.version).desc())
    ).first()
    if latest is not None and latest.shipped:
        raise Problem(409, f"{body.name!r} is a shipped template; save yours under another name")
    if latest is not None and latest.executor != body.executor:
        raise invalid("executor", f"{body.name!r} is a template of executor {latest.executor!r}")
    template = Template(
        **body.model_dump(), version=latest.version + 1 if latest else 1, author=caller.name
    )
    db.add(template)
    audit.record(
        db, "template.saved", principal=caller.name, name=template.name,
        version=template.version, status=template.status,
    )  # fmt: skip
    db.commit()
    return template


@router.get("/templates", response_model=Page[TemplateOut])
def list_templates(
    db: DB, caller: TemplateReader, limit: Limit = 100, cursor: Cursor = None
) -> Page[TemplateOut]:
    """Every version of every template, by name then version, with its review status."""
    keys = (col(Template.name), col(Template.version))
    return keyset_page(db, select(Template), keys, limit, cursor, shown_as(TemplateOut))


@router.get(
    "/templates/{name:path}/versions",
    response_model=Page[TemplateOut],
    responses={404: problem_response("no such template")},
)
def list_versions(
    name: str, db: DB, caller: TemplateReader, limit: Limit = 100, cursor: Cursor = None
) -> Page[TemplateOut]:
    """The template's versions, oldest first: pending, approved, rejected and superseded."""
    if db.exec(select(Template.id).where(Template.name == name)).first() is None:
        raise Problem(404, f"no template named {name!r}; list them with GET /v1/templates")
    query = select(Template).where(Template.name == name)
    keys = (col(Template.version),)
    return keyset_page(db, query, keys, limit, cursor, shown_as(TemplateOut))


@router.get(
    "/templates/{name:path}/versions/{version}/diff",
    response_model=TemplateDiffOut,
    responses={404: _NO_VERSION},
)
def diff_version(name: str, version: Version, db: DB, caller: TemplateReader) -> TemplateDiffOut:
    """What this version changes against the version before it."""
    template = _version(db, name, version)
    before = db.exec(
        select(Template)
        .where(Template.name == name, col(Template.version) < version)
        .order_by(col(Template.version).desc())
    ).first()
    lines = difflib.unified_diff(
        (before.body if before else "").splitlines(keepends=True),
        template.body.splitlines(keepends=True),
        fromfile=f"{name} v{before.version}" if before else "/dev/null",
        tofile=f"{name} v{version}",
    )
    return TemplateDiffOut(
        name=name, version=version, against=before.version if before else None, diff="".join(lines)
    )


_REVIEW_PROBLEMS: dict[int | str, dict[str, Any]] = {
    404: _NO_VERSION,
    409: problem_response(
        "the version is not pending, a newer version is approved, or the caller wrote it"
    ),
}


@router.post(
    "/templates/{name:path}/versions/{version}/approve",
    response_model=TemplateOut,
    responses=_REVIEW_PROBLEMS,
)
def approve(
    name: str, version: Version, body: TemplateReviewIn, db: DB, caller: Approver
) -> Template:
    """Approve a pending version: operations requested from now on run it, and the version
    approved before it (and pending ones older than it) become ``superseded``."""
    template = _pending(db, name, version, caller)
    newer = db.exec(
        select(Template).where(
            Template.name == name,
            col(Template.version) > version,
            Template.status == TemplateStatus.APPROVED,
        )
    ).first()
    if newer is not None:
        raise Problem(
            409, f"version {newer.version} of {name!r} is approved; propose a new version instead"
        )
    now = utcnow()
    for older in _versions(db, name):
        if older.version < version and older.status in (
            TemplateStatus.APPROVED,
            TemplateStatus.PENDING,
        ):
            older.status = TemplateStatus.SUPERSEDED
            db.add(older)
    template.status = TemplateStatus.APPROVED
    template.approved_at = now
    _reviewed(db, template, caller, body, now, "template.approved")
    return template


@router.post(
    "/templates/{name:path}/versions/{version}/reject",
    response_model=TemplateOut,
    responses=_REVIEW_PROBLEMS,
)
def reject(
    name: str, version: Version, body: TemplateReviewIn, db: DB, caller: Approver
) -> Template:
    """Reject a pending version: it never runs, and stays readable with the note."""
    template = _pending(db, name, version, caller)
    template.status = TemplateStatus.REJECTED
    _reviewed(db, template, caller, body, utcnow(), "template.rejected")
    return template


def _pending(db: Session, name: str, version: int, caller: Caller) -> Template:
    template = _version(db, name, version)
    if template.status != TemplateStatus.PENDING:
        raise Problem(409, f"{name!r} version {version} is {template.status}, not pending")
    if template.author == caller.name:
        raise Problem(
            409, f"{caller.name} wrote {name!r} version {version}: another approver must review it"
        )
    return template


def _reviewed(
    db: Session,
    template: Template,
    caller: Caller,
    body: TemplateReviewIn,
    now: datetime,
    event: str,
) -> None:
    template.reviewed_by = caller.name
    template.reviewed_at = now
    template.review_note = body.note
    db.add(template)
    audit.record(
        db, event, principal=caller.name, name=template.name, version=template.version,
        author=template.author,
    )  # fmt: skip
    db.commit()


def _versions(db: Session, name: str) -> list[Template]:
    return list(
        db.exec(select(Template).where(Template.name == name).order_by(col(Template.version)))
    )


def _version(db: Session, name: str, version: int) -> Template:
    template = db.exec(
        select(Template).where(Template.name == name, Template.version == version)
    ).first()
    if template is None:
        raise Problem(
            404, f"template {name!r} has no version {version}; list them with "
            f"GET /v1/templates/{name}/versions",
        )  # fmt: skip
    return template
