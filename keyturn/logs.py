"""How Keyturn's processes log: one format, and libraries that say too much at INFO held to
their warnings."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
# asyncssh logs every step of every connection at INFO: some fifteen lines a login, two or three
# logins a change. An attempt's transcript and its error already say what happened on the
# target, and writing those lines cost a worker a few per cent of its CPU per change. Their
# warnings and errors still show.
QUIETER = {"asyncssh": logging.WARNING}


def configure_logging() -> None:
    """INFO and up to stderr, for a process started from the command line."""
    logging.basicConfig(level=logging.INFO, format=FORMAT)
    for name, level in QUIETER.items():
        logging.getLogger(name).setLevel(level)
