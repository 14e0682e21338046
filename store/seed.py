"""Shipped templates are stored like user templates, so one lookup serves both. They are
approved at install: reviewed with the release that ships them."""

from __future__ import annotations

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from executors.shipped import shipped_templates
from store.models import Template, TemplateStatus, utcnow


def seed_shipped_templates(engine: Engine) -> None:
    """Add each shipped template, or a new version of it when the shipped text changed."""
    with Session(engine) as session:
        for shipped in shipped_templates():
            latest = session.exec(
                select(Template)
                .where(Template.name == shipped.name)
                .order_by(col(Template.version).desc())
            ).first()
            if latest is not None and latest.body == shipped.body:
                continue
            now = utcnow()
            if latest is not None and latest.status == TemplateStatus.APPROVED:
                latest.status = TemplateStatus.SUPERSEDED
                session.add(latest)
            session.add(
                Template(
                    name=shipped.name,
                    version=latest.version + 1 if latest else 1,
                    executor=shipped.executor,
                    kind=shipped.kind,
                    body=shipped.body,
                    shipped=True,
                    status=TemplateStatus.APPROVED,
                    reviewed_by="keyturn",
                    reviewed_at=now,
                    approved_at=now,
                )
            )
        session.commit()
