"""``keyturn dev`` as a user runs it: the real command in a subprocess, on free ports, with its own
data directory, reached over real sockets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers.ports import free_port

READY = "Press Ctrl-C to stop."
STOP_TIMEOUT = 60.0  # seconds from SIGINT to exit; the workers' graceful shutdown takes up to 30


@pytest.fixture
def dev_env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "KEYTURN_DATA_DIR": str(tmp_path / "var"),
        "KEYTURN_TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}",
        "KEYTURN_TEMPORAL_UI_PORT": str(free_port()),
        "KEYTURN_API_PORT": str(free_port()),
    }


class DevStack:
    """``keyturn dev`` started and ready (it printed READY). Its output, stdout and stderr, is read
    all along into ``output``: a pipe nobody drains would block the stack once its logs fill it."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        keyturn = Path(sys.executable).parent / "keyturn"
        self.process = subprocess.Popen(
            [str(keyturn), "dev"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.output: list[str] = []
        assert self.process.stdout is not None
        for line in self.process.stdout:  # blocks until the stack says it is ready (or exits)
            self.output.append(line)
            if READY in line:
                break
        assert any(READY in line for line in self.output), "".join(self.output)
        self._drain = threading.Thread(target=self._read_rest, daemon=True)
        self._drain.start()

    def _read_rest(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.env['KEYTURN_API_PORT']}"

    @property
    def token(self) -> str:
        return (Path(self.env["KEYTURN_DATA_DIR"]) / "admin.token").read_text().strip()

    def interrupt(self) -> None:
        """What Ctrl-C does to ``keyturn dev`` (to it alone, not to its Temporal dev server)."""
        self.process.send_signal(signal.SIGINT)

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        return self.process.wait(timeout=timeout)

    def stop(self) -> int:
        self.interrupt()
        return self.wait()

    def output_tail(self, lines: int = 60) -> str:
        return "".join(self.output[-lines:])


@pytest.fixture
def start_dev(dev_env: dict[str, str]) -> Iterator[type[DevStack]]:
    started: list[DevStack] = []

    class Tracked(DevStack):
        def __init__(self, env: dict[str, str]) -> None:
            super().__init__(env)
            started.append(self)

    yield Tracked
    for number, stack in enumerate(started):
        if stack.process.poll() is None:
            stack.process.kill()
            stack.process.wait()
        stack._drain.join(timeout=10)
        # Kept with the test's tmp_path (pytest keeps the last few) to read after a failure.
        log = Path(dev_env["KEYTURN_DATA_DIR"]).parent / f"keyturn-dev-{number}.log"
        log.write_text("".join(stack.output))
