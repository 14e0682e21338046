"""Loading plugins from an entry-point group: executors (``keyturn.executors``) and certificate
authorities (``keyturn.cas``) are found the same way."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping
from importlib.metadata import entry_points
from typing import Generic, TypeVar

_P = TypeVar("_P")
log = logging.getLogger("keyturn")


class Plugins(Mapping[str, _P], Generic[_P]):
    """The installed plugins of an entry-point group by name, each imported and instantiated
    the first time it is asked for: a process holds the protocol libraries it uses and no
    others (a worker that changes SSH passwords never imports a database driver, ~20 MiB).
    A plugin that fails to load is as if not installed, and is tried again when next asked
    for (a failure may pass: a file-descriptor limit, an upgrade in progress); it is logged
    the first time: a broken plugin must not take the others down with it. ``what`` names
    the kind of plugin in that log line."""

    def __init__(self, group: str, what: str) -> None:
        self._what = what
        self._points = {point.name: point for point in entry_points(group=group)}
        self._loaded: dict[str, _P] = {}
        self._failed: set[str] = set()  # logged already
        self._lock = threading.RLock()  # activities ask from several threads at once

    def __getitem__(self, name: str) -> _P:
        loaded = self._loaded.get(name)  # no lock once loaded: the event loop asks too
        if loaded is not None:
            return loaded
        with self._lock:
            if name in self._loaded:
                return self._loaded[name]
            point = self._points.get(name)
            if point is None:
                raise KeyError(name)
            try:
                plugin: _P = point.load()()
            except Exception:
                if name not in self._failed:
                    self._failed.add(name)
                    log.exception("%s plugin %r failed to load", self._what, name)
                raise KeyError(name) from None
            self._loaded[name] = plugin
            return plugin

    def __iter__(self) -> Iterator[str]:
        """The names of the plugins that load: listing them loads each one."""
        return iter([name for name in self._points if name in self])

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def packages(self) -> dict[str, str]:
        """Each installed plugin's top-level package by name, read from its entry point
        without importing it (where its package data, such as shipped templates, lives)."""
        return {name: point.module.split(".")[0] for name, point in self._points.items()}
