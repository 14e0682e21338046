"""The winrm executor: run a PowerShell script on a Windows host over WS-Management (pywinrm).

A template is a PowerShell script. Every ``{{ tag }}`` becomes a single-quoted PowerShell string
literal (``templating.escaping.powershell``), so no value can change the script's structure.

Where the script travels matters: a process command line is visible to every user of the target
host (Task Manager, ``Get-CimInstance Win32_Process``, process-creation audit events 4688), and
``-EncodedCommand`` is only base64, not encryption. So by default (``script_transfer: "stdin"``)
the command line carries a fixed bootstrap with no secret in it, and the script itself goes
through the WS-Man Send operation to the process's stdin (as Ansible's winrm connection does),
base64 of UTF-8 so no console code page can mangle a character. ``script_transfer:
"encoded-command"`` puts the whole script on the command line instead: simpler, but the secrets
are then readable in the host's process listing while the command runs; use it only for targets
whose WinRM endpoint cannot pipe stdin.

pywinrm blocks, so every session runs in a worker thread (asyncio.to_thread).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import math
import re
import ssl
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast

import requests
from requests.auth import HTTPBasicAuth
from urllib3.exceptions import NewConnectionError
from winrm.exceptions import (
    InvalidCredentialsError,
    WinRMError,
    WinRMOperationTimeoutError,
    WinRMTransportError,
    WSManFaultError,
)
from winrm.protocol import Protocol

from executors.base import (
    Account,
    AuthenticationFailed,
    ChangeRejected,
    ConfigurationError,
    ConnectFailed,
    ExecutorError,
    HostKeyMismatch,
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
from executors.common import masked, request_secrets, verify_template
from templating import TemplateContext, TemplateSyntaxProblem, check_syntax, escaping, render

SYNTAX = (
    "a PowerShell script; tags like {{ new_password }} or [#NEW_PASSWORD#] become single-quoted "
    "PowerShell string literals; errors stop the script ($ErrorActionPreference = 'Stop') and a "
    "non-zero exit status fails the step"
)

TRANSPORTS = ("ntlm", "basic", "kerberos", "credssp")
SCHEMES = ("https", "http")
SCRIPT_TRANSFERS = ("stdin", "encoded-command")
_OPTIONS = frozenset({"transport", "scheme", "path", "verify_tls", "ca_file", "script_transfer"})
_HTTP_PORT = 5985

# One line, so PowerShell's "At line:N" counts are off by exactly one against the template.
PREAMBLE = "$ErrorActionPreference = 'Stop'; $ProgressPreference = 'SilentlyContinue'"
# The fixed command-line part in stdin mode: reads base64 (UTF-8 script) from stdin, runs it.
# It carries no secret, so the process listing shows nothing worth stealing.
BOOTSTRAP = "\n".join(
    [
        "$ErrorActionPreference = 'Stop'",
        "$keyturnScript = $input | Out-String",
        "$keyturnScript = [Text.Encoding]::UTF8.GetString("
        "[Convert]::FromBase64String($keyturnScript.Trim()))",
        "& ([ScriptBlock]::Create($keyturnScript))",
    ]
)
POWERSHELL = "powershell.exe"
POWERSHELL_ARGS = ("-NoProfile", "-NonInteractive", "-ExecutionPolicy", "Bypass")
_UTF8_CODEPAGE = 65001
# cmd.exe (which WinRS runs the command through) refuses command lines over 8191 characters.
_MAX_COMMAND_LINE = 8000
_HTTP_READ_MARGIN = 5  # a Receive may legitimately block for the whole OperationTimeout
_QUOTED_ERROR = 600
_CLIXML_HEADER = "#< CLIXML"
_CLIXML_ESCAPE = re.compile(r"_x([0-9A-Fa-f]{4})_")
# Errors that mean the script (not the new secret) is at fault.
_SCRIPT_FAULTS = re.compile(
    r"CommandNotFoundException|ParseException|ParserError|is not recognized as the name of"
)


@dataclass(frozen=True)
class Options:
    """A device's winrm settings (``options`` in the inventory), checked before connecting."""

    transport: str = "ntlm"
    scheme: str = "https"
    path: str = "/wsman"
    verify_tls: bool = True
    ca_file: str | None = None
    script_transfer: str = "stdin"

    @classmethod
    def parse(cls, target: Target) -> Options:
        raw = dict(target.options)
        unknown = sorted(set(raw) - _OPTIONS)
        if unknown:
            known = ", ".join(sorted(_OPTIONS))
            raise _options_error(target, f"unknown option(s) {', '.join(unknown)} (known: {known})")
        try:
            options = cls(**raw)
        except TypeError as exc:
            raise _options_error(target, f"bad options ({exc})") from None
        for name, allowed in (
            ("transport", TRANSPORTS),
            ("scheme", SCHEMES),
            ("script_transfer", SCRIPT_TRANSFERS),
        ):
            if getattr(options, name) not in allowed:
                raise _options_error(
                    target, f"{name} must be one of {', '.join(allowed)}, not {raw[name]!r}"
                )
        if not isinstance(options.path, str) or not options.path.startswith("/"):
            raise _options_error(target, f"path must start with '/', not {options.path!r}")
        if not isinstance(options.verify_tls, bool):
            raise _options_error(target, "verify_tls must be true or false")
        if options.ca_file is not None and not isinstance(options.ca_file, str):
            raise _options_error(target, "ca_file must be the path of a PEM bundle")
        return options

    def endpoint(self, target: Target) -> str:
        host = f"[{target.address}]" if ":" in target.address else target.address
        return f"{self.scheme}://{host}:{target.port}{self.path}"


def _options_error(target: Target, cause: str) -> ConfigurationError:
    return ConfigurationError(
        target.name, "device options", f"device {target.name!r}: {cause}; fix the device's options"
    )


class WinrmExecutor:
    name: ClassVar[str] = "winrm"
    syntax: ClassVar[str] = SYNTAX
    default_templates: ClassVar[dict[str, str]] = {
        "change": "winrm/local-account-self",
        "change-as-admin": "winrm/local-account",
        "verify": "winrm/verify-login",
    }
    # WinRM over HTTPS. A device with options.scheme "http" must give its port (5985).
    default_port: ClassVar[int] = 5986
    http_port: ClassVar[int] = _HTTP_PORT

    def validate(self, template: str) -> None:
        validate_script(template)

    def insecure_transport(self, target: Target) -> str | None:
        options = Options.parse(target)
        if options.scheme == "http" and options.transport == "basic":
            # NTLM, Kerberos and CredSSP encrypt messages over http; Basic sends them as is.
            return "transport 'basic' over http sends the password and the script in clear"
        if options.scheme == "https" and not options.verify_tls:
            return "verify_tls is false: the server's certificate is not checked"
        return None

    def check_target(self, target: Target) -> None:
        # The options, and whether pywinrm can use them (a transport's library missing, say):
        # building the protocol object sends nothing.
        options = Options.parse(target)
        _Session(target, options, Account("keyturn-check", ""), ())._protocol()

    async def run(self, request: RunRequest) -> RunResult:
        check_target(self, request.target)  # options and transport, before anything
        options = Options.parse(request.target)
        # Rendering is CPU work with a budget (templating.budget): off the event loop.
        script = await asyncio.to_thread(
            Script.render, request.target, request.template, request.context
        )
        secrets = _secrets(request.context, request.account)
        session = _Session(request.target, options, request.account, secrets)
        outcome = await asyncio.to_thread(session.run, script)
        if outcome.status != 0:
            raise session.script_error(ChangeRejected, outcome)
        return RunResult(transcript=outcome.transcript)

    async def check_login(self, request: LoginRequest) -> LoginResult:
        check_target(self, request.target)  # options and transport, before anything
        options = Options.parse(request.target)
        # Not parsed by verify_template (str keeps it as is): Script.render checks and renders
        # it in one go, with the context.
        verify = verify_template(request, str)
        script = (
            await asyncio.to_thread(Script.render, request.target, *verify)
            if verify is not None
            else None
        )
        secrets = _secrets(request.context, request.account)
        session = _Session(request.target, options, request.account, secrets)
        try:
            if script is None:
                await asyncio.to_thread(session.login)
                return LoginResult(ok=True)
            outcome = await asyncio.to_thread(session.run, script)
        except AuthenticationFailed as exc:
            if exc.login is not LoginProgress.REFUSED:
                raise
            return LoginResult(ok=False)
        if outcome.status != 0:
            # The account logged in but the verify script disagrees (another account, say).
            raise session.script_error(TemplateFailed, outcome)
        return LoginResult(ok=True, transcript=outcome.transcript)


def _secrets(context: TemplateContext | None, account: Account) -> tuple[str, ...]:
    """Every secret, raw and as a PowerShell literal's inside: PowerShell echoes the offending
    source line in its errors, where a quote in a secret appears doubled."""
    raw = request_secrets(context, account)
    quoted = [escaping.powershell(secret)[1:-1] for secret in raw if secret]
    return tuple(dict.fromkeys(s for s in (*raw, *quoted) if s))


# -- templates --------------------------------------------------------------------------------


def validate_script(text: str) -> None:
    """Jinja syntax (with its line) and the few mistakes that can be seen without a host."""
    if not text.strip():
        raise TemplateSyntaxProblem("the template is empty: write the PowerShell to run", None)
    check_syntax(text, context="powershell")
    lines = text.split("\n")  # like Jinja counts lines (not str.splitlines)
    if all(not line.strip() or line.lstrip().startswith("#") for line in lines):
        raise TemplateSyntaxProblem("the template has only comments: nothing would run", None)
    for number, line in enumerate(lines, start=1):
        # A tag inside quotes would become a literal inside a literal: '{{ x }}' renders as
        # ''value'', which PowerShell reads as the value with quotes, or worse.
        if re.search(r"""['"‘’‚‛]\s*\{\{|\}\}\s*['"‘’‚‛]""", line):
            raise TemplateSyntaxProblem(
                "a tag is inside quotes: write {{ tag }} bare, it becomes a quoted "
                "PowerShell string by itself",
                number,
            )


@dataclass(frozen=True)
class Script:
    text: str = field(repr=False)  # as sent: preamble + rendered template, secrets included
    shown: str  # with every secret masked, for the transcript
    bears_secret: bool

    @classmethod
    def render(cls, target: Target, template: str, context: TemplateContext) -> Script:
        # Rendered (and so checked) before connecting: a broken template costs no login.
        try:
            validate_script(template)
            text = render(template, context, escape=escaping.powershell)
        except TemplateSyntaxProblem as exc:
            problem = _locate(template, context, exc)
            raise ConfigurationError(
                target.name, "template", f"{problem}; fix the template"
            ) from None
        try:
            shown = render(template, masked(context), escape=escaping.powershell)
        except TemplateSyntaxProblem:
            shown = "(script with a secret, not shown)"
        bears = text != shown or any(s in text for s in context.secrets)
        return cls(f"{PREAMBLE}\n{text}", f"{PREAMBLE}\n{shown}", bears)


def _locate(
    template: str, context: TemplateContext, exc: TemplateSyntaxProblem
) -> TemplateSyntaxProblem:
    """render() reports line 1 for a whole-template failure (an undefined tag, say): find the
    first line that fails on its own, so the message names the right line."""
    if exc.line not in (None, 1):
        return exc
    for number, line in enumerate(template.split("\n"), start=1):
        if "{{" not in line and "[#" not in line:
            continue
        try:
            render(line, context, line=number, escape=escaping.powershell)
        except TemplateSyntaxProblem as problem:
            return problem
    return exc


# -- the WS-Man session -----------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    status: int
    stdout: str
    stderr: str  # decoded from CLIXML, redacted
    transcript: str  # redacted


class _Session:
    """One connection to one target: runs in a worker thread (every call here blocks)."""

    def __init__(
        self, target: Target, options: Options, account: Account, secrets: tuple[str, ...]
    ) -> None:
        self._target = target
        self._options = options
        self._account = account
        self._secrets = secrets
        self._where = options.endpoint(target)
        self._lines: list[str] = []
        self._secret_sent = False
        self._shell_open = False  # a shell opened: the target accepted the account

    # -- entry points (called through asyncio.to_thread) ----------------------------------

    def login(self) -> None:
        """Authenticate by opening (and closing) a shell: the cheapest authenticated request."""
        protocol = self._protocol()
        shell = self._open(protocol)
        self._close(protocol, shell)

    def run(self, script: Script) -> Outcome:
        protocol = self._protocol()
        shell = self._open(protocol)
        try:
            return self._execute(protocol, shell, script)
        finally:
            self._close(protocol, shell)

    # -- steps ------------------------------------------------------------------------------

    def _protocol(self) -> Protocol:
        operation = max(1, math.ceil(self._target.read_timeout))
        options = self._options
        try:
            protocol = Protocol(
                endpoint=self._where,
                transport=cast(Any, options.transport),
                username=self._account.username,
                password=self._account.password,
                server_cert_validation="validate" if options.verify_tls else "ignore",
                # None: requests' own CA bundle, not REQUESTS_CA_BUNDLE from the environment.
                ca_trust_path=cast(str, options.ca_file),
                read_timeout_sec=operation + _HTTP_READ_MARGIN,
                operation_timeout_sec=operation,
                # No proxy from the worker's environment: credentials go straight to the target.
                proxy=None,
            )
            transport = protocol.transport
            # pywinrm gives requests one number for both timeouts; requests takes a
            # (connect, read) pair, which honours the device's connect_timeout separately.
            cast(Any, transport).read_timeout_sec = (
                self._target.connect_timeout,
                operation + _HTTP_READ_MARGIN,
            )
            if options.transport == "basic":
                # requests encodes str credentials as Latin-1 and fails on anything else (ж);
                # bytes go out as given: UTF-8, which RFC 7617 recommends.
                session = transport.build_session()
                session.auth = HTTPBasicAuth(
                    self._account.username.encode(), self._account.password.encode()
                )
        except WinRMError as exc:  # e.g. kerberos requested but its library is not installed
            raise _options_error(self._target, self._redact(f"cannot use WinRM: {exc}")) from None
        return protocol

    def _open(self, protocol: Protocol) -> str:
        try:
            shell: str = protocol.open_shell(codepage=_UTF8_CODEPAGE, noprofile=True)
        except Exception as exc:
            raise self._failure("open shell", exc) from None
        self._shell_open = True
        self._note(f"# shell opened on {self._where} as {self._account.username}")
        return shell

    def _execute(self, protocol: Protocol, shell: str, script: Script) -> Outcome:
        stdin = self._options.script_transfer == "stdin"
        payload = BOOTSTRAP if stdin else script.text
        encoded = base64.b64encode(payload.encode("utf-16-le")).decode("ascii")
        arguments = [*POWERSHELL_ARGS, "-EncodedCommand", encoded]
        if len(POWERSHELL) + sum(len(a) + 1 for a in arguments) > _MAX_COMMAND_LINE:
            raise self._error(
                TemplateFailed,
                "run",
                "the script is too long for a command line; use script_transfer 'stdin'",
            )
        self._note(f"$ {POWERSHELL} {' '.join(POWERSHELL_ARGS)} -EncodedCommand …")
        self._note("> " + script.shown.replace("\n", "\n> "))
        if not stdin:
            self._secret_sent = script.bears_secret  # the Command message carries the script
        try:
            command = protocol.run_command(
                shell, POWERSHELL, arguments, console_mode_stdin=not stdin
            )
        except Exception as exc:
            raise self._failure("run", exc) from None
        try:
            if stdin:
                self._secret_sent = script.bears_secret
                data = base64.b64encode(script.text.encode("utf-8"))
                protocol.send_command_input(shell, command, data, end=True)
            status, stdout, stderr = self._receive(protocol, shell, command)
        except ExecutorError:
            raise
        except Exception as exc:
            raise self._failure("run", exc) from None
        finally:
            with contextlib.suppress(Exception):  # the outcome is known (or lost) by now
                protocol.cleanup_command(shell, command)
        out = stdout.decode("utf-8", errors="replace")
        err = decode_stderr(stderr.decode("utf-8", errors="replace"))
        for prefix, text in (("<", out), ("!", err)):
            for line in text.replace("\r", "").splitlines():
                self._note(f"{prefix} {line}")
        self._note(f"= exit {status}")
        return Outcome(status, self._redact(out), self._redact(err), self.transcript())

    def _receive(self, protocol: Protocol, shell: str, command: str) -> tuple[int, bytes, bytes]:
        # Not protocol.get_command_output: it retries an operation timeout forever.
        deadline = time.monotonic() + self._target.read_timeout
        stdout: list[bytes] = []
        stderr: list[bytes] = []
        while True:
            try:
                out, err, status, done = protocol.get_command_output_raw(shell, command)
            except WinRMOperationTimeoutError:
                out, err, status, done = b"", b"", -1, False
            stdout.append(out)
            stderr.append(err)
            if done:
                return status, b"".join(stdout), b"".join(stderr)
            if time.monotonic() >= deadline:
                raise self._lost(
                    "run", f"the script did not finish within {self._target.read_timeout:g}s"
                )

    def _close(self, protocol: Protocol, shell: str) -> None:
        with contextlib.suppress(Exception):  # best effort: WinRM reaps idle shells anyway
            protocol.close_shell(shell)

    # -- errors ----------------------------------------------------------------------------

    def _failure(self, step: str, exc: Exception) -> ExecutorError:
        """Classify an exception from pywinrm/requests raised while talking to the target."""
        user = self._account.username
        if isinstance(exc, InvalidCredentialsError):
            if self._secret_sent:
                return self._lost(step, "the target stopped accepting the account's password")
            return self._error(
                AuthenticationFailed,
                step,
                f"{self._where} refused the password of {user!r} (HTTP 401): check the "
                "credential (reconcile it if it drifted) and the transport option; not retried, "
                "to spare the lockout budget",
            )
        if type(exc) is WinRMError:  # pywinrm's own set-up errors: a library or option missing
            return _options_error(self._target, self._redact(f"cannot use WinRM: {exc}"))
        if self._secret_sent:
            return self._lost(step, _describe(exc))
        if _caused_by(exc, ssl.SSLCertVerificationError):
            # Certificates are verified in the TLS handshake: nothing was sent.
            return self._error(
                HostKeyMismatch,
                "tls",
                f"the TLS certificate of {self._where} is not trusted ({_describe(exc)}): the "
                "host may not be the one you think. Give the device a ca_file with its CA",
                login=LoginProgress.NOT_ATTEMPTED,
            )
        if isinstance(exc, WSManFaultError):
            # A WS-Management fault answers a request the target authenticated.
            return self._error(
                TemplateFailed,
                step,
                f"{self._where} accepted the login of {user!r} but refused the request: "
                f"{exc.reason}. Check that the account may use WinRM (Remote Management Users "
                "or Administrators) or use a privileged auth credential",
                login=LoginProgress.ACCEPTED,
            )
        # Before a shell is open, the request carrying the credentials may have reached the
        # target unless the connection (TCP, TLS) never opened; no answer said whether it
        # took them.
        login = None
        if not self._shell_open and not _never_connected(exc):
            login = LoginProgress.UNKNOWN
        if isinstance(exc, WinRMTransportError) and exc.code == 404:
            return self._error(
                TemplateFailed,
                step,
                f"{self._where} answered HTTP 404: no WinRM listener at that path; check the "
                "device's path, scheme and port options",
                login=login,
            )
        if isinstance(exc, requests.exceptions.ConnectTimeout):
            reason = f"no answer within {self._target.connect_timeout:g}s"
        else:
            reason = _describe(exc)
        if login is LoginProgress.UNKNOWN:
            return self._error(
                ConnectFailed,
                step,
                f"the WinRM login to {self._where} as {user!r} failed after the credentials "
                f"were sent: {reason}; the target may have counted a failed login, so this is "
                "not retried",
                login=login,
            )
        return self._error(
            ConnectFailed,
            step,
            f"cannot reach WinRM at {self._where}: {reason}; check the address, port and scheme, "
            "that the WinRM listener is enabled and that the network path is open "
            "(nothing secret had been sent; safe to retry)",
        )

    def _lost(self, step: str, cause: str) -> ExecutorError:
        if self._secret_sent:
            return self._error(
                OutcomeUnknown,
                step,
                f"{cause}; the script carrying a secret had already been sent, so the change "
                "may have happened: probe which secret logs in",
            )
        return self._error(
            ConnectFailed, step, f"{cause} (nothing secret had been sent; safe to retry)"
        )

    def script_error(self, cls: type[ExecutorError], outcome: Outcome) -> ExecutorError:
        said = outcome.stderr.strip() or outcome.stdout.strip() or "(no output)"
        said = " / ".join(line.strip() for line in said.splitlines() if line.strip())
        if _SCRIPT_FAULTS.search(said):
            cls = TemplateFailed
        hint = (
            "fix the template (PowerShell error line numbers count one preamble line)"
            if cls is TemplateFailed
            else "the target refused the change; check its password policy and the account"
        )
        return self._error(
            cls,
            "run",
            f"the script exited with status {outcome.status}: {said[:_QUOTED_ERROR]!r}; {hint}",
        )

    def _error(
        self,
        cls: type[ExecutorError],
        step: str,
        cause: str,
        login: LoginProgress | None = None,
    ) -> ExecutorError:
        if login is None and self._shell_open and not issubclass(cls, AuthenticationFailed):
            login = LoginProgress.ACCEPTED  # a shell opened: the account was accepted
        return cls(self._target.name, step, self._redact(cause), self.transcript(), login=login)

    # -- transcript ------------------------------------------------------------------------

    def _note(self, line: str) -> None:
        self._lines.append(line)

    def transcript(self) -> str:
        return self._redact("\n".join(self._lines))

    def _redact(self, text: str) -> str:
        return redact(text, self._secrets)


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether ``kind`` is among the exceptions that led to ``exc``: requests and urllib3 wrap
    the socket's or ssl's own error in theirs (as an argument, a reason or a cause)."""
    pending: list[object] = [exc]
    seen: set[int] = set()
    while pending:
        item = pending.pop()
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, kind):
            return True
        pending.extend([*item.args, getattr(item, "reason", None), item.__cause__])
        pending.append(item.__context__)
    return False


def _never_connected(exc: BaseException) -> bool:
    """The connection never opened, so nothing was sent: the TCP connect timed out or failed
    (urllib3's NewConnectionError: refused, unreachable, unresolvable) or the TLS handshake
    refused the certificate."""
    return (
        isinstance(exc, requests.exceptions.ConnectTimeout)
        or _caused_by(exc, NewConnectionError)
        or _caused_by(exc, ssl.SSLCertVerificationError)
    )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return "the target stopped answering (read timeout)"
    if isinstance(exc, requests.exceptions.ConnectionError):
        return f"the connection failed ({type(exc).__name__})"
    return str(exc) or type(exc).__name__


# -- PowerShell's error stream ----------------------------------------------------------------


def decode_stderr(text: str) -> str:
    """Readable text from stderr: PowerShell serialises its error stream as CLIXML when its
    output is redirected (``#< CLIXML`` then ``<Objs>``); keep the Error records only, without
    the source-line echo (``+ Set-LocalUser -Password …``), which PowerShell may truncate in the
    middle of a secret, where no redaction could find it."""
    start = text.find(_CLIXML_HEADER)
    if start >= 0:
        text = _clixml_errors(text[start + len(_CLIXML_HEADER) :].strip()) or text
    kept = [line.rstrip() for line in text.replace("\r", "").split("\n")]
    return "\n".join(line for line in kept if line and not line.startswith("+"))


def _clixml_errors(xml: str) -> str | None:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    pieces = [
        _CLIXML_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), node.text or "")
        for node in root.iter()
        if node.tag.rsplit("}", 1)[-1] == "S" and node.get("S") == "Error"
    ]
    return "".join(pieces)
