"""Installing files over SSH (a certificate and its key), then running a reload command.

Each file goes through the session's standard input, never its command line, into a temporary
file made by ``mktemp`` in the target's own directory under ``umask 077`` (so a private key is
never readable by others, not even for a moment), is given its mode, and is renamed over the
target: a reader sees the old file or the new one, never half of one. No SFTP subsystem is
needed, only a POSIX shell.
"""

from __future__ import annotations

import posixpath
import shlex

import asyncssh

from executors.base import ConnectFailed, InstalledFile, Target, TemplateFailed, redact

_OUTPUT_LIMIT = 4000


def install_command(file: InstalledFile) -> str:
    """The shell command that writes its standard input to ``file.path`` through a temp file."""
    path = shlex.quote(file.path)
    directory = shlex.quote(posixpath.dirname(file.path) or ".")
    return (
        f"umask 077; tmp=$(mktemp {directory}/.keyturn-XXXXXXXX) || exit 1; "
        f'if cat > "$tmp" && chmod {file.mode:o} "$tmp" && mv -f "$tmp" {path}; then exit 0; '
        f'else rm -f "$tmp"; exit 1; fi'
    )


async def install(
    conn: asyncssh.SSHClientConnection,
    target: Target,
    files: tuple[InstalledFile, ...],
    command: str | None,
    secrets: tuple[str, ...],
) -> str:
    """Write each file, then run ``command``; the transcript, redacted. Raises TemplateFailed
    when a write or the command fails (nothing retried: the operation says what to fix)."""
    transcript: list[str] = []
    for file in files:
        result = await _run(conn, target, install_command(file), file.content)
        transcript.append(f"installed {file.path} (mode {file.mode:o}): exit {result.exit_status}")
        if result.exit_status != 0:
            raise TemplateFailed(
                target.name,
                "install",
                redact(f"writing {file.path} failed: {_said(result)}", secrets),
                "\n".join(transcript),
            )
    if command:
        result = await _run(conn, target, command, None)
        transcript.append(f"$ {command}\nexit {result.exit_status} {_said(result)}".rstrip())
        if result.exit_status != 0:
            raise TemplateFailed(
                target.name,
                "reload",
                redact(f"the reload command exited {result.exit_status}: {_said(result)}",
                       secrets),
                redact("\n".join(transcript), secrets),
            )  # fmt: skip
    return redact("\n".join(transcript), secrets)


async def _run(
    conn: asyncssh.SSHClientConnection, target: Target, command: str, data: bytes | None
) -> asyncssh.SSHCompletedProcess:
    try:
        return await conn.run(
            command, input=data, check=False, encoding=None, timeout=target.read_timeout
        )
    except (OSError, asyncssh.Error) as exc:  # the session broke or the command timed out
        raise ConnectFailed(target.name, "install", f"the SSH session failed: {exc}") from None


def _said(result: asyncssh.SSHCompletedProcess) -> str:
    out = result.stderr or result.stdout or b""
    text = out.decode(errors="replace") if isinstance(out, bytes) else str(out)
    return text.strip()[-_OUTPUT_LIMIT:]
