"""The Temporal codec server, so the Web UI shows operation inputs and results (ids and
outcomes; payloads never hold a secret) instead of ciphertext.

``POST /codec/decode`` and ``/codec/encode`` take and give ``{"payloads": [...]}`` (the
protobuf JSON of ``temporal.api.common.v1.Payloads``) and need ``Authorization: Bearer`` with the
admin token or the codec token (``Settings.codec_token``). The Web UI cannot send a header it was
not configured with, so ``keyturn dev`` gives it ``/codec/ui/<codec token>`` as its endpoint: the
same two routes, with the codec token in the path.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any

from fastapi import APIRouter, Body, Request
from google.protobuf.json_format import MessageToDict, ParseDict, ParseError
from temporalio.api.common.v1 import Payloads

from keyturn.codec import EncryptionCodec
from starter.deps import AppState, State
from starter.problems import Problem

router = APIRouter()
_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "no valid token"},
    422: {"description": "the body is not a list of payloads, or one cannot be decoded"},
}
PayloadsJson = Annotated[dict[str, Any], Body(examples=[{"payloads": []}])]


@router.post("/codec/decode", responses=_RESPONSES)
async def decode(body: PayloadsJson, request: Request, app: State) -> dict[str, Any]:
    _authorize(app.settings.codec_token, app.settings.resolved_admin_token, _bearer(request))
    return await _convert(body, app, decode=True)


@router.post("/codec/encode", responses=_RESPONSES)
async def encode(body: PayloadsJson, request: Request, app: State) -> dict[str, Any]:
    _authorize(app.settings.codec_token, app.settings.resolved_admin_token, _bearer(request))
    return await _convert(body, app, decode=False)


@router.post("/codec/ui/{token}/decode", responses=_RESPONSES)
async def decode_for_ui(token: str, body: PayloadsJson, app: State) -> dict[str, Any]:
    _authorize(app.settings.codec_token, None, token)
    return await _convert(body, app, decode=True)


@router.post("/codec/ui/{token}/encode", responses=_RESPONSES)
async def encode_for_ui(token: str, body: PayloadsJson, app: State) -> dict[str, Any]:
    _authorize(app.settings.codec_token, None, token)
    return await _convert(body, app, decode=False)


def _bearer(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token if scheme.lower() == "bearer" else ""


def _authorize(codec_token: str, admin_token: str | None, given: str) -> None:
    allowed = [codec_token] + ([admin_token] if admin_token else [])
    if not given or not any(secrets.compare_digest(given.encode(), t.encode()) for t in allowed):
        raise Problem(401, "send 'Authorization: Bearer <token>' with the admin or codec token")


async def _convert(body: dict[str, Any], app: AppState, *, decode: bool) -> dict[str, Any]:
    try:
        payloads = ParseDict(body, Payloads())
    except ParseError as exc:
        raise Problem(422, f'send {{"payloads": [...]}} as Temporal does: {exc}') from None
    codec = EncryptionCodec(app.settings.keyring)
    try:
        converted = await (codec.decode if decode else codec.encode)(list(payloads.payloads))
    except ValueError as exc:
        raise Problem(422, f"a payload could not be decoded: {exc}") from None
    except Exception:  # e.g. InvalidTag: ciphertext altered or of another key
        raise Problem(422, "a payload could not be decrypted with this Keyturn's key") from None
    return {"payloads": [MessageToDict(p) for p in converted]}


def redact(path: str) -> str:
    """A request path as logs and the audit trail may show it: without a codec token."""
    prefix = "/codec/ui/"
    if not path.startswith(prefix):
        return path
    _token, _, rest = path[len(prefix) :].partition("/")
    return f"{prefix}<token>/{rest}"
