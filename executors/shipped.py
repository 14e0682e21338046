"""Templates shipped with the executors (``executors/templates/<executor>/<name>.tpl``).

The store seeds them so a fresh install can change Linux passwords out of the box. Each file
starts with a ``# kind: <operation kind>`` header line (``-- kind:`` in SQL templates).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib.resources import files

from executors.base import registry

log = logging.getLogger("keyturn")
_SUFFIX = ".tpl"
_KIND = re.compile(r"^(?:#|--)\s*kind:\s*(\S+)\s*$", re.MULTILINE)  # "#" or SQL "--"


@dataclass(frozen=True)
class ShippedTemplate:
    name: str  # "<executor>/<file stem>", e.g. "ssh/linux-passwd"
    executor: str
    kind: str  # the operation kind from the "# kind:" header: change, verify, …
    body: str  # the whole file, header included


def shipped_templates() -> list[ShippedTemplate]:
    """Every installed executor's shipped templates, sorted by name.

    An executor ships its templates as package data in ``<its top-level package>/templates/
    <executor name>/*.tpl``: Keyturn's own (package ``executors``) and a third-party plugin's are
    found the same way. A file without a kind header is a packaging bug.
    """
    found: list[ShippedTemplate] = []
    for name, package in registry().packages().items():
        try:
            directory = files(package).joinpath("templates", name)  # imports the package
        except Exception:
            # A plugin whose package cannot even be imported ships nothing; the others do.
            log.exception("executor plugin %r: its templates could not be read", name)
            continue
        if not directory.is_dir():
            continue
        for entry in directory.iterdir():
            if entry.name.endswith(_SUFFIX):
                found.append(
                    _read(name, entry.name.removesuffix(_SUFFIX), entry.read_text("utf-8"))
                )
    return sorted(found, key=lambda template: template.name)


def _read(executor: str, stem: str, body: str) -> ShippedTemplate:
    name = f"{executor}/{stem}"
    kind = _KIND.search(body)
    if kind is None:
        raise ValueError(f"shipped template {name} has no '# kind: <kind>' header line")
    return ShippedTemplate(name, executor, kind.group(1), body)
