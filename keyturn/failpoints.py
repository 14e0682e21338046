"""Failpoints: named places where a test can make this process die, to prove recovery.

Compiled out unless the process starts with ``KEYTURN_TEST_MODE=1``: then ``reach`` is a no-op
whatever else is set, so a stray ``KEYTURN_FAILPOINTS`` in a production environment cannot kill
a worker. In test mode, the points ``KEYTURN_FAILPOINTS`` names (comma-separated) are armed —
tests set both on a worker they run as a subprocess. Each named point fires once per marker
directory (``KEYTURN_FAILPOINTS_DIR``), so the restarted worker gets past it. The process dies with
SIGKILL: no cleanup, no graceful shutdown, exactly like a crash or an OOM kill.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

# The points, in protocol order (DESIGN.md, "The change protocol").
AFTER_PREPARE = "after-prepare"
CHANGE_SENT = "change-sent"  # the new secret is on the wire, the answer not yet read
AFTER_CHANGE = "after-change"  # the change succeeded, verify has not started
# The new secret logged in, and the change gave its device slot back and committed in the
# transaction that recorded it; its answer is not sent.
AFTER_VERIFY = "after-verify"
DURING_COMMIT = "during-commit"  # inside the commit transaction, before it is committed
ALL = (AFTER_PREPARE, CHANGE_SENT, AFTER_CHANGE, AFTER_VERIFY, DURING_COMMIT)
# An ssh-key change (activities/key_steps.py) installs on each device, verifies everywhere,
# then removes the old key; it sends no password, so CHANGE_SENT is not on its path.
KEY_INSTALLED_ON_ONE = "key-installed-on-one-device"  # the others do not have it yet
KEY_VERIFIED = "key-verified-everywhere"  # the new key logs in everywhere; the old one is there too
KEY_POINTS = (AFTER_PREPARE, KEY_INSTALLED_ON_ONE, KEY_VERIFIED, AFTER_CHANGE, DURING_COMMIT)
# A sweep's page of operations has been requested, its activity not yet completed: the restarted
# worker requests the page again.
SWEEP_PAGE_REQUESTED = "sweep-page-requested"


TEST_MODE = os.environ.get("KEYTURN_TEST_MODE") == "1"  # read once, when the process starts


def reach(name: str) -> None:
    if not TEST_MODE:
        return
    armed = os.environ.get("KEYTURN_FAILPOINTS", "")
    if not armed or name not in armed.split(","):
        return
    marker = Path(os.environ.get("KEYTURN_FAILPOINTS_DIR", ".")) / f"failpoint-{name}"
    try:
        marker.touch(exist_ok=False)
    except FileExistsError:
        return  # fired once already: let the restarted worker through
    os.kill(os.getpid(), signal.SIGKILL)
