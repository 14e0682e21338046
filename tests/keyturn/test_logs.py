"""The processes' logging: asyncssh's step-by-step INFO lines are held back, its warnings and
Keyturn's own INFO lines are not."""

from __future__ import annotations

from tests.python_process import run_python

# A process configured as worker.py and the keyturn command configure theirs.
PROGRAM = """
import logging
from keyturn.logs import configure_logging
configure_logging()
logging.getLogger("asyncssh").info("ssh step")
logging.getLogger("asyncssh").warning("ssh warning")
logging.getLogger("keyturn.audit").info("audit line")
"""


def test_asyncssh_says_only_its_warnings() -> None:
    ran = run_python(PROGRAM)
    assert "ssh step" not in ran.stderr
    assert "WARNING asyncssh ssh warning" in ran.stderr
    assert "INFO keyturn.audit audit line" in ran.stderr
