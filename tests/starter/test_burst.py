"""A burst of operation requests against ``keyturn dev``: one change per credential, all at once.

The real command runs in a subprocess (tests/starter/conftest.py) and changes real passwords of
throwaway users on the test sshd. The figures printed (``pytest -s``) are observations, not a
benchmark: the deadlines are generous and only catch a stack that stops answering.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import APIRouter

from starter.deps import DB, StoreRoute
from tests.servers.sshd import Sshd, Users
from tests.starter.conftest import STOP_TIMEOUT, DevStack

CREDENTIALS = 200
# The device's max_concurrent_operations: most of the burst waits for a slot, as on a real
# device. Waiting for a slot holds nothing on the worker (the device's semaphore workflow
# signals the waiter), so the waiters never starve the operations that hold the slots.
DEVICE_SLOTS = 20
ANSWER_DEADLINE = 60.0  # from the first request of the burst to its last answer
DOCS_DEADLINE = 15.0  # GET /docs sent while the burst is in flight
END_DEADLINE = 150.0  # from the last answer until every operation has ended
POLL_INTERVAL = 0.25
READ_BURSTS = 2  # every operation and every credential read at once, this many times
KEEPALIVE_EXPIRY = 2.0
SIGINT_LATEST = 15.0  # Ctrl-C mid-burst: once a quarter is answered, or after this at the latest
TERMINAL = {"succeeded", "failed", "canceled"}
FAST_RETRIES = {"max_attempts": 3, "retry_interval_seconds": 0.3, "backoff": 1.0}


class Burst:
    """One change request per credential, all at once, and what it looked like from the client
    (seconds since its first request). ``sent`` is set once every request is on its way."""

    def __init__(self, api: httpx.AsyncClient, credentials: list[str]) -> None:
        self.credentials = credentials
        self.sent = asyncio.Event()
        self.quarter_answered = asyncio.Event()
        self.at_quarter: Callable[[], None] | None = None  # called as the quarter is answered
        self.answers: list[float] = []
        self.docs: list[float] = []  # how long each GET /docs took during the burst
        self._requests = 0
        self._started = time.monotonic()
        api.event_hooks["request"] = [self._on_request]
        self.task = asyncio.create_task(self._run(api))

    async def _on_request(self, request: httpx.Request) -> None:
        if request.url.path.endswith("/operations"):
            self._requests += 1
            if self._requests == len(self.credentials):
                self.sent.set()

    async def _run(self, api: httpx.AsyncClient) -> list[httpx.Response | BaseException]:
        async def request(credential_id: str) -> httpx.Response:
            response = await api.post(
                f"/v1/credentials/{credential_id}/operations", json={"kind": "change"}
            )
            self.answers.append(self.now())
            if len(self.answers) == len(self.credentials) // 4:
                self.quarter_answered.set()
                if self.at_quarter is not None:
                    self.at_quarter()
            return response

        return await asyncio.gather(*(request(c) for c in self.credentials), return_exceptions=True)

    def now(self) -> float:
        return time.monotonic() - self._started

    def __str__(self) -> str:
        last = f"last at {max(self.answers):.1f}s" if self.answers else "none"
        answered = f"{len(self.answers)}/{len(self.credentials)} answered ({last})"
        if not self.docs:
            return answered
        return (
            f"{answered}; GET /docs answered {len(self.docs)} times, slowest {max(self.docs):.2f}s"
        )

    async def watch_docs(self, url: str) -> None:
        """GET /docs again and again while the burst is in flight: each must answer in time."""
        async with httpx.AsyncClient(timeout=None) as client:  # asyncio.timeout bounds it
            while not self.task.done():
                began = time.monotonic()
                try:
                    async with asyncio.timeout(DOCS_DEADLINE):
                        response = await client.get(url)
                except TimeoutError:
                    raise AssertionError(
                        f"GET /docs unanswered after {DOCS_DEADLINE}s at {self.now():.1f}s: {self}"
                    ) from None
                assert response.status_code == 200, response.text
                self.docs.append(time.monotonic() - began)
                await asyncio.sleep(POLL_INTERVAL)


def _client(stack: DevStack, connections: int, keepalive: bool = True) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=stack.api,
        headers={"Authorization": f"Bearer {stack.token}"},
        limits=httpx.Limits(
            max_connections=connections,
            # Reads of a burst each on a connection of their own: none can be one the server
            # is closing for idleness while a slow loop hands it over.
            max_keepalive_connections=connections if keepalive else 0,
            # Below uvicorn's keep-alive timeout (5 s, httpx's default expiry too): never reuse a
            # connection the server is closing at that very moment.
            keepalive_expiry=KEEPALIVE_EXPIRY,
        ),
        timeout=httpx.Timeout(ANSWER_DEADLINE + END_DEADLINE),
    )


def _make_users(users: Users, count: int) -> list[tuple[str, str]]:
    made = []
    for _ in range(count):
        password = secrets.token_urlsafe(12)
        made.append((users.create(password), password))
    return made


async def _setup(
    sshd: Sshd, users: Users, dev_env: dict[str, str], start_dev: type[DevStack], count: int
) -> tuple[DevStack, list[str]]:
    """``count`` throwaway users, ``keyturn dev`` started, one ssh device and a credential each."""
    began = time.monotonic()
    accounts = await asyncio.to_thread(_make_users, users, count)
    print(f"\n{count} users created in {time.monotonic() - began:.1f}s")
    stack = await asyncio.to_thread(start_dev, dev_env)
    async with _client(stack, 10) as api:

        async def post(path: str, body: dict[str, Any]) -> str:
            response = await api.post(path, json=body)
            assert response.status_code == 201, response.text
            created: str = response.json()["id"]
            return created

        device = await post(
            "/v1/devices",
            {
                "name": "burst-target",
                "address": "127.0.0.1",
                "port": sshd.port,
                "executor": "ssh",
                "host_keys": [sshd.host_key_line],
                "max_concurrent_operations": DEVICE_SLOTS,
            },
        )
        policy = await post("/v1/policies", {"name": "burst", **FAST_RETRIES})
        credentials = [
            await post(
                "/v1/credentials",
                {"device_id": device, "username": name, "password": pw, "policy_id": policy},
            )
            for name, pw in accounts
        ]
    return stack, credentials


async def _until_ended(api: httpx.AsyncClient, operations: list[str]) -> dict[str, str]:
    """Poll GET /v1/operations/{id} until every operation has a terminal status; those statuses.

    One at a time, in the order they were requested (roughly the order they end in): whichever
    ends last is waited for once, and the requests cost the stack little while it works."""
    ended: dict[str, str] = {}
    for operation_id in operations:
        while operation_id not in ended:
            answer = await api.get(f"/v1/operations/{operation_id}")
            assert answer.status_code == 200, answer.text
            if answer.json()["status"] in TERMINAL:
                ended[operation_id] = answer.json()["status"]
            else:
                await asyncio.sleep(POLL_INTERVAL)
    return ended


async def test_a_burst_of_operation_requests_is_answered_and_every_operation_ends(
    sshd: Sshd, ssh_users: Users, dev_env: dict[str, str], start_dev: type[DevStack]
) -> None:
    stack, credentials = await _setup(sshd, ssh_users, dev_env, start_dev, CREDENTIALS)
    async with _client(stack, CREDENTIALS + 10) as api:
        burst = Burst(api, credentials)
        try:
            async with asyncio.timeout(ANSWER_DEADLINE):
                await burst.sent.wait()
                results, _ = await asyncio.gather(burst.task, burst.watch_docs(f"{stack.api}/docs"))
        except (TimeoutError, AssertionError) as exc:
            burst.task.cancel()
            problem = str(exc) or f"the burst was not answered in {ANSWER_DEADLINE}s: {burst}"
            raise AssertionError(f"{problem}\n{stack.output_tail()}") from None
        assert burst.docs, "GET /docs was never sent during the burst"
        print(f"burst of {CREDENTIALS}: {burst}")
        statuses = Counter(
            r.status_code if isinstance(r, httpx.Response) else type(r).__name__ for r in results
        )
        assert statuses == {202: CREDENTIALS}, statuses
        operations = [r.json()["operation_id"] for r in results if isinstance(r, httpx.Response)]

        try:
            async with asyncio.timeout(END_DEADLINE):
                ended = await _until_ended(api, operations)
        except TimeoutError:
            raise AssertionError(
                f"operations still running {END_DEADLINE}s after the burst\n{stack.output_tail()}"
            ) from None
        except httpx.TransportError as exc:
            raise AssertionError(f"{exc!r}\n{stack.output_tail()}") from exc
        print(f"all {CREDENTIALS} ended at {burst.now():.1f}s: {Counter(ended.values())}")
        assert Counter(ended.values()) == {"succeeded": CREDENTIALS}

    # Bursts of reads too, sync routes: every operation and its credential at once. A route's
    # store session must not outlive the route (the response is validated in the thread pool).
    reads = [f"/v1/operations/{o}" for o in operations]
    reads += [f"/v1/credentials/{c}" for c in credentials]
    began = time.monotonic()
    async with _client(stack, len(reads) + 10, keepalive=False) as api:
        try:
            async with asyncio.timeout(ANSWER_DEADLINE):
                for _ in range(READ_BURSTS):
                    answers = await asyncio.gather(*(api.get(path) for path in reads))
                    assert Counter(a.status_code for a in answers) == {200: len(reads)}
        except TimeoutError:
            raise AssertionError(
                f"{READ_BURSTS} bursts of {len(reads)} reads not answered in {ANSWER_DEADLINE}s"
                f"\n{stack.output_tail()}"
            ) from None
    print(f"{READ_BURSTS} bursts of {len(reads)} reads in {time.monotonic() - began:.1f}s")

    began = time.monotonic()
    assert await asyncio.to_thread(stack.stop) == 0, stack.output_tail()
    print(f"stopped {time.monotonic() - began:.1f}s after SIGINT")


async def test_sigint_in_the_middle_of_a_burst_stops_keyturn_dev(
    sshd: Sshd, ssh_users: Users, dev_env: dict[str, str], start_dev: type[DevStack]
) -> None:
    stack, credentials = await _setup(sshd, ssh_users, dev_env, start_dev, CREDENTIALS // 2)
    async with _client(stack, len(credentials) + 10) as api:
        burst = Burst(api, credentials)
        interrupted: list[tuple[str, float]] = []

        def interrupt() -> None:  # Ctrl-C with a quarter answered: the rest are in flight
            at = f"SIGINT at {burst.now():.1f}s with {len(burst.answers)} answered"
            interrupted.append((at, time.monotonic()))
            stack.interrupt()

        burst.at_quarter = interrupt
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SIGINT_LATEST):
                await burst.quarter_answered.wait()
        if not interrupted:  # a stack that answers nothing gets its Ctrl-C all the same
            interrupt()
        at, began = interrupted[0]
        try:
            code = await asyncio.to_thread(stack.wait)
        except subprocess.TimeoutExpired:
            burst.task.cancel()
            raise AssertionError(
                f"{at}: keyturn dev still runs {STOP_TIMEOUT}s later ({burst})\n"
                f"{stack.output_tail()}"
            ) from None
        print(f"\n{at}; exited {time.monotonic() - began:.1f}s later ({burst})")
        assert code == 0, stack.output_tail()
        results = await burst.task
    for result in results:  # answered before the API closed, or refused once it had
        assert isinstance(result, httpx.TransportError) or (
            isinstance(result, httpx.Response) and result.status_code == 202
        ), result


def test_an_async_route_may_not_take_a_store_session() -> None:
    router = APIRouter(route_class=StoreRoute)
    with pytest.raises(TypeError, match="in_thread"):

        @router.get("/held-across-an-await")
        async def held(db: DB) -> None:
            """Would hold a connection while it awaits, and query the store from the loop."""
