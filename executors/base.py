"""The executor interface every protocol plugin implements, its errors and its registry.

Small on purpose, like Vault's database plugin interface: connect with an account, run a
template, tell whether a login works. Everything protocol-specific stays inside the plugin.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from functools import cache
from typing import Any, ClassVar, Protocol, runtime_checkable

from executors.plugins import Plugins

# Part of the plugin interface (executors import them from here); defined in executors.redaction.
from executors.redaction import REDACTED as REDACTED
from executors.redaction import redact as redact
from templating import TemplateContext
from workflows.contracts import FailureKind

ENTRY_POINT_GROUP = "keyturn.executors"


@dataclass(frozen=True)
class Target:
    """Where to connect: the device, as the executor needs it."""

    name: str
    address: str
    port: int
    host_keys: tuple[str, ...] = ()
    trust_on_first_use: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    # The device accepts that secrets cross an unencrypted or unverified channel (see
    # insecure_transport below); audited on every operation that uses it.
    allow_insecure_transport: bool = False


@dataclass(frozen=True)
class Account:
    """Who connects, with a password or (ssh) an OpenSSH private key. Secrets: kept out of repr."""

    username: str
    password: str = field(repr=False)
    private_key: str = field(default="", repr=False)  # set: log in with this key, not a password


@dataclass(frozen=True)
class RunRequest:
    target: Target
    account: Account
    template: str
    context: TemplateContext
    # A task template (kind "task"): report what it printed and how its last command ended
    # (RunResult.output and exit_status). An executor that cannot leaves them None.
    task: bool = False


@dataclass(frozen=True)
class LoginRequest:
    target: Target
    account: Account
    template: str | None = None  # the verify template to run once logged in, if any
    context: TemplateContext | None = None


@dataclass(frozen=True)
class InstalledFile:
    """A file to write on the target: written beside ``path`` and renamed over it, created with
    ``mode`` (so a private key is never readable by others, not even for a moment)."""

    path: str
    content: bytes = field(repr=False)
    mode: int = 0o644


@dataclass(frozen=True)
class InstallRequest:
    """Install files on the target, then run ``command`` (a reload), as ``account``."""

    target: Target
    account: Account
    files: tuple[InstalledFile, ...]
    command: str | None = None
    secrets: tuple[str, ...] = field(default=(), repr=False)  # redacted from every transcript


@dataclass(frozen=True)
class RunResult:
    transcript: str  # already redacted
    learned_host_key: str | None = None  # trust-on-first-use: the key to pin from now on
    # Tasks only (RunRequest.task): the target's output, redacted (a command's stdout and
    # stderr, a query's values, a search's entries), and the last command's exit status.
    output: str | None = None
    exit_status: int | None = None


@dataclass(frozen=True)
class LoginResult:
    ok: bool
    transcript: str = ""
    learned_host_key: str | None = None


class LoginProgress(enum.Enum):
    """How far a failed executor call got in logging in with the account's secret.

    What the lockout budget needs to know: a login the target may have counted as a failure
    keeps its charge. Executors set it from the protocol state they hold (connection opened,
    TLS done, the authentication call answered), never from the text of an error.
    """

    # The secret never reached the target: no connection, the TLS or protocol handshake did
    # not complete, or a problem was found before connecting.
    NOT_ATTEMPTED = "not attempted"
    REFUSED = "refused"  # the target answered and refused the secret
    ACCEPTED = "accepted"  # the target accepted the secret; what failed came after
    UNKNOWN = "unknown"  # the secret may have reached the target; its verdict is not known


class ExecutorError(Exception):
    """Base of every executor failure. ``kind`` is stable: it becomes the activity error type.

    ``login`` says how far this failure got in logging in (LoginProgress); the class gives a
    default that an executor overrides per instance where it knows better.
    """

    kind: ClassVar[str] = "ExecutorError"  # each subclass: a FailureKind
    retryable: ClassVar[bool] = False
    default_login: ClassVar[LoginProgress] = LoginProgress.UNKNOWN

    def __init__(
        self,
        device: str,
        step: str,
        cause: str,
        transcript: str = "",
        *,
        login: LoginProgress | None = None,
    ) -> None:
        self.device = device
        self.step = step
        self.cause = cause
        self.transcript = transcript
        self.login = login if login is not None else self.default_login
        super().__init__(f"{device}: {step}: {cause}")

    @property
    def may_retry(self) -> bool:
        """Whether the activity may be retried: the kind allows it and the login's outcome is
        known. A login of unknown outcome may have counted as a failure on the target, and
        repeating it could lock the account."""
        return self.retryable and self.login is not LoginProgress.UNKNOWN


class ConfigurationError(ExecutorError):
    """Keyturn's own configuration cannot work (an unknown template, a bad device option, a
    missing privileged account…), found before connecting: nothing was sent, no login was
    tried. The message says what to fix. Retrying would only fail the same way."""

    kind = FailureKind.CONFIGURATION
    default_login = LoginProgress.NOT_ATTEMPTED

    def __init__(
        self, device: str, step: str, cause: str, transcript: str = "", *, field: str = "options"
    ) -> None:
        super().__init__(device, step, cause, transcript)
        self.field = field  # the device field at fault ("options", "host_keys.0"): for a 422


class ConnectFailed(ExecutorError):
    """Could not reach or open a session on the target; nothing of the change was sent. Safe
    to retry, unless the secret may have been sent and its verdict is unknown (``login``)."""

    kind = FailureKind.CONNECT_FAILED
    retryable = True
    default_login = LoginProgress.NOT_ATTEMPTED


class AuthenticationFailed(ExecutorError):
    """The target refused the account's secret. Retrying would only spend the lockout budget."""

    kind = FailureKind.AUTHENTICATION_FAILED
    default_login = LoginProgress.REFUSED


class TemplateFailed(ExecutorError):
    """The template could not be rendered or did not match what the target said."""

    kind = FailureKind.TEMPLATE_FAILED


class HostKeyMismatch(ExecutorError):
    """The target's host key is not the pinned one: possibly not the host we think it is."""

    kind = FailureKind.HOST_KEY_MISMATCH
    default_login = LoginProgress.NOT_ATTEMPTED


class ChangeRejected(ExecutorError):
    """The target answered and refused the new secret (a password-quality rule, say)."""

    kind = FailureKind.CHANGE_REJECTED


class OutcomeUnknown(ExecutorError):
    """The change may or may not have happened (connection lost after sending it): probe."""

    kind = FailureKind.OUTCOME_UNKNOWN
    retryable = True


@runtime_checkable
class Executor(Protocol):
    """The plugin interface: a name, the template syntax, default templates and port, and four
    methods. Like a Vault database plugin validating its own configuration, the executor alone
    knows its device settings: ``check_target`` is asked when a device is saved (a 422 naming
    the field) and again before every connection (so a device that cannot work costs no
    login). An executor may also define ``insecure_transport(target) -> str | None``: why the
    channel these settings give would carry a secret unencrypted or to an unverified peer (None
    when it would not); such a target is refused unless the device allows it. An executor
    without it is taken to encrypt and verify always."""

    name: ClassVar[str]
    syntax: ClassVar[str]  # a short description of the template syntax, for GET /v1/executors
    # Shipped template names used when a credential names none: "change", "change-as-admin"
    # (when the credential has an auth credential) and "verify"; and, for the kinds the executor
    # supports, "activate", "deactivate", "jit-create", "jit-remove" (run through the auth
    # credential; a credential's lifecycle_templates may name others).
    default_templates: ClassVar[dict[str, str]]
    default_port: ClassVar[int]  # used when a device gives no port
    # Optional, so not declared here: ``username_forbids: ClassVar[str]``, the characters the
    # protocol cannot carry in a username (HTTP Basic: ":"), refused when a credential is saved;
    # and ``async install_files(request: InstallRequest) -> RunResult``, for an executor that
    # can place files on its targets (certificate publishing; ``installs_files`` tells).

    def validate(self, template: str) -> None:
        """Raise templating.TemplateSyntaxProblem (with its line) if the template is unusable."""

    def check_target(self, target: Target) -> None:
        """Raise ConfigurationError (its ``field`` naming the device field) for device settings
        (``options``, host keys…) that cannot work. Sends nothing anywhere."""

    async def run(self, request: RunRequest) -> RunResult:
        """Connect with request.account and run the template; raise an ExecutorError on failure."""

    async def check_login(self, request: LoginRequest) -> LoginResult:
        """Does the account log in? ok=False only for a refused secret; other errors raise."""


def username_problem(executor: object, username: str) -> str | None:
    """Why the executor cannot log in as ``username``, or None."""
    forbidden = sorted(set(getattr(executor, "username_forbids", "")) & set(username))
    if forbidden:
        shown = " ".join(repr(char) for char in forbidden)
        return f"executor {getattr(executor, 'name', '?')!r} cannot carry {shown} in a username"
    return None


def check_target(executor: object, target: Target) -> None:
    """The executor's ``check_target``: ConfigurationError for unusable settings (a plugin
    written before the method was part of the interface is not asked), and for a channel that
    would expose secrets on a device that does not allow it."""
    check = getattr(executor, "check_target", None)
    if check is not None:
        check(target)
    reason = insecure_transport(executor, target)
    if reason is not None and not target.allow_insecure_transport:
        raise ConfigurationError(
            target.name,
            "transport",
            f"device {target.name!r}: {reason}, so secrets would cross the network unprotected; "
            "use an encrypted and verified transport (see the executor's options), or set the "
            "device's allow_insecure_transport to true to accept the risk (every operation "
            "that uses it is audited)",
        )


def insecure_transport(executor: object, target: Target) -> str | None:
    """The executor's optional ``insecure_transport``: why its channel to this target would
    carry a secret unencrypted or to an unverified peer, or None."""
    check = getattr(executor, "insecure_transport", None)
    return check(target) if check is not None else None


@cache
def registry() -> Plugins[Executor]:
    """Installed executors by name. Keyturn's own register through the same entry points."""
    return Plugins(ENTRY_POINT_GROUP, "executor")


def get_executor(name: str) -> Executor:
    try:
        return registry()[name]
    except KeyError:
        known = ", ".join(sorted(registry())) or "none"
        raise LookupError(f"no executor named {name!r} is installed (installed: {known})") from None


def installs_files(executor: object) -> bool:
    """Whether the executor can publish files (a certificate and its key) to its targets."""
    return callable(getattr(executor, "install_files", None))
