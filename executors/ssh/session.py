"""Run parsed ssh steps on an open connection: the expect loop, fail patterns, the transcript.

Error classes follow the change protocol. Once a line carrying a secret has gone to the target
(a send:, or a command with a secret in it), a lost connection or a timeout no longer proves that
nothing changed, so it is OutcomeUnknown (the workflow probes) and never ConnectFailed, which
the change activity takes as "provably never reached the target".
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import asyncssh

from executors.base import (
    AuthenticationFailed,
    ChangeRejected,
    ConnectFailed,
    ExecutorError,
    LoginProgress,
    OutcomeUnknown,
    TemplateFailed,
    redact,
)
from executors.common import masked
from executors.redaction import redact_cut
from executors.ssh.script import (
    Step,
    compile_pattern,
    escape_for,
    parse_exit_status,
    parse_timeout,
)
from keyturn import failpoints
from templating import TemplateContext, TemplateSyntaxProblem, render

_T = TypeVar("_T")
_READ_SIZE = 65536
_TAIL = 300
_QUOTED_LINES = 3  # characters of output quoted in an error message
_CLOSE_WAIT = 5.0
_NOT_FOUND_STATUSES = (126, 127)  # the shell could not find or run the command
# A PTY for spawn: wide, so prompts are not wrapped; "dumb" so programs print no colour codes.
_TERM = "dumb"
_TERM_SIZE = (200, 50)
# Ask for untranslated messages, so English expect: patterns match. Targets whose sshd does not
# AcceptEnv LC_* ignore it silently.
_ENV = {"LC_ALL": "C"}
# A task's output is kept up to this many characters (what the store keeps of it); twice that is
# collected, so that redacting before the cut never leaves a piece of a secret at the cut.
OUTPUT_LIMIT = 1_000_000


class Transcript:
    """``$ command`` / ``< output`` / ``> sent`` lines; redacted once, as a whole, at the end.

    Redacting the whole text (not chunk by chunk) matters: a secret split across two reads would
    otherwise survive in two halves.
    """

    def __init__(self, secrets: tuple[str, ...]) -> None:
        self._secrets = secrets
        self._lines: list[str] = []
        self._partial = ""

    def note(self, text: str) -> None:
        self._flush()
        self._lines.append(text)

    def output(self, data: str) -> None:
        # PTYs end lines with \r\n; drop the \r so the transcript reads the same for exec and spawn.
        pieces = (self._partial + data.replace("\r", "")).split("\n")
        self._partial = pieces.pop()
        self._lines.extend(f"< {piece}" for piece in pieces)

    def _flush(self) -> None:
        if self._partial:
            self._lines.append(f"< {self._partial}")
            self._partial = ""

    def text(self) -> str:
        lines = [*self._lines, f"< {self._partial}"] if self._partial else self._lines
        return redact("\n".join(lines), self._secrets)


@dataclass(frozen=True)
class _FailPattern:
    step: Step
    regex: re.Pattern[str]
    error: type[ExecutorError]


class ScriptRunner:
    """Runs one template on one connection. One instance per run; not reusable."""

    def __init__(
        self,
        conn: asyncssh.SSHClientConnection,
        device: str,
        context: TemplateContext,
        secrets: tuple[str, ...],
        timeout: float,
    ) -> None:
        self._conn = conn
        self._device = device
        self._context = context
        self._masked_context = masked(context)
        self._secrets = secrets
        self._timeout = timeout
        self.transcript = Transcript(secrets)
        self._process: asyncssh.SSHClientProcess[str] | None = None
        self._pump: asyncio.Task[None] | None = None
        self._buffer = ""  # output since the previous expect: match
        self._ended = False  # stdout reached EOF (or the channel failed)
        self._lost: BaseException | None = None  # why reading stopped, if not a clean EOF
        self._changed = asyncio.Event()
        self._fails: list[_FailPattern] = []
        self._secret_sent = False
        self._output: list[str] = []  # every command's output, for a task's result
        self._output_size = 0
        self._output_cut = False  # output was dropped past the cap: it ends anywhere
        self._exited = False  # the running command's exit status was read (exit:)
        self.exit_status: int | None = None  # the last exit status read

    def output(self) -> str:
        """What the commands printed (stdout and stderr), redacted, then cut to OUTPUT_LIMIT."""
        text = "".join(self._output).replace("\r", "")
        # Collection stopped at a read's end, maybe inside a secret: that piece must go too.
        cleaned = redact_cut if self._output_cut else redact
        return cleaned(text, self._secrets)[:OUTPUT_LIMIT]

    async def run(self, steps: list[Step], wait_for_exit: bool = False) -> str:
        """Run the steps; ``wait_for_exit`` (a task): then wait for the last command to end
        (unless an exit: read its status already) and keep its exit status, whatever it is."""
        try:
            # Rendering is CPU work with a budget (templating.budget): off the event loop, every
            # step's in one trip (a trip a step cost more than most steps' rendering).
            arguments = await asyncio.to_thread(lambda: [self._render(step) for step in steps])
            for step, argument in zip(steps, arguments, strict=True):
                try:
                    await self._step(step, argument)
                except (asyncssh.Error, OSError) as exc:
                    raise self._lost_error(step, f"the connection failed: {exc}") from None
            if wait_for_exit and steps and self._process is not None and not self._exited:
                try:
                    # A command that reads its input gets its end rather than waiting for it.
                    with contextlib.suppress(Exception):
                        self._process.stdin.write_eof()
                    self.exit_status = await self._wait_for_exit(steps[-1])
                except (asyncssh.Error, OSError) as exc:
                    raise self._lost_error(steps[-1], f"the connection failed: {exc}") from None
        finally:
            await self._stop_process()
        return self.transcript.text()

    # -- steps -----------------------------------------------------------------------------

    async def _step(self, step: Step, argument: tuple[str, str] | Exception) -> None:
        # Rendered ahead; one that failed fails when the run reaches it, after the steps before.
        if isinstance(argument, TemplateSyntaxProblem):
            raise self._error(TemplateFailed, step, f"cannot render: {argument.message}")
        if isinstance(argument, Exception):
            raise argument  # what rendering raised that it does not name (as it did in place)
        value, shown = argument
        match step.directive:
            case "timeout":
                self._timeout = self._parsed(step, lambda: parse_timeout(value, step.line))
            case "exec" | "spawn":
                await self._start(step, value, shown)
            case "expect":
                await self._expect(step, self._pattern(step, value))
            case "fail" | "authfail":
                error = AuthenticationFailed if step.directive == "authfail" else ChangeRejected
                self._fails.append(_FailPattern(step, self._pattern(step, value), error))
            case "send":
                await self._send(step, value, shown)
            case "eof":
                self.transcript.note("> ^D")
                self._require_process(step).stdin.write_eof()
            case "exit":
                expected = self._parsed(step, lambda: parse_exit_status(value, step.line))
                await self._exit(step, expected)
            case _:  # parse_script only yields known directives
                raise self._error(TemplateFailed, step, f"unknown directive {step.directive!r}")

    async def _start(self, step: Step, command: str, shown: str) -> None:
        await self._stop_process()
        self._fails.clear()  # fail patterns belong to the process they were declared for
        self._buffer, self._ended, self._lost = "", False, None
        self._exited = False
        self.transcript.note(f"$ {shown}")
        if self._bears_secret(command, shown):
            self._secret_sent = True
        pty = step.directive == "spawn"
        try:
            async with asyncio.timeout(self._timeout):
                self._process = await self._conn.create_process(
                    command,
                    stderr=asyncssh.STDOUT,
                    encoding="utf-8",
                    errors="replace",  # a stray byte in some banner must not end the run
                    request_pty=pty,
                    term_type=_TERM if pty else None,
                    term_size=_TERM_SIZE if pty else None,
                    env=_ENV,
                )
        except TimeoutError:
            raise self._lost_error(step, "the session did not open in time") from None
        self._pump = asyncio.create_task(self._read_output(self._process))

    async def _read_output(self, process: asyncssh.SSHClientProcess[str]) -> None:
        # One reader for the whole process, so waiting with a timeout never cancels a read midway.
        try:
            while data := await process.stdout.read(_READ_SIZE):
                self._buffer += data
                if self._output_size < 2 * OUTPUT_LIMIT:
                    self._output.append(data)
                    self._output_size += len(data)
                else:
                    self._output_cut = True
                self.transcript.output(data)
                self._changed.set()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure of the channel ends the output the same way
            self._lost = exc
        finally:
            self._ended = True
            self._changed.set()

    async def _expect(self, step: Step, regex: re.Pattern[str]) -> None:
        self._require_process(step)
        deadline = asyncio.get_running_loop().time() + self._timeout
        while True:
            match = regex.search(self._buffer)
            self._check_fails(step, before=match.start() if match else None)
            if match:
                self._buffer = self._buffer[match.end() :]
                return
            if self._ended:
                raise self._ended_error(step, f"output ended before {step.argument!r} appeared")
            if not await self._wait_for_output(deadline):
                raise self._timeout_error(
                    step, f"no output matched {step.argument!r} within {self._timeout:g}s"
                )

    async def _send(self, step: Step, text: str, shown: str) -> None:
        process = self._require_process(step)
        if self._bears_secret(text, shown):
            # Set before writing: once the bytes may be on the wire, the outcome is uncertain.
            self._secret_sent = True
        self.transcript.note(f"> {shown}")
        process.stdin.write(text + "\n")
        try:
            async with asyncio.timeout(self._timeout):
                await process.stdin.drain()
        except TimeoutError:
            raise self._timeout_error(step, "the target stopped reading input") from None
        if self._context.new_password and self._context.new_password in text:
            failpoints.reach(failpoints.CHANGE_SENT)  # the new secret is on the wire

    async def _exit(self, step: Step, expected: int) -> None:
        status = await self._wait_for_exit(step)
        if status != expected:
            cause = f"the command exited with status {status}, expected {expected}"
            error = TemplateFailed if status in _NOT_FOUND_STATUSES else ChangeRejected
            raise self._error(error, step, f"{cause}; last output: {self._tail()!r}")

    async def _wait_for_exit(self, step: Step) -> int:
        """Wait for the running command to end; its exit status (fail: patterns checked)."""
        process = self._require_process(step)
        deadline = asyncio.get_running_loop().time() + self._timeout
        while not self._ended:
            if not await self._wait_for_output(deadline):
                self._check_fails(step, before=None)
                raise self._timeout_error(
                    step, f"the command did not exit within {self._timeout:g}s"
                )
        self._check_fails(step, before=None)
        remaining = max(deadline - asyncio.get_running_loop().time(), 0.1)
        try:
            async with asyncio.timeout(remaining):
                await process.wait_closed()
        except TimeoutError:
            raise self._timeout_error(step, "the command did not report its exit status") from None
        status = process.exit_status
        if self._lost is None and process.exit_signal is not None:
            signal = process.exit_signal[0]
            raise self._ended_error(step, f"the command was killed by signal {signal}")
        if self._lost is not None or status is None or status < 0:
            raise self._ended_error(step, "the command ended without an exit status")
        self.transcript.note(f"= exit {status}")
        self._exited = True
        self.exit_status = status
        return status

    # -- helpers ---------------------------------------------------------------------------

    async def _wait_for_output(self, deadline: float) -> bool:
        """Wait for more output (or its end) until ``deadline``; False when the time is up."""
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            return False
        self._changed.clear()
        try:
            async with asyncio.timeout(remaining):
                await self._changed.wait()
        except TimeoutError:
            return False
        return True

    def _check_fails(self, step: Step, before: int | None) -> None:
        """Raise for the earliest fail pattern matching before ``before`` (anywhere if None)."""
        hits = [
            (match.start(), fail, match)
            for fail in self._fails
            if (match := fail.regex.search(self._buffer))
            and (before is None or match.start() < before)
        ]
        if not hits:
            return
        _, fail, match = min(hits, key=lambda hit: hit[0])
        # Quote whole output lines up to the match, not the bare match: the reason is often on the
        # line before a re-prompt, and a secret (never spanning lines) is redacted whole.
        end = self._buffer.find("\n", match.end())
        lines = self._buffer[: end if end >= 0 else len(self._buffer)].splitlines()
        said = " / ".join([line.strip() for line in lines if line.strip()][-_QUOTED_LINES:])
        said = redact(said, self._secrets)  # before repr(), which would make new forms of it
        waiting = f" while running {step.label}" if step is not fail.step else ""
        raise self._error(
            fail.error,
            fail.step,
            f"the target said {said!r}{waiting}",
        )

    def _render(self, step: Step) -> tuple[str, str] | Exception:
        """The argument as sent, and as shown in the transcript (secrets masked); or why it
        cannot be rendered."""
        if not step.argument:
            return "", ""
        escape = escape_for(step.directive)
        try:
            value = render(step.argument, self._context, line=step.line, escape=escape)
        except Exception as exc:  # raised by the step, in its turn
            return exc
        try:
            shown = render(step.argument, self._masked_context, line=step.line, escape=escape)
        except TemplateSyntaxProblem:
            # The mask broke the template (e.g. an index into the password): show nothing of it.
            shown = "(line with a secret, not shown)"
        return value, shown

    def _pattern(self, step: Step, value: str) -> re.Pattern[str]:
        return self._parsed(step, lambda: compile_pattern(value, step.line))

    def _parsed(self, step: Step, parse: Callable[[], _T]) -> _T:
        """Check a rendered argument (regex, number) that could not be checked before rendering."""
        try:
            return parse()
        except TemplateSyntaxProblem as exc:
            raise self._error(TemplateFailed, step, exc.message) from None

    def _bears_secret(self, value: str, shown: str) -> bool:
        return value != shown or any(secret in value for secret in self._secrets if secret)

    def _require_process(self, step: Step) -> asyncssh.SSHClientProcess[str]:
        if self._process is None:
            raise self._error(TemplateFailed, step, "no command is running (add exec: or spawn:)")
        return self._process

    async def _stop_process(self) -> None:
        process, pump = self._process, self._pump
        self._process = self._pump = None
        if process is not None:
            process.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(_CLOSE_WAIT):
                    await process.wait_closed()
        if pump is not None:
            pump.cancel()
            with contextlib.suppress(BaseException):
                await pump

    def _tail(self) -> str:
        # Redact before cutting, so the cut can never leave a piece of a secret unredacted.
        return redact(self._buffer.replace("\r", ""), self._secrets)[-_TAIL:]

    # -- errors ----------------------------------------------------------------------------

    def _error(self, cls: type[ExecutorError], step: Step, cause: str) -> ExecutorError:
        return cls(
            device=self._device,
            step=step.label,
            cause=redact(cause, self._secrets),
            transcript=self.transcript.text(),
            # The script runs on a logged-in connection: the login was accepted. An authfail:
            # pattern is a later refusal of a password (sudo, passwd), which keeps its charge.
            login=None if issubclass(cls, AuthenticationFailed) else LoginProgress.ACCEPTED,
        )

    def _timeout_error(self, step: Step, cause: str) -> ExecutorError:
        cause = f"{cause}; last output: {self._tail()!r}"
        if self._secret_sent:
            return self._unknown(step, cause)
        return self._error(
            TemplateFailed,
            step,
            f"{cause}. Check the pattern against what the target prints, or raise timeout:",
        )

    def _ended_error(self, step: Step, cause: str) -> ExecutorError:
        if self._lost is not None:
            return self._lost_error(step, f"{cause}: {self._lost}")
        cause = f"{cause}; last output: {self._tail()!r}"
        if self._secret_sent:
            return self._unknown(step, cause)
        return self._error(TemplateFailed, step, cause)

    def _lost_error(self, step: Step, cause: str) -> ExecutorError:
        if self._secret_sent:
            return self._unknown(step, cause)
        return self._error(
            ConnectFailed, step, f"{cause} (nothing secret had been sent; safe to retry)"
        )

    def _unknown(self, step: Step, cause: str) -> ExecutorError:
        return self._error(
            OutcomeUnknown,
            step,
            f"{cause}; a secret had already been sent, so the change may have happened: "
            "probe which secret logs in",
        )
