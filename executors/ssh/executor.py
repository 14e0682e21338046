"""The ssh executor: log in over SSH with a password or a private key and drive commands with
expect-style steps. The key templates edit authorized_keys (executors/ssh/authorized_keys.py).

Host keys are always checked: against the device's pinned keys, or (trust on first use, only when
nothing is pinned yet) accepted once and returned so the caller pins them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import ClassVar

import asyncssh

from executors.base import (
    Account,
    AuthenticationFailed,
    ConfigurationError,
    ConnectFailed,
    HostKeyMismatch,
    InstallRequest,
    LoginProgress,
    LoginRequest,
    LoginResult,
    RunRequest,
    RunResult,
    Target,
    redact,
)
from executors.common import parse_template, request_secrets, verify_template
from executors.ssh import authorized_keys, files
from executors.ssh.script import SYNTAX, Step, validate_script
from executors.ssh.session import ScriptRunner
from templating import TemplateContext

_KEYSCAN_TIMEOUT = 5.0
_CLOSE_WAIT = 5.0
# asyncssh's own list, AES-GCM first: all three are AEAD ciphers every OpenSSH since 6.9 offers,
# but asyncssh builds chacha20-poly1305 from three cryptography objects per packet (about 15 us
# each way) where AES-GCM is one call. A target that offers neither GCM cipher still gets
# chacha20-poly1305, and one with neither AEAD cipher the CTR ones, as before.
CIPHERS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
)


class SshExecutor:
    name: ClassVar[str] = "ssh"
    syntax: ClassVar[str] = SYNTAX
    # Shipped templates (executors/shipped.py) used when a credential names none.
    default_templates: ClassVar[dict[str, str]] = {
        "change": "ssh/linux-passwd",
        "change-as-admin": "ssh/linux-chpasswd",
        "verify": "ssh/verify-login",
        "activate": "ssh/linux-unlock",
        "deactivate": "ssh/linux-lock",
        "jit-create": "ssh/linux-useradd",
        "jit-remove": "ssh/linux-userdel",
        # ssh-key credentials: install the new public key, remove the old one (the account
        # itself logging in with its key, or through sudo).
        "key-install": "ssh/authorized-keys-add",
        "key-install-as-admin": "ssh/authorized-keys-add-sudo",
        "key-remove": "ssh/authorized-keys-remove",
        "key-remove-as-admin": "ssh/authorized-keys-remove-sudo",
    }
    default_port: ClassVar[int] = 22

    def validate(self, template: str) -> None:
        validate_script(template)

    def check_target(self, target: Target) -> None:
        """A device needs its host key pinned, or trust on first use; every pinned key must be
        an OpenSSH public key line. The one option: ``authorized_keys_file``, where sshd reads
        the accounts' keys when not ``~/.ssh/authorized_keys`` (its AuthorizedKeysFile)."""
        if not target.host_keys and not target.trust_on_first_use:
            raise ConfigurationError(
                target.name,
                "host key",
                "pin the host's public key (ssh-keyscan prints it) or set trust_on_first_use",
                field="host_keys",
            )
        for index, line in enumerate(target.host_keys):
            try:
                asyncssh.import_public_key(line.strip())
            except (asyncssh.KeyImportError, ValueError):
                raise ConfigurationError(
                    target.name,
                    "host key",
                    "not an OpenSSH public key ('ssh-ed25519 AAAA…')",
                    field=f"host_keys.{index}",
                ) from None
        unknown = sorted(set(target.options) - {authorized_keys.OPTION})
        if unknown:
            raise ConfigurationError(
                target.name,
                "options",
                f"the ssh executor takes only the option {authorized_keys.OPTION!r}, "
                f"not {', '.join(unknown)}",
            )
        if authorized_keys.OPTION in target.options:
            problem = authorized_keys.file_option_problem(target.options[authorized_keys.OPTION])
            if problem:
                raise ConfigurationError(
                    target.name,
                    "options",
                    f"{authorized_keys.OPTION} {problem}",
                    field=f"options.{authorized_keys.OPTION}",
                )

    async def run(self, request: RunRequest) -> RunResult:
        steps = parse_template(request.target, request.template, validate_script)
        secrets = request_secrets(request.context, request.account)
        conn, learned = await _connect(request.target, request.account, secrets)
        context = authorized_keys.with_edit_values(request.context, request.target.options)
        runner = ScriptRunner(
            conn, request.target.name, context, secrets, request.target.read_timeout
        )
        async with _closing(conn):
            transcript = await runner.run(steps, wait_for_exit=request.task)
        if not request.task:
            return RunResult(transcript=transcript, learned_host_key=learned)
        return RunResult(
            transcript=transcript,
            learned_host_key=learned,
            output=runner.output(),
            exit_status=runner.exit_status,
        )

    async def check_login(self, request: LoginRequest) -> LoginResult:
        verify = verify_template(request, validate_script)
        secrets = request_secrets(request.context, request.account)
        try:
            conn, learned = await _connect(request.target, request.account, secrets)
        except AuthenticationFailed as exc:
            if exc.login is not LoginProgress.REFUSED:
                raise  # no password was tried: not an answer about this one
            return LoginResult(ok=False)
        async with _closing(conn):
            transcript = ""
            if verify is not None:
                steps, context = verify
                transcript = await self._run_steps(conn, request.target, context, secrets, steps)
        return LoginResult(ok=True, transcript=transcript, learned_host_key=learned)

    async def install_files(self, request: InstallRequest) -> RunResult:
        """Write each file through a temp file renamed over it, then run the reload command."""
        self.check_target(request.target)
        secrets = (*request_secrets(None, request.account), *request.secrets)
        conn, learned = await _connect(request.target, request.account, secrets)
        async with _closing(conn):
            transcript = await files.install(
                conn, request.target, request.files, request.command, secrets
            )
        return RunResult(transcript=transcript, learned_host_key=learned)

    async def _run_steps(
        self,
        conn: asyncssh.SSHClientConnection,
        target: Target,
        context: TemplateContext,
        secrets: tuple[str, ...],
        steps: list[Step],
    ) -> str:
        runner = ScriptRunner(conn, target.name, context, secrets, target.read_timeout)
        return await runner.run(steps)


@contextlib.asynccontextmanager
async def _closing(
    conn: asyncssh.SSHClientConnection,
) -> AsyncIterator[asyncssh.SSHClientConnection]:
    try:
        yield conn
    finally:
        conn.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_CLOSE_WAIT):
                await conn.wait_closed()


_KeyLists = tuple[list[asyncssh.SSHKey], list[asyncssh.SSHKey], list[asyncssh.SSHKey]]


def _known_hosts(target: Target) -> _KeyLists | None:
    """The pinned keys as asyncssh's (trusted, CA, revoked) lists; None means accept (TOFU)."""
    if not target.host_keys:
        if target.trust_on_first_use:
            return None
        raise HostKeyMismatch(
            target.name,
            "host key",
            "no host key is pinned for this device and trust_on_first_use is off: pin the key "
            f"shown by `ssh-keyscan -p {target.port} {target.address}` (after checking it out of "
            "band), or enable trust_on_first_use",
        )
    keys = []
    for number, line in enumerate(target.host_keys, start=1):
        try:
            keys.append(asyncssh.import_public_key(line.strip()))
        except (asyncssh.KeyImportError, ValueError) as exc:
            raise HostKeyMismatch(
                target.name,
                "host key",
                f"pinned host key #{number} is not an OpenSSH public key line "
                f"('ssh-ed25519 AAAA… [comment]'): {exc}",
            ) from None
    return keys, [], []


class _Password:
    """The password, handed to asyncssh through its password callable: asyncssh asks for it
    right before sending it (a password request or a keyboard-interactive answer), so whether
    it was asked tells whether the password may have reached the server."""

    def __init__(self, password: str) -> None:
        self._password = password
        self.sent = False

    def __call__(self) -> str:
        self.sent = True
        return self._password


async def _connect(
    target: Target, account: Account, secrets: tuple[str, ...]
) -> tuple[asyncssh.SSHClientConnection, str | None]:
    """Open an authenticated connection, classifying every way that can fail."""
    known_hosts = _known_hosts(target)
    where = f"{target.address}:{target.port}"
    password = _Password(account.password)
    if account.private_key:
        return await _connect_with_key(target, account, known_hosts, secrets)
    try:
        conn = await asyncssh.connect(
            host=target.address,
            port=target.port,
            username=account.username,
            password=password,
            known_hosts=known_hosts,
            # The TCP connect gets connect_timeout; the handshake and the login get read_timeout
            # more: a target refusing a password can take seconds to say so (PAM's failure
            # delay), and a refusal cut short would be taken for "no answer" (ConnectFailed).
            connect_timeout=target.connect_timeout + target.read_timeout,
            # Only the password we were given: no keys or agent of the worker's own user, and no
            # ~/.ssh/config of the worker host changing where or how we connect.
            client_keys=None,
            agent_path=None,
            config=None,
            encryption_algs=CIPHERS,
            # asyncssh asks for the password once: when password auth refuses it, it does not
            # retry it through keyboard-interactive, so one check costs the lockout budget one
            # failure.
            preferred_auth="password,keyboard-interactive",
        )
    except asyncssh.HostKeyNotVerifiable:
        raise await _host_key_mismatch(target) from None
    except asyncssh.KeyExchangeFailed as exc:
        _raise_if_host_key_type(target, known_hosts, exc)
        raise _connect_failed(target, exc, secrets, password.sent) from None
    except asyncssh.PermissionDenied:
        if not password.sent:
            raise AuthenticationFailed(
                target.name,
                "login",
                f"{where} offers no password or keyboard-interactive login to "
                f"{account.username!r}: enable PasswordAuthentication (or "
                "KbdInteractiveAuthentication) in its sshd_config; no password was sent",
                login=LoginProgress.NOT_ATTEMPTED,
            ) from None
        raise AuthenticationFailed(
            target.name,
            "login",
            f"{where} refused the password of {account.username!r}: check the credential "
            "(reconcile it if it drifted); not retried, to spare the lockout budget",
        ) from None
    except (OSError, asyncssh.Error) as exc:  # TimeoutError (connect_timeout) is an OSError too
        raise _connect_failed(target, exc, secrets, password.sent) from None
    return conn, _learned_key(conn, known_hosts)


async def _connect_with_key(
    target: Target, account: Account, known_hosts: _KeyLists | None, secrets: tuple[str, ...]
) -> tuple[asyncssh.SSHClientConnection, str | None]:
    """Public-key authentication with the account's private key, and nothing else. The key
    never leaves this process (only a signature does): a connection that fails has sent no
    secret, so only the target's refusal of the key counts as a failed login."""
    where = f"{target.address}:{target.port}"
    try:
        key = asyncssh.import_private_key(account.private_key)
    except (asyncssh.KeyImportError, ValueError):
        raise ConfigurationError(
            target.name, "login", "the credential's private key does not parse", field="secret"
        ) from None
    try:
        conn = await asyncssh.connect(
            host=target.address,
            port=target.port,
            username=account.username,
            known_hosts=known_hosts,
            connect_timeout=target.connect_timeout + target.read_timeout,
            client_keys=[key],
            password=None,
            agent_path=None,
            config=None,
            encryption_algs=CIPHERS,
            preferred_auth="publickey",
        )
    except asyncssh.HostKeyNotVerifiable:
        raise await _host_key_mismatch(target) from None
    except asyncssh.KeyExchangeFailed as exc:
        _raise_if_host_key_type(target, known_hosts, exc)
        raise _connect_failed(target, exc, secrets, False) from None
    except asyncssh.PermissionDenied:
        raise AuthenticationFailed(
            target.name,
            "login",
            f"{where} refused the key of {account.username!r} (not in its authorized_keys, or "
            "public-key login is off): check the credential (reconcile it if it drifted)",
        ) from None
    except (OSError, asyncssh.Error) as exc:
        raise _connect_failed(target, exc, secrets, False) from None
    return conn, _learned_key(conn, known_hosts)


def _learned_key(conn: asyncssh.SSHClientConnection, known_hosts: _KeyLists | None) -> str | None:
    """Trust on first use: the host key to pin, when none was."""
    if known_hosts is not None:
        return None
    key = conn.get_server_host_key()
    return key.export_public_key().decode().strip() if key is not None else None


def _raise_if_host_key_type(
    target: Target, known_hosts: _KeyLists | None, exc: asyncssh.KeyExchangeFailed
) -> None:
    if known_hosts is not None and "host key" in str(exc).lower():
        # The server has no key of any pinned type: for our purposes, a different host key.
        raise HostKeyMismatch(
            target.name,
            "host key",
            f"{target.address}:{target.port} offers no host key of a pinned type ({exc}); pin "
            f"the key shown by `ssh-keyscan -p {target.port} {target.address}` after checking "
            "it out of band",
        ) from None


async def _host_key_mismatch(target: Target) -> HostKeyMismatch:
    where = f"{target.address}:{target.port}"
    offered = await _offered_key(target)
    return HostKeyMismatch(
        target.name,
        "host key",
        f"the host key offered by {where}{offered} is not a pinned one: the host may not be "
        "the one you think. If it was legitimately re-keyed, pin the key shown by "
        f"`ssh-keyscan -p {target.port} {target.address}` after checking it out of band",
    )


def _connect_failed(
    target: Target, exc: BaseException, secrets: tuple[str, ...], password_sent: bool
) -> ConnectFailed:
    reason = str(exc) or type(exc).__name__
    if isinstance(exc, TimeoutError):
        reason = f"no answer within {target.connect_timeout + target.read_timeout:g}s"
    if password_sent:
        # The password went out and no verdict came back: the server may count it as a
        # failed login, so the failure keeps its lockout charge and is not retried.
        return ConnectFailed(
            target.name,
            "login",
            redact(
                f"the SSH session to {target.address}:{target.port} failed during the login, "
                f"after the password was sent: {reason}; the target may have counted a failed "
                "login, so this is not retried. Check the target (a slow PAM/LDAP "
                "authentication backend, say) or raise the policy's read timeout",
                secrets,
            ),
            login=LoginProgress.UNKNOWN,
        )
    return ConnectFailed(
        target.name,
        "connect",
        redact(
            f"cannot open an SSH session to {target.address}:{target.port}: {reason}; check the "
            "address/port, that sshd is running and that the network path is open",
            secrets,
        ),
    )


async def _offered_key(target: Target) -> str:
    """Best effort: the fingerprint the server offers, to put in the mismatch message."""
    try:
        async with asyncio.timeout(_KEYSCAN_TIMEOUT):
            key = await asyncssh.get_server_host_key(target.address, target.port, config=None)
    except Exception:  # only decoration for an error message; never mask the real error
        return ""
    if key is None:
        return ""
    return f" ({key.get_algorithm()} {key.get_fingerprint()})"
