"""The ``keyturn`` command: ``dev`` (the whole embedded stack), ``api``, ``worker``."""

from __future__ import annotations

import argparse
import asyncio
import logging

import uvicorn

from keyturn.settings import Settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="keyturn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("dev", help="Temporal dev server + worker + HTTP API, persisted in ./var")
    sub.add_parser("api", help="the HTTP starter only (Temporal must be reachable)")
    sub.add_parser("worker", help="a worker only (same as python worker.py)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = Settings()
    if args.command == "dev":
        asyncio.run(_dev(settings))
    elif args.command == "api":
        from starter.app import create_app

        uvicorn.run(create_app(settings), host=settings.api_host, port=settings.api_port)
    else:
        import worker

        asyncio.run(worker.main(settings))


async def _dev(settings: Settings) -> None:
    from starter.devstack import run_dev

    await run_dev(settings)


if __name__ == "__main__":
    main()
