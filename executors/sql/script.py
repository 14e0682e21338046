"""The SQL executors' template language, and the loop that runs it on an open session.

A template is SQL statements, each ending with ``;`` at the end of a line (a statement may span
lines). Lines starting with ``--`` are comments, except ``-- expect: <regex>`` right after a
statement: the first column of its first row must match the regex in full. Tags in an expect:
line are escaped for a regex automatically (``{{ username }}`` matches itself literally).

The template is split into statements on its *source*, before any tag is rendered, and each
statement is rendered on its own afterwards: a password containing ``;`` (or a newline, or
``--``) lands inside one escaped literal and can never split or end a statement.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from abc import ABC, abstractmethod
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import ClassVar, Generic, Literal, Protocol, TypeVar

from executors.base import (
    Account,
    AuthenticationFailed,
    ChangeRejected,
    ConnectFailed,
    ExecutorError,
    LoginProgress,
    LoginRequest,
    LoginResult,
    OutcomeUnknown,
    RunRequest,
    RunResult,
    Target,
    TemplateFailed,
    check_target,
    redact,
)
from executors.common import masked, parse_template, request_secrets, verify_template
from templating import TemplateContext, TemplateSyntaxProblem, check_syntax, escaping, render
from templating.escaping import Escape

SYNTAX = (
    "SQL statements, each ending with ';' at the end of a line; '--' comment lines; "
    "'-- expect: regex' after a statement checks its first value; tags like {{ new_password }} "
    "are escaped as SQL literals automatically ({{ username | sql_ident }} for an identifier)"
)

_TAG_MARKERS = ("{{", "{%", "{#", "[#")
_EXPECT = re.compile(r"^--\s*expect:\s?(.*)$")
_SHOWN_VALUE = 200  # characters of a returned value shown in the transcript / an error


@dataclass(frozen=True)
class Statement:
    line: int  # 1-based line of the statement's first line in the template
    text: str  # template source, without the final ';': rendered only when it runs
    expect: str | None = None  # regex template source from '-- expect:', if any
    expect_line: int | None = None

    @property
    def label(self) -> str:
        return f"line {self.line} (statement)"


def has_tags(text: str) -> bool:
    return any(marker in text for marker in _TAG_MARKERS)


def parse_script(text: str) -> list[Statement]:
    """Split a template into statements. Pure: nothing is rendered."""
    statements: list[Statement] = []
    buffer: list[str] = []
    first = 0
    # Split on "\n" only, as Jinja counts lines, so error line numbers stay true.
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.rstrip("\r")
        stripped = line.strip()
        if stripped.startswith("--"):
            expect = _EXPECT.match(stripped)
            if expect is not None:
                _attach_expect(statements, bool(buffer), expect.group(1).strip(), number)
            continue  # a comment, inside a statement or between them
        if not buffer:
            if not stripped:
                continue
            first = number
        buffer.append(line)
        if stripped.endswith(";"):
            body = "\n".join(buffer).rstrip()[:-1]
            if not body.strip():
                raise TemplateSyntaxProblem("empty statement (a lone ';')", first)
            statements.append(Statement(first, body))
            buffer = []
    if buffer:
        raise TemplateSyntaxProblem(
            "this statement does not end with ';' at the end of a line (a trailing '-- comment' "
            "after the ';' is not allowed either)",
            first,
        )
    return statements


def _attach_expect(statements: list[Statement], inside: bool, pattern: str, line: int) -> None:
    if inside:
        raise TemplateSyntaxProblem(
            "expect: inside a statement; end the statement with ';' first", line
        )
    if not statements:
        raise TemplateSyntaxProblem("expect: before any statement; it checks the one above", line)
    if statements[-1].expect is not None:
        raise TemplateSyntaxProblem("only one expect: per statement", line)
    if not pattern:
        raise TemplateSyntaxProblem("expect: needs a regular expression", line)
    statements[-1] = dataclasses.replace(statements[-1], expect=pattern, expect_line=line)


def validate_script(text: str, literal: str = "sql_literal") -> list[Statement]:
    """Parse and check everything that can be checked before the tags are known. ``literal``:
    the context statements are escaped for (the driver's literal escape)."""
    statements = parse_script(text)
    if not statements:
        raise TemplateSyntaxProblem("the template runs no statement", None)
    for statement in statements:
        if has_tags(statement.text):
            check_syntax(statement.text, first_line=statement.line, context=literal)
        if statement.expect is not None and statement.expect_line is not None:
            if has_tags(statement.expect):
                check_syntax(statement.expect, first_line=statement.expect_line, context="regex")
            else:
                compile_expect(statement.expect, statement.expect_line)
    return statements


def compile_expect(pattern: str, line: int) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise TemplateSyntaxProblem(f"invalid regular expression: {exc}", line) from None


# -- running --------------------------------------------------------------------------------

FailureKind = Literal["lost", "template", "rejected"]


class StatementFailure(Exception):
    """A driver error, classified by the session: ``lost`` (connection lost, timeout, transient
    server state: the statement may or may not have run), ``template`` (the SQL is wrong for this
    server), ``rejected`` (the server ran it and said no: privileges, password rules)."""

    def __init__(self, kind: FailureKind, message: str) -> None:
        self.kind = kind
        self.message = message
        super().__init__(message)


@dataclass(frozen=True)
class StatementResult:
    status: str  # the server's command tag or a row count, for the transcript
    first_value: str | None  # first column of the first row, if the statement returned rows


class SqlSession(Protocol):
    """One logged-in connection, as the runner needs it. Drivers raise StatementFailure."""

    async def escape(self) -> Escape:
        """The context escape for literals on this session, right now."""

    async def execute(self, sql: str) -> StatementResult: ...


class StatementRunner:
    """Runs parsed statements on one session. ``verify`` runs are checks: a server error there
    is a template problem, never a rejected change."""

    def __init__(
        self,
        session: SqlSession,
        device: str,
        context: TemplateContext,
        secrets: tuple[str, ...],
        verify: bool = False,
    ) -> None:
        self._session = session
        self._device = device
        self._context = context
        self._masked = masked(context)
        self._secrets = secrets
        self._verify = verify
        self._lines: list[str] = []
        self._secret_sent = False
        self._values: list[str] = []  # each statement's first value: a task's output

    def transcript(self) -> str:
        return redact("\n".join(self._lines), self._secrets)

    def output(self) -> str:
        """A task's output: the first value each statement returned, one per line, redacted."""
        return redact("\n".join(self._values), self._secrets)

    async def run(self, statements: list[Statement]) -> str:
        for statement in statements:
            try:
                value, shown = await self._render(statement)  # may ask the session (escaping)
            except StatementFailure as failure:
                raise self._failed(statement, failure) from None
            if value != shown or any(secret in value for secret in self._secrets):
                # Set before sending: once the bytes may be on the wire, the outcome is uncertain.
                self._secret_sent = True
            self._lines.append(f"> {shown};")
            try:
                result = await self._session.execute(value)
            except StatementFailure as failure:
                raise self._failed(statement, failure) from None
            self._lines.append(f"< {result.status}")
            if result.first_value is not None:
                self._lines.append(f"< {self._shown(result.first_value)}")
                self._values.append(result.first_value)
            if statement.expect is not None:
                await asyncio.to_thread(self._check_expect, statement, result)  # renders
        return self.transcript()

    async def _render(self, statement: Statement) -> tuple[str, str]:
        if not has_tags(statement.text):
            return statement.text, statement.text
        escape = await self._session.escape()
        # Rendering is CPU work with a budget (templating.budget): off the event loop.
        return await asyncio.to_thread(self._render_with, statement, escape)

    def _render_with(self, statement: Statement, escape: Escape) -> tuple[str, str]:
        try:
            value = render(statement.text, self._context, line=statement.line, escape=escape)
        except TemplateSyntaxProblem as exc:
            raise self._error(TemplateFailed, statement.label, f"cannot render: {exc}") from None
        try:
            shown = render(statement.text, self._masked, line=statement.line, escape=escape)
        except TemplateSyntaxProblem:
            shown = "(statement with a secret, not shown)"  # the mask broke it (e.g. an index)
        return value, shown

    def _check_expect(self, statement: Statement, result: StatementResult) -> None:
        assert statement.expect is not None and statement.expect_line is not None
        label = f"line {statement.expect_line} (expect)"
        try:
            source = render(
                statement.expect, self._context, line=statement.expect_line, escape=escaping.regex
            )
            pattern = compile_expect(source, statement.expect_line)
        except TemplateSyntaxProblem as exc:
            raise self._error(TemplateFailed, label, f"cannot render: {exc}") from None
        got = result.first_value
        if got is None or pattern.fullmatch(got) is None:
            said = "no row" if got is None else repr(self._shown(got))
            raise self._error(
                TemplateFailed,
                label,
                f"the statement on line {statement.line} returned {said}, which does not match "
                f"{pattern.pattern!r}: the session is not what the template expects",
            )

    def _shown(self, value: str) -> str:
        """A returned value as quoted: redacted before it is cut, so no piece of a secret
        survives the cut."""
        return redact(value, self._secrets)[:_SHOWN_VALUE]

    def _failed(self, statement: Statement, failure: StatementFailure) -> ExecutorError:
        said = f"the server said: {failure.message}"
        if failure.kind == "lost":
            if self._secret_sent:
                return self._error(
                    OutcomeUnknown,
                    statement.label,
                    f"{said}; a statement carrying a secret had been sent, so the change may "
                    "have happened: probe which secret logs in",
                )
            return self._error(
                ConnectFailed,
                statement.label,
                f"{said} (nothing secret had been sent; safe to retry)",
            )
        if failure.kind == "template" or self._verify:
            return self._error(
                TemplateFailed,
                statement.label,
                f"{said}; fix the statement (see the transcript) for this server",
            )
        return self._error(
            ChangeRejected,
            statement.label,
            f"{said}; check the account's privileges and the server's password rules",
        )

    def _error(self, cls: type[ExecutorError], step: str, cause: str) -> ExecutorError:
        # Statements run on a logged-in session: whatever fails, the login was accepted.
        return cls(
            self._device,
            step,
            redact(cause, self._secrets),
            self.transcript(),
            login=LoginProgress.ACCEPTED,
        )


# -- the executor ---------------------------------------------------------------------------

Connection = TypeVar("Connection")


class SqlExecutor(ABC, Generic[Connection]):
    """run and check_login of the SQL executors, which differ only in their driver: how a
    connection opens (raising AuthenticationFailed for a refused login, and setting
    ExecutorError.login on every other failure from what the driver saw), closes, and becomes
    a session the StatementRunner can drive."""

    syntax: ClassVar[str] = SYNTAX

    # The context statements are escaped for: the driver's literal escape.
    literal_context: ClassVar[str] = "sql_literal"

    def validate(self, template: str) -> None:
        validate_script(template, self.literal_context)

    def check_target(self, target: Target) -> None:
        """ConfigurationError for device options the driver cannot use (base.check_target)."""

    def _validate(self, template: str) -> list[Statement]:
        return validate_script(template, self.literal_context)

    async def run(self, request: RunRequest) -> RunResult:
        check_target(self, request.target)  # options and transport, before anything
        statements = parse_template(request.target, request.template, self._validate)
        secrets = request_secrets(request.context, request.account)
        conn = await self._connect(request.target, request.account, secrets)
        async with self._closing(conn):
            runner = self._runner(conn, request.target, request.context, secrets)
            transcript = await runner.run(statements)
        if not request.task:
            return RunResult(transcript=transcript)
        # Every statement ran (a failing one raises): the task ends as a command exiting 0.
        return RunResult(transcript=transcript, output=runner.output(), exit_status=0)

    async def check_login(self, request: LoginRequest) -> LoginResult:
        check_target(self, request.target)  # options and transport, before anything
        verify = verify_template(request, self._validate)
        secrets = request_secrets(request.context, request.account)
        try:
            conn = await self._connect(request.target, request.account, secrets)
        except AuthenticationFailed as exc:
            if exc.login is not LoginProgress.REFUSED:
                raise
            return LoginResult(ok=False)
        async with self._closing(conn):
            transcript = ""
            if verify is not None:
                statements, context = verify
                transcript = await self._run(
                    conn, request.target, context, secrets, statements, verify=True
                )
        return LoginResult(ok=True, transcript=transcript)

    async def _run(
        self,
        conn: Connection,
        target: Target,
        context: TemplateContext,
        secrets: tuple[str, ...],
        statements: list[Statement],
        verify: bool = False,
    ) -> str:
        return await self._runner(conn, target, context, secrets, verify).run(statements)

    def _runner(
        self,
        conn: Connection,
        target: Target,
        context: TemplateContext,
        secrets: tuple[str, ...],
        verify: bool = False,
    ) -> StatementRunner:
        session = self._session(conn, target)
        context = self._context(target, context)
        return StatementRunner(session, target.name, context, secrets, verify=verify)

    def _context(self, target: Target, context: TemplateContext) -> TemplateContext:
        """The context the statements render in; a driver may add values of its own."""
        return context

    @abstractmethod
    async def _connect(
        self, target: Target, account: Account, secrets: tuple[str, ...]
    ) -> Connection: ...

    @abstractmethod
    def _closing(self, conn: Connection) -> AbstractAsyncContextManager[Connection]: ...

    @abstractmethod
    def _session(self, conn: Connection, target: Target) -> SqlSession: ...
