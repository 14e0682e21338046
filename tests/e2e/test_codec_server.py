"""The codec endpoints decode a real history fetched from the Temporal server (ids and outcomes,
never a secret), answer the Web UI's origin, and refuse a request without a token."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx

from tests.e2e.conftest import Stack
from tests.e2e.helpers import credential, current_secret, policy, ssh_device
from tests.e2e.secrets_search import assert_no_secret
from tests.servers.sshd import Sshd, Users

OLD = "C0dec!old-secret"
UI_ORIGIN = "http://127.0.0.1:8233"


def _payloads(node: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        if "metadata" in node and "data" in node:
            found.append(node)
        for child in node.values():
            found += _payloads(child)
    elif isinstance(node, list):
        for child in node:
            found += _payloads(child)
    return found


def _anonymous(stack: Stack) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=stack.api._transport, base_url="http://keyturn.test")


async def test_the_codec_decodes_a_real_history(stack: Stack, sshd: Sshd, ssh_users: Users) -> None:
    user = ssh_users.create(OLD)
    device = await ssh_device(stack, sshd)
    pol = await policy(stack)
    cred = await credential(stack, device["id"], user, OLD, policy_id=pol["id"])
    operation = await stack.run_operation(cred["id"])
    history = await stack.client.get_workflow_handle(operation["workflow_id"]).fetch_history()
    # Search attributes stay plain (the server indexes them); every other payload is encrypted.
    encrypted = [
        p
        for p in _payloads(history.to_json_dict())
        if base64.b64decode(p["metadata"]["encoding"]) == b"binary/keyturn-aesgcm"
    ]
    assert len(encrypted) > 5

    response = await stack.api.post("/codec/decode", json={"payloads": encrypted})
    assert response.status_code == 200, response.text
    decoded = response.json()["payloads"]
    assert len(decoded) == len(encrypted)
    encodings = [base64.b64decode(p["metadata"]["encoding"]) for p in decoded]
    assert set(encodings) <= {b"json/plain", b"binary/null"}, encodings
    values = [
        json.loads(base64.b64decode(p["data"]))
        for p, encoding in zip(decoded, encodings, strict=True)
        if encoding == b"json/plain"
    ]
    assert any(isinstance(v, dict) and v.get("credential_id") == cred["id"] for v in values)
    assert any(isinstance(v, dict) and v.get("status") == "succeeded" for v in values)
    assert_no_secret(response.content, OLD, current_secret(stack, cred["id"]))

    # The Web UI's path form, with the codec token and from the UI's origin.
    token = stack.settings.codec_token
    async with _anonymous(stack) as ui:
        from_ui = await ui.post(
            f"/codec/ui/{token}/decode",
            json={"payloads": encrypted},
            headers={"Origin": UI_ORIGIN, "X-Namespace": "default"},
        )
        assert from_ui.status_code == 200 and from_ui.json() == response.json()
        assert from_ui.headers["access-control-allow-origin"] == UI_ORIGIN
        preflight = await ui.options(
            "/codec/decode",
            headers={
                "Origin": UI_ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type,x-namespace",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == UI_ORIGIN
        elsewhere = await ui.options(
            "/v1/devices",
            headers={"Origin": UI_ORIGIN, "Access-Control-Request-Method": "GET"},
        )
        assert "access-control-allow-origin" not in elsewhere.headers  # the API stays same-origin


async def test_encode_then_decode_is_the_identity(stack: Stack) -> None:
    plain = {
        "metadata": {"encoding": base64.b64encode(b"json/plain").decode()},
        "data": base64.b64encode(b'{"operation_id": "o1"}').decode(),
    }
    encoded = (await stack.post("/codec/encode", {"payloads": [plain]}, expect=200))["payloads"]
    assert encoded[0]["data"] != plain["data"]
    decoded = (await stack.post("/codec/decode", {"payloads": encoded}, expect=200))["payloads"]
    assert decoded == [plain]


async def test_the_codec_refuses_without_a_token(stack: Stack) -> None:
    body = {"payloads": [{"metadata": {"encoding": "anNvbi9wbGFpbg=="}, "data": "e30="}]}
    async with _anonymous(stack) as anonymous:
        for path, headers in [
            ("/codec/decode", {}),
            ("/codec/encode", {}),
            ("/codec/decode", {"Authorization": "Bearer wrong"}),
            ("/codec/ui/wrong-token/decode", {}),
            # The path form takes the codec token only, never the admin token.
            (f"/codec/ui/{stack.settings.resolved_admin_token}/decode", {}),
        ]:
            response = await anonymous.post(path, json=body, headers=headers)
            assert response.status_code == 401, path
            assert response.headers["content-type"] == "application/problem+json"
            assert "payloads" not in response.json()
    refused = (await stack.get("/v1/audit?event=api.refused&limit=1000"))["items"]
    assert stack.settings.resolved_admin_token not in json.dumps(refused)
    assert any(e["detail"]["path"] == "/codec/ui/<token>/decode" for e in refused)


async def test_the_codec_refuses_what_is_not_payloads(stack: Stack) -> None:
    for body in ({"payloads": "x"}, {"payloads": [{"metadata": "x"}]}, {"nope": 1}):
        response = await stack.api.post("/codec/decode", json=body)
        assert response.status_code == 422, body
    tampered = {
        "metadata": {
            "encoding": base64.b64encode(b"binary/keyturn-aesgcm").decode(),
            "encryption-key-id": base64.b64encode(b"0000000000000000").decode(),
        },
        "data": base64.b64encode(b"x" * 40).decode(),
    }
    response = await stack.api.post("/codec/decode", json={"payloads": [tampered]})
    assert response.status_code == 422
