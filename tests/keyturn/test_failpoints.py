"""Failpoints fire only in a process started with KEYTURN_TEST_MODE=1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REACH = "from keyturn import failpoints; failpoints.reach('after-change'); print('survived')"


@pytest.mark.parametrize(("test_mode", "killed"), [(None, False), ("0", False), ("1", True)])
def test_a_failpoint_fires_only_in_test_mode(
    tmp_path: Path, test_mode: str | None, killed: bool
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYTURN_")}
    env.update(KEYTURN_FAILPOINTS="after-change", KEYTURN_FAILPOINTS_DIR=str(tmp_path))
    if test_mode is not None:
        env["KEYTURN_TEST_MODE"] = test_mode
    done = subprocess.run(
        [sys.executable, "-c", REACH], env=env, capture_output=True, text=True, check=False
    )
    if killed:
        assert done.returncode == -9 and "survived" not in done.stdout
        assert (tmp_path / "failpoint-after-change").exists()
    else:
        assert done.returncode == 0 and "survived" in done.stdout, done.stderr
        assert not (tmp_path / "failpoint-after-change").exists()
