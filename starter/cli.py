"""The ``keyturn`` command: ``dev`` (the whole embedded stack), ``api``, ``worker``, ``request``,
``backup``, ``restore``, ``rotate-key``, ``audit verify``, ``ca init``."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import getpass
import json
import logging
import os
import sys
from pathlib import Path
from typing import NoReturn

import uvicorn

from keyturn.logs import configure_logging
from keyturn.settings import Settings
from requesting.chosen import SecretChoice
from workflows.contracts import CLIENT_TRIGGERS, OPERATION_KINDS


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="keyturn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("dev", help="Temporal dev server + worker + HTTP API, persisted in ./var")
    sub.add_parser("api", help="the HTTP starter only (Temporal must be reachable)")
    sub.add_parser("worker", help="a worker only (same as python worker.py)")
    request = sub.add_parser("request", help="request an operation on a credential, print it")
    request.add_argument("credential_id")
    request.add_argument("--kind", default="change", choices=OPERATION_KINDS)
    request.add_argument("--trigger", default="manual", choices=CLIENT_TRIGGERS)
    request.add_argument("--version-id", help="adopt: the secret version to make current")
    request.add_argument(
        "--secret-stdin",
        action="store_true",
        help="read the secret from stdin: set-in-vault's password, or a change's next password",
    )
    request.add_argument(
        "--ttl-seconds", type=int, help="jit-create: how long the account lives once created"
    )
    backup = sub.add_parser("backup", help="write the store and master key to FILE, encrypted")
    backup.add_argument("file", type=Path)
    restore = sub.add_parser("restore", help="restore FILE into an empty data directory")
    restore.add_argument("file", type=Path)
    rotate = sub.add_parser(
        "rotate-key", help="a new master key; every secret re-encrypted with it"
    )
    rotate.add_argument(
        "--forget-old",
        action="store_true",
        help="remove the older keys, once no open workflow holds a payload they sealed",
    )
    sub.add_parser("migrate", help="bring the store's schema up to date (starting does it too)")
    ca = sub.add_parser("ca", help="certificate authorities")
    ca_sub = ca.add_subparsers(dest="ca_command", required=True)
    ca_init = ca_sub.add_parser(
        "init", help="make a CA whose key Keyturn holds (sealed in the vault); print its cert"
    )
    ca_init.add_argument("--name", default="internal", help="what certificates name as their ca")
    ca_init.add_argument("--plugin", default="internal", help="the CA plugin (keyturn.cas)")
    ca_init.add_argument("--subject", help="the CA's distinguished name (CN=…)")
    ca_init.add_argument("--validity-days", type=int, help="how long the CA's certificate lasts")
    audit = sub.add_parser("audit", help="the audit trail")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    audit_sub.add_parser("verify", help="check the hash chain; exit 1 naming the first break")
    args = parser.parse_args(argv)
    configure_logging()
    settings = Settings()
    if args.command == "audit":
        raise SystemExit(_verify_audit(settings))
    if args.command == "migrate":
        raise SystemExit(_migrate(settings))
    if args.command == "ca":
        raise SystemExit(_init_ca(settings, args))
    if args.command == "request":
        choice = _secret_choice(args.kind, args.version_id, args.secret_stdin)
        outcome = _request(
            settings, args.credential_id, args.kind, args.trigger, choice, args.ttl_seconds
        )
        _exit_now(asyncio.run(outcome))
    if args.command == "rotate-key":
        _exit_now(asyncio.run(_rotate_key(settings, args.forget_old)))
    if args.command in ("backup", "restore"):
        raise SystemExit(_backup_or_restore(settings, args.command, args.file))
    if args.command == "dev":
        asyncio.run(_dev(settings))
    elif args.command == "api":
        from starter.app import create_app

        uvicorn.run(create_app(settings), host=settings.api_host, port=settings.api_port)
    else:
        import worker

        asyncio.run(worker.main(settings))


def _init_ca(settings: Settings, args: argparse.Namespace) -> int:
    from starter.ca_commands import CaCommandFailed, init_ca

    config: dict[str, object] = {}
    if args.subject:
        config["subject"] = args.subject
    if args.validity_days is not None:
        config["validity_days"] = args.validity_days
    try:
        print(init_ca(settings, args.name, args.plugin, config), end="")
    except CaCommandFailed as exc:
        print(f"keyturn ca init: {exc}", file=sys.stderr)
        return 1
    return 0


def _exit_now(code: int) -> NoReturn:
    """Exit without interpreter teardown: the Temporal client's native threads outlive the
    event loop, and finalising Python under them now and then kills a short-lived process with
    SIGSEGV after its work is done (temporalio/sdk-python issue 300). Nothing is left to run:
    the outcome is printed, the store's connections are closed."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _secret_choice(kind: str, version_id: str | None, secret_stdin: bool) -> SecretChoice:
    """What the request names to act with; a secret is read from stdin, never an argument
    (arguments are visible to every user of the machine)."""
    secret = sys.stdin.readline().rstrip("\n") if secret_stdin else None
    return SecretChoice(
        version_id=version_id,
        password=secret if kind == "set-in-vault" else None,
        next_password=secret if kind != "set-in-vault" else None,
    )


def _backup_or_restore(settings: Settings, command: str, file: Path) -> int:
    from starter.backup_commands import CommandFailed, backup, restore
    from store.snapshot import SnapshotFailed

    try:
        print(backup(settings, file) if command == "backup" else restore(settings, file))
    except (CommandFailed, SnapshotFailed) as exc:
        print(f"keyturn {command}: {exc}", file=sys.stderr)
        return 1
    return 0


async def _request(
    settings: Settings,
    credential_id: str,
    kind: str,
    trigger: str,
    choice: SecretChoice,
    ttl_seconds: int | None = None,
) -> int:
    """The same request path as the HTTP API's; prints the operation as JSON."""
    from keyturn.temporal import connect
    from requesting import OperationRequest, RequestFailed, request_operation
    from store.engine import make_engine
    from store.vault import Vault

    engine = make_engine(settings.resolved_database_url)
    try:
        requested = await request_operation(
            engine,
            await connect(settings),
            settings.task_queue,
            OperationRequest(
                credential_id,
                kind,
                trigger,
                choice,
                requested_by=f"cli:{getpass.getuser()}",
                ttl_seconds=ttl_seconds,
            ),
            Vault(settings.keyring),
        )
    except RequestFailed as exc:
        print(f"keyturn request: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    print(json.dumps(dataclasses.asdict(requested)))
    return 0


async def _rotate_key(settings: Settings, forget_old: bool) -> int:
    from keyturn.temporal import connect
    from starter.key_rotation import RotationRefused, forget_old_keys, rotate

    try:
        if forget_old:
            print(await forget_old_keys(settings, await connect(settings)))
        else:
            print(await asyncio.to_thread(rotate, settings))
    except RotationRefused as exc:
        print(f"keyturn rotate-key: {exc}", file=sys.stderr)
        return 1
    return 0


def _migrate(settings: Settings) -> int:
    from store.engine import make_engine
    from store.migrations import current_version, revision_of

    engine = make_engine(settings.resolved_database_url)  # migrates, as every start does
    try:
        version = current_version(engine)
    finally:
        engine.dispose()
    print(f"keyturn migrate: the store is at schema version {version} ({revision_of(version)})")
    return 0


def _verify_audit(settings: Settings) -> int:
    from store.audit import verify
    from store.engine import make_engine

    engine = make_engine(settings.resolved_database_url)
    try:
        checked, broken = verify(engine)
    finally:
        engine.dispose()
    if broken is not None:
        print(
            f"keyturn audit verify: the chain breaks at event {broken.event_id}: {broken.reason} "
            f"({checked} events before it check out)",
            file=sys.stderr,
        )
        return 1
    print(f"audit trail intact: {checked} events")
    return 0


async def _dev(settings: Settings) -> None:
    from starter.devstack import run_dev

    await run_dev(settings)


if __name__ == "__main__":
    main()
