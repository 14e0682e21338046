"""A fresh Python process running a short program from the repository's root: for what only a
new interpreter shows (which modules an import brings in, how logging ends up configured)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_python(program: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``program`` run by this interpreter with ``args`` in ``sys.argv[1:]``; raises if it
    fails."""
    return subprocess.run(
        [sys.executable, "-c", program, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
