"""Every list is paged the same way: ``?limit=&cursor=`` in, ``{items, next_cursor}`` out.

The list routes are found in the app's own OpenAPI, so a list added later that answers a bare
array, or pages another way, fails here.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Stack
from tests.e2e.helpers import credential, policy, ssh_device
from tests.servers.sshd import Sshd, Users


def list_routes(spec: dict[str, Any]) -> list[str]:
    """Paths whose GET takes a cursor: every list."""
    return [
        path
        for path, methods in spec["paths"].items()
        if "get" in methods
        and any(p["name"] == "cursor" for p in methods["get"].get("parameters", []))
    ]


async def test_no_list_answers_a_bare_array_and_every_list_takes_limit_and_cursor(
    stack: Stack,
) -> None:
    spec = (await stack.api.get("/openapi.json")).json()
    paged = set(list_routes(spec))
    for path, methods in spec["paths"].items():
        if "get" not in methods or not path.startswith("/v1/"):
            continue
        content = methods["get"]["responses"]["200"]["content"]
        if "application/json" not in content:
            continue  # a document in a format of its own (a CA's CRL, DER) is not a list
        ok = content["application/json"]["schema"]
        schema = _resolve(spec, ok)
        assert schema.get("type") != "array", f"GET {path} answers a bare array"
        if "items" in schema.get("properties", {}):
            assert path in paged, f"GET {path} lists items but takes no cursor"
            assert {"items", "next_cursor"} <= set(schema["properties"]), path
            names = {p["name"] for p in methods["get"]["parameters"]}
            assert {"limit", "cursor"} <= names, path
    assert {
        "/v1/devices",
        "/v1/policies",
        "/v1/templates",
        "/v1/credentials",
        "/v1/executors",
        "/v1/operations",
        "/v1/credentials/{credential_id}/operations",
        "/v1/credentials/{credential_id}/versions",
        "/v1/audit",
        "/v1/certificates",
    } <= paged


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:
        resolved: dict[str, Any] = spec["components"]["schemas"][schema["$ref"].split("/")[-1]]
        return resolved
    return schema


def key(item: dict[str, Any]) -> str:
    return str(item.get("id") or item["name"])


async def test_paging_through_each_list_sees_every_item_once_in_order(
    stack: Stack, sshd: Sshd, ssh_users: Users
) -> None:
    device = await ssh_device(stack, sshd)
    await policy(stack)
    cred = await credential(stack, device["id"], ssh_users.create("Pw-page-1"), "Pw-page-1")
    for kind in ("verify", "change", "verify"):
        await stack.run_operation(cred["id"], kind)
    for path in (
        "/v1/devices",
        "/v1/policies",
        "/v1/templates",
        "/v1/credentials",
        "/v1/executors",
        f"/v1/operations?device_id={device['id']}",
        f"/v1/credentials/{cred['id']}/operations",
        f"/v1/credentials/{cred['id']}/versions",
    ):
        base, _, query = path.partition("?")
        whole = await stack.get(f"{base}?{query}&limit=500" if query else f"{base}?limit=500")
        assert whole["next_cursor"] is None, f"{path}: more than 500, the test cannot compare"
        assert whole["items"], path
        by_one = await walk_with(stack, base, query, 1)
        by_two = await walk_with(stack, base, query, 2)
        assert [key(i) for i in by_one] == [key(i) for i in whole["items"]], path
        assert by_two == by_one, path


async def walk_with(stack: Stack, base: str, query: str, limit: int) -> list[Any]:
    items: list[Any] = []
    cursor: str | None = None
    while True:
        params = dict(httpx.QueryParams(query))
        params |= {"limit": str(limit), **({"cursor": cursor} if cursor else {})}
        page = await stack.get(f"{base}?{httpx.QueryParams(params)}")
        assert set(page) == {"items", "next_cursor"}, page
        assert len(page["items"]) <= limit
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items


@pytest.mark.parametrize(
    "params, field",
    [
        ({"cursor": "not a cursor"}, "cursor"),
        ({"cursor": "WzFd"}, "cursor"),  # base64 of [1]: a cursor of another list's shape
        ({"cursor": "WyJ4IiwgInkiXQ=="}, "cursor"),  # ["x", "y"]: no time where one belongs
        ({"limit": "0"}, "limit"),
        ({"limit": "501"}, "limit"),
    ],
)
@pytest.mark.parametrize(
    "path", ["/v1/devices", "/v1/policies", "/v1/templates", "/v1/credentials"]
)
async def test_a_bad_limit_or_cursor_is_a_problem(
    stack: Stack, path: str, params: dict[str, str], field: str
) -> None:
    answer = await stack.api.get(path, params=params)
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert field in answer.text
