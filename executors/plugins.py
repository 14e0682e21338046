"""Loading plugins from an entry-point group: executors (``keyturn.executors``) and certificate
authorities (``keyturn.cas``) are found the same way."""

from __future__ import annotations

import logging
from importlib.metadata import entry_points
from typing import Any


def load_plugins(group: str, what: str) -> dict[str, Any]:
    """Each installed plugin of ``group``, instantiated, by name. ``what`` names the kind of
    plugin in the log line of one that fails to load: a broken plugin must not take the
    others down with it."""
    found: dict[str, Any] = {}
    for ep in entry_points(group=group):
        try:
            found[ep.name] = ep.load()()
        except Exception:
            logging.getLogger("keyturn").exception("%s plugin %r failed to load", what, ep.name)
    return found
