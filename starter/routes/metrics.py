"""``GET /metrics``: Prometheus text, without a token, as scrapers expect."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from governance.metrics import registry
from starter.deps import State

router = APIRouter()


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}},
)
def metrics(app: State) -> Response:
    """Operations by kind, trigger, executor and status; durations; out-of-sync credentials;
    queued and in-flight operations; lockout waits; SIEM outbox depth."""
    return Response(generate_latest(registry(app.engine)), media_type=CONTENT_TYPE_LATEST)
