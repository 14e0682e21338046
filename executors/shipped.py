"""Templates shipped with the executors (``executors/templates/<executor>/<name>.tpl``).

The store seeds them so a fresh install can change Linux passwords out of the box. Each file
starts with a ``# kind: <operation kind>`` header line (``-- kind:`` in SQL templates).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.resources import files

_PACKAGE = "executors"
_SUFFIX = ".tpl"
_KIND = re.compile(r"^(?:#|--)\s*kind:\s*(\S+)\s*$", re.MULTILINE)  # "#" or SQL "--"


@dataclass(frozen=True)
class ShippedTemplate:
    name: str  # "<executor>/<file stem>", e.g. "ssh/linux-passwd"
    executor: str
    kind: str  # the operation kind from the "# kind:" header: change, verify, …
    body: str  # the whole file, header included


def shipped_templates() -> list[ShippedTemplate]:
    """Every shipped template, sorted by name. A file without a kind header is a packaging bug."""
    found: list[ShippedTemplate] = []
    root = files(_PACKAGE).joinpath("templates")
    for executor_dir in root.iterdir():
        if not executor_dir.is_dir():
            continue
        for entry in executor_dir.iterdir():
            if not entry.name.endswith(_SUFFIX):
                continue
            body = entry.read_text(encoding="utf-8")
            name = f"{executor_dir.name}/{entry.name.removesuffix(_SUFFIX)}"
            kind = _KIND.search(body)
            if kind is None:
                raise ValueError(f"shipped template {name} has no '# kind: <kind>' header line")
            found.append(ShippedTemplate(name, executor_dir.name, kind.group(1), body))
    return sorted(found, key=lambda template: template.name)
