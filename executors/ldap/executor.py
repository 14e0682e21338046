"""The ldap executor: bind with a password and run password operations on a directory (ldap3).

ldap3 is synchronous, so each call runs as one blocking session (connect, bind, operations,
unbind) in a worker thread, with the SAFE_SYNC strategy and the device's timeouts bounding every
socket wait. Passwords are handed to ldap3 as UTF-8 bytes: as text it would SASLprep them
(RFC 4013), and a password that normalisation alters would be set and checked as something else
than the vault holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import ssl
from dataclasses import dataclass
from typing import Any, ClassVar

import ldap3
from ldap3.core.exceptions import LDAPCommunicationError, LDAPException
from ldap3.extend.standard.modifyPassword import ModifyPassword
from ldap3.extend.standard.whoAmI import WhoAmI

from executors.base import (
    Account,
    AuthenticationFailed,
    ChangeRejected,
    ConfigurationError,
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
from executors.common import masked, parse_template, request_secrets
from executors.ldap.script import (
    ESCAPES,
    SYNTAX,
    Field,
    LdapContext,
    Operation,
    Role,
    encode_value,
    looks_like_dn,
    parse_attribute,
    parse_count,
    parse_scope,
    same_dn,
    validate_script,
)
from templating import TemplateContext, TemplateSyntaxProblem, render
from templating.escaping import ldap_dn

DEFAULT_USER_DN_TEMPLATE = "uid={username},ou=people,{base_dn}"
INVALID_CREDENTIALS = 49
COMPARE_FALSE, COMPARE_TRUE = 5, 6
# The server answered and refused the new value: constraintViolation (a password-quality or
# history rule; AD says 19 too), invalidAttributeSyntax, insufficientAccessRights,
# unwillingToPerform (AD without TLS, ppolicy "unwilling to verify old password").
REJECTED = frozenset({19, 21, 50, 53})
BUSY = frozenset({51, 52})  # busy, unavailable: refused before doing anything, safe to retry
_SCOPES = {"base": ldap3.BASE, "one": ldap3.LEVEL, "sub": ldap3.SUBTREE}
_ACTIONS = {"replace": ldap3.MODIFY_REPLACE, "add": ldap3.MODIFY_ADD, "delete": ldap3.MODIFY_DELETE}


class _BindRefused(AuthenticationFailed):
    """The bind itself was refused: the only failure check_login reports as ok=False."""


@dataclass(frozen=True)
class Settings:
    """The device's ``options`` for ldap, checked."""

    base_dn: str
    use_ssl: bool = False
    start_tls: bool = False
    verify_tls: bool = True
    user_dn_template: str = DEFAULT_USER_DN_TEMPLATE
    ca_file: str | None = None  # the CA the server's certificate must chain to (else the system's)

    @classmethod
    def from_target(cls, target: Target) -> Settings:
        options = target.options

        def problem(cause: str) -> ConfigurationError:
            return ConfigurationError(
                target.name, "device options", f"device {target.name!r}: {cause}; fix the device"
            )

        def flag(name: str, default: bool) -> bool:
            value = options.get(name, default)
            if not isinstance(value, bool):
                raise problem(f"options.{name} must be true or false, got {value!r}")
            return value

        base_dn = options.get("base_dn")
        if not isinstance(base_dn, str) or not looks_like_dn(base_dn):
            raise problem(
                "an ldap device needs options.base_dn, the directory's base DN "
                f"(e.g. 'dc=example,dc=com'), got {base_dn!r}"
            )
        template = options.get("user_dn_template", DEFAULT_USER_DN_TEMPLATE)
        if not isinstance(template, str) or "{username}" not in template:
            raise problem(
                "options.user_dn_template must contain {username} (e.g. "
                f"{DEFAULT_USER_DN_TEMPLATE!r}), got {template!r}"
            )
        ca_file = options.get("ca_file")
        if ca_file is not None and (not isinstance(ca_file, str) or not ca_file):
            raise problem(f"options.ca_file must be the path of a PEM file, got {ca_file!r}")
        settings = cls(
            base_dn=base_dn,
            ca_file=ca_file,
            use_ssl=flag("use_ssl", False),
            start_tls=flag("start_tls", False),
            verify_tls=flag("verify_tls", True),
            user_dn_template=template,
        )
        if settings.use_ssl and settings.start_tls:
            raise problem("options.use_ssl (LDAPS) and options.start_tls exclude each other")
        return settings

    def dn_of(self, username: str) -> str:
        """A credential's username as a bind DN: a DN stays as is, a name fills the template."""
        if looks_like_dn(username):
            return username
        # replace(), not format(): a username must never reach format()'s field syntax.
        return self.user_dn_template.replace("{base_dn}", self.base_dn).replace(
            "{username}", ldap_dn(username)
        )


class LdapExecutor:
    name: ClassVar[str] = "ldap"
    syntax: ClassVar[str] = SYNTAX
    default_templates: ClassVar[dict[str, str]] = {
        "change": "ldap/passwd-modify-self",
        "change-as-admin": "ldap/passwd-modify-admin",
        "verify": "ldap/verify-bind",
        "activate": "ldap/ppolicy-unlock",
        "deactivate": "ldap/ppolicy-lock",
    }
    default_port: ClassVar[int] = 389

    def validate(self, template: str) -> None:
        validate_script(template)

    def check_target(self, target: Target) -> None:
        Settings.from_target(target)

    def insecure_transport(self, target: Target) -> str | None:
        settings = Settings.from_target(target)
        if not (settings.use_ssl or settings.start_tls):
            return "neither options.use_ssl (LDAPS) nor options.start_tls is set: binds go in clear"
        if not settings.verify_tls:
            return "options.verify_tls is false: the server's certificate is not checked"
        return None

    async def run(self, request: RunRequest) -> RunResult:
        check_target(self, request.target)  # options and transport, before anything
        operations = parse_template(request.target, request.template, validate_script)
        settings = Settings.from_target(request.target)
        transcript = await asyncio.to_thread(
            _session,
            request.target,
            settings,
            request.account,
            operations,
            request.context,
            request.task,
        )
        if not request.task:
            return RunResult(transcript=transcript.text())
        # Every operation succeeded (a failing one raises): the task ends as a command exiting 0.
        return RunResult(transcript=transcript.text(), output=transcript.output(), exit_status=0)

    async def check_login(self, request: LoginRequest) -> LoginResult:
        check_target(self, request.target)  # options and transport, before anything
        operations: list[Operation] = []
        if request.template is not None:
            if request.context is None:
                raise ConfigurationError(
                    request.target.name, "template", "a verify template needs a context"
                )
            operations = parse_template(request.target, request.template, validate_script)
        settings = Settings.from_target(request.target)
        try:
            transcript = await asyncio.to_thread(
                _session, request.target, settings, request.account, operations, request.context
            )
        except _BindRefused:
            return LoginResult(ok=False)
        return LoginResult(ok=True, transcript=transcript.text())


def _session(
    target: Target,
    settings: Settings,
    account: Account,
    operations: list[Operation],
    context: TemplateContext | None,
    task: bool = False,
) -> Transcript:
    """One blocking LDAP session, run in a worker thread. Returns its transcript. ``task``: a
    search without expect: lists what it finds, however many (none included)."""
    secrets = request_secrets(context, account)
    transcript = Transcript(secrets)
    bind_dn = settings.dn_of(account.username)
    conn = _connect(target, settings, bind_dn, account.password, transcript, secrets)
    try:
        if operations and context is not None:
            ldap_context = LdapContext.extend(
                context,
                user_dn=settings.dn_of(context.username),
                bind_dn=bind_dn,
                base_dn=settings.base_dn,
            )
            runner = OperationRunner(conn, target, ldap_context, secrets, transcript, task=task)
            runner.run(operations)
    finally:
        with contextlib.suppress(Exception):  # the outcome is known; a failed unbind is noise
            conn.unbind()
    return transcript


def _server(target: Target, settings: Settings) -> ldap3.Server:
    tls = None
    if settings.use_ssl or settings.start_tls:
        tls = ldap3.Tls(
            validate=ssl.CERT_REQUIRED if settings.verify_tls else ssl.CERT_NONE,
            ca_certs_file=settings.ca_file,
        )
    return ldap3.Server(
        target.address,
        port=target.port,
        use_ssl=settings.use_ssl,
        tls=tls,
        get_info=ldap3.NONE,  # no schema/root DSE read: one round trip less, nothing to trust
        connect_timeout=target.connect_timeout,
    )


def _connect(
    target: Target,
    settings: Settings,
    bind_dn: str,
    password: str,
    transcript: Transcript,
    secrets: tuple[str, ...],
) -> Any:
    where = f"{target.address}:{target.port}"
    scheme = "ldaps" if settings.use_ssl else "ldap"
    transcript.note(f"> bind {bind_dn}" + (" (StartTLS)" if settings.start_tls else ""))
    if not password:
        # An empty password is an "unauthenticated bind" (RFC 4513 5.1.2), which some servers
        # accept as anonymous: it must never count as a successful login.
        raise _BindRefused(
            target.name,
            "bind",
            f"no password for {bind_dn!r}: an empty password never logs in",
            login=LoginProgress.NOT_ATTEMPTED,
        )
    conn = ldap3.Connection(
        _server(target, settings),
        user=bind_dn,
        password=password.encode("utf-8"),
        client_strategy=ldap3.SAFE_SYNC,
        # ldap3 packs it into SO_RCVTIMEO as whole seconds: a float makes struct.pack fail.
        receive_timeout=max(1, math.ceil(target.read_timeout)),
        raise_exceptions=False,
        auto_bind=ldap3.AUTO_BIND_NONE,
    )
    # Where the session got: the password goes out with the bind request, after the
    # connection (and its TLS, LDAPS or StartTLS) is up.
    login = LoginProgress.NOT_ATTEMPTED
    try:
        conn.open()
        if settings.start_tls:
            conn.start_tls()  # raises when refused or when the TLS handshake fails
        login = LoginProgress.UNKNOWN
        _, result, _, _ = conn.bind()
    except (LDAPException, OSError) as exc:  # TimeoutError is an OSError too
        with contextlib.suppress(Exception):
            conn.unbind()
        reason = str(exc) or type(exc).__name__
        if "timed out" in reason.lower():
            reason = f"no answer within {target.connect_timeout:g}s/{target.read_timeout:g}s"
        if login is LoginProgress.UNKNOWN:
            raise ConnectFailed(
                target.name,
                "bind",
                redact(
                    f"the bind of {bind_dn!r} to {scheme}://{where} got no answer: {reason}; "
                    "the password had been sent and the directory may have counted a failed "
                    "login, so this is not retried",
                    secrets,
                ),
                transcript.text(),
                login=login,
            ) from None
        raise ConnectFailed(
            target.name,
            "connect",
            redact(
                f"cannot open an LDAP session to {scheme}://{where}: {reason}; check the "
                "address/port, the TLS options (use_ssl/start_tls/verify_tls), that the "
                "directory is running and that the network path is open",
                secrets,
            ),
            transcript.text(),
        ) from None
    code = result.get("result") if result else None
    transcript.note(f"< {_describe(result or {}, secrets)}")
    if code == 0:
        return conn
    with contextlib.suppress(Exception):
        conn.unbind()
    if code == INVALID_CREDENTIALS:
        raise _BindRefused(
            target.name,
            "bind",
            f"{where} refused the password of {bind_dn!r} (invalidCredentials): check the "
            "credential and the device's user_dn_template (reconcile it if it drifted); not "
            "retried, to spare the lockout budget",
            transcript.text(),
        )
    # Answered, but not with a clean refusal (a locked account, a policy, a busy server): the
    # directory may count it as a failed login, so it keeps its charge and is not retried.
    raise ConnectFailed(
        target.name,
        "bind",
        f"{where} did not accept the bind of {bind_dn!r}: {_describe(result or {}, secrets)}; "
        "check the account (locked? expired?) and the directory's bind rules; not retried, "
        "to spare the lockout budget",
        transcript.text(),
        login=LoginProgress.UNKNOWN,
    )


def _describe(result: dict[str, Any], secrets: tuple[str, ...]) -> str:
    text = f"{result.get('result')} {result.get('description')}"
    if result.get("message"):
        text += f": {result['message']}"
    return redact(text, secrets)


class Transcript:
    """``> operation`` / ``< result`` lines, redacted as a whole when read."""

    def __init__(self, secrets: tuple[str, ...]) -> None:
        self._secrets = secrets
        self._lines: list[str] = []
        self.entries: list[str] = []  # the DNs searches found: a task's output

    def note(self, text: str) -> None:
        self._lines.append(text)

    def text(self) -> str:
        return redact("\n".join(self._lines), self._secrets)

    def output(self) -> str:
        return redact("\n".join(self.entries), self._secrets)


class OperationRunner:
    """Runs parsed operations on one bound connection (in the session's thread)."""

    def __init__(
        self,
        conn: Any,
        target: Target,
        context: LdapContext,
        secrets: tuple[str, ...],
        transcript: Transcript,
        task: bool = False,
    ) -> None:
        self._task = task
        self._conn = conn
        self._target = target
        self._context = context
        self._masked_context = masked(context)
        self._secrets = secrets
        self._transcript = transcript
        self._secret_sent = False

    def run(self, operations: list[Operation]) -> None:
        for operation in operations:
            try:
                getattr(self, f"_{operation.name}")(operation)
            except ExecutorError:
                raise
            except (LDAPCommunicationError, OSError) as exc:
                raise self._lost(operation, f"the connection failed: {exc}") from None
            except LDAPException as exc:  # ldap3 refused a value before sending (bad DN, filter)
                raise self._error(TemplateFailed, operation, f"ldap3 refused it: {exc}") from None

    # -- operations ------------------------------------------------------------------------

    def _passwd_modify(self, op: Operation) -> None:
        user, user_shown = self._render_dn(op)
        old, old_shown = self._value(op, op.field("old"))
        new, new_shown = self._value(op, op.field("new"))
        self._note(
            op, f"user={user_shown or '(bound identity)'} old={old_shown or '-'} new={new_shown}"
        )
        # Bytes: returned raw by ldap3 (no SASLprep, no hashing); the server hashes it.
        request = ModifyPassword(
            self._conn,
            user or None,
            old.encode("utf-8") if old else None,
            new.encode("utf-8"),
        )
        self._secret_sent = True
        request.send()
        self._check(op, request.result, changes=True)

    def _modify(self, op: Operation) -> None:
        dn, dn_shown = self._render_dn(op)
        changes: dict[str, list[tuple[Any, list[bytes]]]] = {}
        shown = []
        for field in op.fields:
            value, value_shown = self._value(op, field)
            values = [encode_value(value, field.encoding)] if field.argument.strip() else []
            changes.setdefault(field.attribute, []).append((_ACTIONS[field.name], values))
            encoding = f" as {field.encoding}" if field.encoding else ""
            shown.append(f"{field.name} {field.attribute}{encoding}={value_shown}")
        self._note(op, f"{dn_shown} " + "; ".join(shown))
        self._secret_sent = True
        _, result, _, _ = self._conn.modify(dn, changes)
        self._check(op, result, changes=True)

    def _search(self, op: Operation) -> None:
        base, base_shown = self._render_dn(op)
        query, query_shown = self._word(op, op.field("filter"), "(objectClass=*)")
        scope = self._parsed(op, lambda line, text: parse_scope(text, line), op.field("scope"))
        expected = self._parsed(op, lambda line, text: parse_count(text, line), op.field("expect"))
        self._note(op, f"{base_shown} scope={scope or 'base'} filter={query_shown}")
        _, result, response, _ = self._conn.search(
            base, query, search_scope=_SCOPES[scope or "base"], attributes=[ldap3.NO_ATTRIBUTES]
        )
        found = [entry for entry in response or () if entry.get("type") == "searchResEntry"]
        if result.get("result") == 32:  # noSuchObject: the base is missing, i.e. zero found
            found = []
        else:
            self._check(op, result, changes=False)
        self._transcript.note(f"< {len(found)} entries")
        self._transcript.entries.extend(str(entry.get("dn", "")) for entry in found)
        if expected is None and self._task:
            return  # a task lists what it finds: none is an answer too
        if (expected is None and not found) or (expected is not None and len(found) != expected):
            want = "at least 1" if expected is None else str(expected)
            raise self._error(
                TemplateFailed,
                op,
                f"the search found {len(found)} entries, the template expects {want}: check "
                "the base DN, the filter and the device's user_dn_template",
            )

    def _compare(self, op: Operation) -> None:
        dn, dn_shown = self._render_dn(op)
        attribute = self._parsed(
            op, lambda line, text: parse_attribute(text, line), op.field("attribute")
        )
        value, value_shown = self._value(op, op.field("value"))
        self._note(op, f"{dn_shown} {attribute}={value_shown}")
        if value != value_shown:
            self._secret_sent = True
        _, result, _, _ = self._conn.compare(dn, attribute, value.encode("utf-8"))
        code = result.get("result")
        self._transcript.note(f"< {self._describe(result)}")
        if code == COMPARE_TRUE:
            return
        if code == COMPARE_FALSE:
            raise self._error(
                TemplateFailed, op, f"{dn_shown} does not have {attribute}={value_shown}"
            )
        self._check(op, result, changes=False)

    def _whoami(self, op: Operation) -> None:
        expected, expected_shown = self._render_dn(op)
        self._note(op, expected_shown or "")
        request = WhoAmI(self._conn)
        request.send()
        self._check(op, request.result, changes=False)
        authzid = str(request.result.get("authzid") or "")
        self._transcript.note(f"< {authzid or '(anonymous)'}")
        if expected and not (authzid.startswith("dn:") and same_dn(authzid[3:], expected)):
            raise self._error(
                TemplateFailed,
                op,
                f"the session is {authzid or 'anonymous'!r}, not {expected_shown!r}: the bind "
                "went to another entry; check the device's user_dn_template",
            )

    # -- rendering -------------------------------------------------------------------------

    def _render(self, op: Operation, text: str, line: int, role: Role) -> tuple[str, str]:
        """The argument as sent, and as shown (secrets masked)."""
        if not text.strip():
            return "", ""
        try:
            value = render(text, self._context, line=line, escape=ESCAPES[role])
        except TemplateSyntaxProblem as exc:
            raise self._error(TemplateFailed, op, f"cannot render: {exc}") from None
        try:
            shown = render(text, self._masked_context, line=line, escape=ESCAPES[role])
        except TemplateSyntaxProblem:
            shown = "(value with a secret, not shown)"
        if role is not Role.VALUE and value != shown:
            # validate() refuses secret tags here; this also catches one smuggled in another way.
            raise self._error(
                TemplateFailed, op, f"line {line}: a secret cannot go into a {role.value}"
            )
        return value, shown

    def _render_dn(self, op: Operation) -> tuple[str, str]:
        return self._render(op, op.argument, op.line, Role.DN)

    def _value(self, op: Operation, field: Field | None) -> tuple[str, str]:
        if field is None:
            return "", ""
        return self._render(op, field.argument, field.line, field.role)

    def _word(self, op: Operation, field: Field | None, default: str) -> tuple[str, str]:
        if field is None:
            return default, default
        return self._render(op, field.argument, field.line, field.role)

    def _parsed(self, op: Operation, parse: Any, field: Field | None) -> Any:
        if field is None:
            return None
        text, _ = self._render(op, field.argument, field.line, field.role)
        try:
            return parse(field.line, text)
        except TemplateSyntaxProblem as exc:
            raise self._error(TemplateFailed, op, str(exc)) from None

    # -- results and errors ----------------------------------------------------------------

    def _note(self, op: Operation, text: str) -> None:
        self._transcript.note(f"> {op.name} {text}".rstrip())

    def _describe(self, result: dict[str, Any]) -> str:
        return _describe(result, self._secrets)

    def _check(self, op: Operation, result: dict[str, Any] | None, changes: bool) -> None:
        if not result:
            raise self._lost(op, "the server sent no result")
        code = result.get("result")
        if op.name not in ("search", "compare"):
            self._transcript.note(f"< {self._describe(result)}")
        if code == 0:
            return
        said = self._describe(result)
        if code == INVALID_CREDENTIALS:
            raise self._error(
                AuthenticationFailed, op, f"the server refused a password: {said}; check it"
            )
        if changes and code in REJECTED:
            raise self._error(
                ChangeRejected,
                op,
                f"the directory refused the change: {said}; check the password policy (length, "
                "history, quality) and the account's rights",
            )
        if code in BUSY:
            raise self._error(ConnectFailed, op, f"the server refused to work now: {said}")
        raise self._error(
            TemplateFailed, op, f"the server answered {said}; check the template's DNs and names"
        )

    def _lost(self, op: Operation, cause: str) -> ExecutorError:
        if self._secret_sent:
            return self._error(
                OutcomeUnknown,
                op,
                f"{cause}; a secret had already been sent, so the change may have happened: "
                "probe which secret logs in",
            )
        return self._error(
            ConnectFailed, op, f"{cause} (nothing secret had been sent; safe to retry)"
        )

    def _error(self, cls: type[ExecutorError], op: Operation, cause: str) -> ExecutorError:
        return cls(
            device=self._target.name,
            step=op.label,
            cause=redact(cause, self._secrets),
            transcript=self._transcript.text(),
            # Operations run on a bound connection: the login was accepted. A password refused
            # by an operation (passwd_modify's old password) keeps its charge.
            login=None if issubclass(cls, AuthenticationFailed) else LoginProgress.ACCEPTED,
        )
