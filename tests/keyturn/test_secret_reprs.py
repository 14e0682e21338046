"""Secrets stay out of repr(): a traceback, a debug log or an assertion message shows reprs."""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import re
from typing import get_args

import pytest
from pydantic import BaseModel, SecretStr

from executors.base import Account
from executors.http.executor import _Rendered
from executors.winrm.executor import Script
from keyturn.settings import Settings
from starter.schemas import CredentialIn
from store.jobs import Job
from tests.executors.helpers import make_context

PACKAGES = (
    "activities",
    "executors",
    "keyturn",
    "requesting",
    "starter",
    "store",
    "templating",
    "workflows",
)
# A field named for a secret: password, new_password, master_key, temporal_api_key...
SECRET_NAME = re.compile(r"secret|(\w+_)?(password|private_key|master_key|api_key|admin_token)")
# Fields whose name does not say so but whose value may carry a secret.
HOLDS_SECRETS = {
    Job: {"current_password", "pending_password"},
    _Rendered: {"url", "headers", "content", "form"},
    Script: {"text"},
}


def test_every_secret_field_of_an_api_model_is_out_of_repr() -> None:
    models = [cls for cls in _classes() if issubclass(cls, BaseModel)]
    assert CredentialIn in models
    shown = [
        f"{cls.__qualname__}.{name}"
        for cls in models
        for name, info in cls.model_fields.items()
        if SECRET_NAME.fullmatch(name) and info.repr and SecretStr not in _types(info.annotation)
    ]
    assert not shown, f"secret fields in repr: {shown}"


def _types(annotation: object) -> set[object]:
    """The annotation and every type inside it (``Annotated[SecretStr, ...] | None`` included)."""
    return {annotation}.union(*(_types(arg) for arg in get_args(annotation)))


def _dataclasses() -> list[type]:
    return [cls for cls in _classes() if dataclasses.is_dataclass(cls)]


def _classes() -> list[type]:
    found: list[type] = []
    for package_name in PACKAGES:
        package = importlib.import_module(package_name)
        for info in pkgutil.walk_packages(package.__path__, f"{package_name}."):
            module = importlib.import_module(info.name)
            found += [
                value
                for value in vars(module).values()
                if isinstance(value, type) and value.__module__ == info.name
            ]
    return found


def test_every_secret_field_of_a_dataclass_is_out_of_repr() -> None:
    classes = _dataclasses()
    assert Job in classes and Account in classes  # the walk found the modules
    shown = []
    for cls in classes:
        for field in dataclasses.fields(cls):
            secret = SECRET_NAME.fullmatch(field.name) or field.name in HOLDS_SECRETS.get(cls, ())
            if secret and field.repr:
                shown.append(f"{cls.__module__}.{cls.__qualname__}.{field.name}")
    assert not shown, f"secret fields in repr: {shown}"


@pytest.mark.parametrize("cls", list(HOLDS_SECRETS))
def test_fields_carrying_secrets_are_out_of_repr(cls: type) -> None:
    shown = {f.name for f in dataclasses.fields(cls) if f.repr}
    assert not shown & HOLDS_SECRETS[cls]


def test_reprs_of_instances() -> None:
    secret = "S3cret-that-must-not-show"
    context = make_context("h", "127.0.0.1", 22, "app", secret, secret + "2", "root", secret + "3")
    assert secret not in repr(context)
    assert secret not in repr(Account("app", secret))
    script = Script(text=f"Set-Password '{secret}'", shown="Set-Password '***'", bears_secret=True)
    assert secret not in repr(script) and "***" in repr(script)
    settings = Settings(
        master_key=secret,
        admin_token=secret,
        temporal_api_key=secret,
        database_url=f"postgresql+psycopg://keyturn:{secret}@db/keyturn",
    )
    assert secret not in repr(settings) and secret not in str(settings)
