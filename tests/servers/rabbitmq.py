"""RabbitMQ's management API on 127.0.0.1:15672, the http executor's real peer.

RabbitMQ runs as a system service (scripts/setup-test-deps enables the management plugin); the
tests do not start it, they wait for its API to answer. Users are created and deleted through the
same API as ``guest``, who is an administrator and may log in from loopback only.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import httpx

BASE_URL = "http://127.0.0.1:15672"
ADMIN = ("guest", "guest")
READY_DEADLINE = 60.0


def _path(name: str) -> str:
    return f"/api/users/{quote(name, safe='')}"


class RabbitMQ:
    """A client for the management API as the built-in administrator."""

    def __init__(self, base_url: str = BASE_URL) -> None:
        self.base_url = base_url
        self._client = httpx.Client(base_url=base_url, auth=ADMIN, timeout=10.0, trust_env=False)
        self.ready_after: float | None = None  # seconds the API took to answer

    def wait_ready(self, deadline: float = READY_DEADLINE) -> float:
        """Poll until the API answers as guest; the seconds it took. Fails with what it saw."""
        started = time.monotonic()
        last = "no answer yet"
        while True:
            try:
                response = self._client.get("/api/overview")
                if response.status_code == 200:
                    self.ready_after = time.monotonic() - started
                    return self.ready_after
                last = f"{response.status_code} {response.text[:200]}"
            except httpx.HTTPError as exc:
                last = str(exc) or type(exc).__name__
            if time.monotonic() - started > deadline:
                raise RuntimeError(
                    f"RabbitMQ's management API at {self.base_url} did not answer within "
                    f"{deadline:g}s ({last}); start rabbitmq-server and run scripts/setup-test-deps"
                )
            time.sleep(0.2)

    def close(self) -> None:
        self._client.close()

    def put_user(self, name: str, password: str, tags: list[str]) -> None:
        response = self._client.put(_path(name), json={"password": password, "tags": tags})
        assert response.status_code in (201, 204), response.text

    def delete_user(self, name: str) -> None:
        response = self._client.delete(_path(name))
        assert response.status_code in (204, 404), response.text

    def user(self, name: str) -> dict[str, Any]:
        response = self._client.get(_path(name))
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    def user_names(self) -> set[str]:
        response = self._client.get("/api/users")
        assert response.status_code == 200, response.text
        return {user["name"] for user in response.json()}

    def password_works(self, name: str, password: str) -> bool:
        """Does ``password`` log ``name`` in? (GET /api/whoami as that user.)"""
        with httpx.Client(base_url=self.base_url, timeout=10.0, trust_env=False) as client:
            response = client.get("/api/whoami", auth=(name, password))
        if response.status_code == 200:
            assert response.json()["name"] == name
            return True
        # 401 "Not management user" means the password was right but the user has no tags.
        assert response.status_code == 401, response.text
        return "Not management user" in response.text


class RabbitUsers:
    """Throwaway users; every one created here is deleted at cleanup."""

    def __init__(self, rabbitmq: RabbitMQ) -> None:
        self._rabbitmq = rabbitmq
        self._created: list[str] = []

    def create(
        self, password: str, tags: tuple[str, ...] = ("management",), name: str | None = None
    ) -> str:
        name = name or f"kt-{secrets.token_hex(4)}"
        self._created.append(name)
        self._rabbitmq.put_user(name, password, list(tags))
        return name

    def cleanup(self) -> None:
        for name in self._created:
            self._rabbitmq.delete_user(name)
        self._created.clear()


# The bodies of the fixtures that the executor tests and the end-to-end tests each declare (at
# their own scope).


@contextmanager
def running_rabbitmq() -> Iterator[RabbitMQ]:
    server = RabbitMQ()
    server.wait_ready()
    try:
        yield server
    finally:
        server.close()


@contextmanager
def users_on(server: RabbitMQ) -> Iterator[RabbitUsers]:
    users = RabbitUsers(server)
    try:
        yield users
    finally:
        users.cleanup()
