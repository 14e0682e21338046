"""The Temporal codec server, so the Web UI shows operation inputs and results (ids and
outcomes; payloads never hold a secret) instead of ciphertext.

``POST /codec/decode`` and ``/codec/encode`` take and give ``{"payloads": [...]}`` (the
protobuf JSON of ``temporal.api.common.v1.Payloads``) and need ``Authorization: Bearer`` with the
token of a principal who may read operations (admin, operator, auditor) or the codec token
(``Settings.codec_token``). The Web UI cannot send a header it was
not configured with, so ``keyturn dev`` gives it ``/codec/ui/<codec token>`` as its endpoint: the
same two routes, with the codec token in the path.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any

from fastapi import APIRouter, Body, Request
from fastapi.concurrency import run_in_threadpool
from google.protobuf.json_format import MessageToDict, ParseDict, ParseError
from temporalio.api.common.v1 import Payloads

from keyturn.codec import EncryptionCodec
from starter.authz import ADMIN, READERS, caller_of
from starter.deps import AppState, State
from starter.problems import Problem

router = APIRouter()
_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "no valid token"},
    403: {"description": "the token's principal may not read operations"},
    422: {"description": "the body is not a list of payloads, or one cannot be decoded"},
}
PayloadsJson = Annotated[dict[str, Any], Body(examples=[{"payloads": []}])]


@router.post("/codec/decode", responses=_RESPONSES)
async def decode(body: PayloadsJson, request: Request, app: State) -> dict[str, Any]:
    await _authorize_bearer(request, app)
    return await _convert(body, app, decode=True)


@router.post("/codec/encode", responses=_RESPONSES)
async def encode(body: PayloadsJson, request: Request, app: State) -> dict[str, Any]:
    await _authorize_bearer(request, app)
    return await _convert(body, app, decode=False)


@router.post("/codec/ui/{token}/decode", responses=_RESPONSES)
async def decode_for_ui(token: str, body: PayloadsJson, app: State) -> dict[str, Any]:
    _authorize(app.settings.codec_token, token)
    return await _convert(body, app, decode=True)


@router.post("/codec/ui/{token}/encode", responses=_RESPONSES)
async def encode_for_ui(token: str, body: PayloadsJson, app: State) -> dict[str, Any]:
    _authorize(app.settings.codec_token, token)
    return await _convert(body, app, decode=False)


def _bearer(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token if scheme.lower() == "bearer" else ""


async def _authorize_bearer(request: Request, app: AppState) -> None:
    """The codec token, or the token of a principal who may read operations."""
    given = _bearer(request)
    if given and secrets.compare_digest(given.encode(), app.settings.codec_token.encode()):
        return
    if not given:
        raise Problem(401, "send 'Authorization: Bearer <token>' with your API or the codec token")
    caller = await run_in_threadpool(caller_of, request, app, given)  # reads the store
    if caller.role not in (ADMIN, *READERS):
        raise Problem(403, f"role {caller.role} may not decode payloads: admin, operator, auditor")


def _authorize(codec_token: str, given: str) -> None:
    if not given or not secrets.compare_digest(given.encode(), codec_token.encode()):
        raise Problem(401, "the codec token in the path is not valid")


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
