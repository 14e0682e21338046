"""A rendering budget: how long a template may render and how much text it may produce.

A template is code an administrator saves; a loop or a repeated string in it could otherwise
hold a worker's thread for ever or fill its memory. The sandbox already refuses unsafe attribute
access and ranges of more than 100 000 items; this adds a deadline, checked on every loop step
over ``range()`` and every piece of output, and a cap on the output, checked before ``*`` and
``**`` build a value as well as on the output itself. A loop that neither uses ``range()`` nor
writes anything (nested loops over a long string) is stopped by ``watchdog``: a timer that raises
BudgetExceeded in the rendering thread at the deadline.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment, safe_range

MAX_SECONDS = 2.0
MAX_OUTPUT = 1_000_000  # characters: far above any real statement, script or request body
_MAX_POWER_BITS = 1_000_000


class BudgetExceeded(ValueError):
    """Rendering took too long or produced too much."""


@dataclass
class Budget:
    deadline: float  # time.monotonic() by which rendering must end
    output: int = MAX_OUTPUT

    @classmethod
    def start(cls, seconds: float = MAX_SECONDS, output: int = MAX_OUTPUT) -> Budget:
        return cls(time.monotonic() + seconds, output)

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise BudgetExceeded("rendering took longer than its budget: simplify the template")

    def check_size(self, size: int) -> None:
        if size > self.output:
            raise BudgetExceeded(
                f"rendering would produce more than {self.output} characters: simplify the template"
            )


# The budget of the rendering running in this thread (or task); None outside render().
CURRENT: ContextVar[Budget | None] = ContextVar("keyturn_render_budget", default=None)


def _current() -> Budget:
    budget = CURRENT.get()
    return budget if budget is not None else Budget.start()


class _Watch:
    """One watched block: the thread to interrupt, its deadline, and whether it still runs."""

    def __init__(self, thread_id: int, deadline: float) -> None:
        self.thread = ctypes.c_ulong(thread_id)
        self.deadline = deadline
        self.lock = threading.Lock()
        self.running = True
        self.fired = False

    def fire(self) -> None:
        with self.lock:
            if self.running:
                self.fired = True
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    self.thread, ctypes.py_object(BudgetExceeded)
                )

    def end(self) -> None:
        with self.lock:
            self.running = False
        if self.fired:  # withdraw it if it has not been delivered yet
            ctypes.pythonapi.PyThreadState_SetAsyncExc(self.thread, None)


class _Watchdog:
    """One thread for the whole process that fires each watch at its deadline. A thread (or a
    timer) per rendering cost more than many renderings themselves."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._watches: set[_Watch] = set()
        self._thread: threading.Thread | None = None

    def add(self, watch: _Watch) -> None:
        with self._changed:
            self._watches.add(watch)
            if self._thread is None or not self._thread.is_alive():  # also after a fork
                self._thread = threading.Thread(
                    target=self._run, name="keyturn-render-watchdog", daemon=True
                )
                self._thread.start()
            self._changed.notify()

    def remove(self, watch: _Watch) -> None:
        with self._changed:
            self._watches.discard(watch)

    def _run(self) -> None:
        while True:
            with self._changed:
                now = time.monotonic()
                due = [w for w in self._watches if w.deadline <= now]
                self._watches.difference_update(due)
                if not due:
                    earliest = min((w.deadline for w in self._watches), default=None)
                    self._changed.wait(None if earliest is None else earliest - now)
            for watch in due:
                watch.fire()


_WATCHDOG = _Watchdog()


@contextlib.contextmanager
def watchdog(budget: Budget) -> Iterator[None]:
    """Raise BudgetExceeded in this thread if the block is still running at the deadline.

    CPython delivers the exception at the thread's next bytecode, which covers every loop a
    template can write (it is compiled to Python code). A pending exception not yet delivered
    when the block ends is withdrawn, so none ever escapes past the block.
    """
    watch = _Watch(threading.get_ident(), budget.deadline)
    _WATCHDOG.add(watch)
    try:
        yield
    finally:
        watch.end()
        _WATCHDOG.remove(watch)


def budgeted_range(*args: int) -> Iterator[int]:
    """The sandbox's range, checking the deadline on every step of a loop over it."""
    budget = _current()
    for value in safe_range(*args):
        budget.check_time()
        yield value


class BudgetedEnvironment(SandboxedEnvironment):
    """The sandbox, with ``*`` and ``**`` checked against the budget before they compute."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        budget = _current()
        if operator == "*":
            for sequence, count in ((left, right), (right, left)):
                if isinstance(sequence, str | list | tuple) and isinstance(count, int):
                    budget.check_size(len(sequence) * count)
        elif (
            operator == "**"
            and isinstance(left, int)
            and isinstance(right, int)
            and right > 0
            and abs(left).bit_length() * right > _MAX_POWER_BITS
        ):
            raise BudgetExceeded(f"{left} ** {right} is too large a number to compute")
        return super().call_binop(context, operator, left, right)
