"""The ``keyturn`` command: ``dev`` (the whole embedded stack), ``api``, ``worker``, ``request``,
``audit verify``."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import getpass
import json
import logging
import sys

import uvicorn

from keyturn.settings import Settings
from workflows.contracts import OPERATION_KINDS, TRIGGERS


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="keyturn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("dev", help="Temporal dev server + worker + HTTP API, persisted in ./var")
    sub.add_parser("api", help="the HTTP starter only (Temporal must be reachable)")
    sub.add_parser("worker", help="a worker only (same as python worker.py)")
    request = sub.add_parser("request", help="request an operation on a credential, print it")
    request.add_argument("credential_id")
    request.add_argument("--kind", default="change", choices=OPERATION_KINDS)
    request.add_argument("--trigger", default="manual", choices=TRIGGERS)
    audit = sub.add_parser("audit", help="the audit trail")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    audit_sub.add_parser("verify", help="check the hash chain; exit 1 naming the first break")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = Settings()
    if args.command == "audit":
        raise SystemExit(_verify_audit(settings))
    if args.command == "request":
        outcome = _request(settings, args.credential_id, args.kind, args.trigger)
        raise SystemExit(asyncio.run(outcome))
    if args.command == "dev":
        asyncio.run(_dev(settings))
    elif args.command == "api":
        from starter.app import create_app

        uvicorn.run(create_app(settings), host=settings.api_host, port=settings.api_port)
    else:
        import worker

        asyncio.run(worker.main(settings))


async def _request(settings: Settings, credential_id: str, kind: str, trigger: str) -> int:
    """The same request path as the HTTP API's; prints the operation as JSON."""
    from keyturn.temporal import connect
    from requesting import OperationRequest, RequestFailed, request_operation
    from store.engine import make_engine

    engine = make_engine(settings.resolved_database_url)
    try:
        requested = await request_operation(
            engine,
            await connect(settings),
            settings.task_queue,
            OperationRequest(credential_id, kind, trigger, requested_by=f"cli:{getpass.getuser()}"),
        )
    except RequestFailed as exc:
        print(f"keyturn request: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    print(json.dumps(dataclasses.asdict(requested)))
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
