"""The dashboard: its figures (``GET /v1/dashboard``, with the token) and its page (``/ui/``,
one self-contained HTML file: no external asset, sign-in with the admin token)."""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse

from governance.dashboard import Summary, summary
from starter.authz import READERS, Caller, allow
from starter.deps import DB, StoreRoute

api = APIRouter(route_class=StoreRoute)
page = APIRouter()


@api.get("/dashboard", response_model=Summary)
def figures(db: DB, caller: Annotated[Caller, Depends(allow(*READERS))]) -> Summary:
    """Operations ended per hour over the last 24 h, failures by executor and device, operations
    in flight and queued, out-of-sync credentials with their last operation: of the caller's
    profiles."""
    return summary(db, profiles=caller.profiles)


@page.get("/ui/", response_class=HTMLResponse, include_in_schema=False)
def dashboard_page() -> HTMLResponse:
    html, policy = _page()
    return HTMLResponse(html, headers={"Content-Security-Policy": policy})


@functools.cache
def _page() -> tuple[str, str]:
    """The page and a Content-Security-Policy that allows its own inline script and style
    (by hash) and requests to this origin, nothing else."""
    html = resources.files("starter").joinpath("ui/index.html").read_text()
    hashes = {
        tag: " ".join(
            f"'sha256-{base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()}'"
            for body in re.findall(rf"<{tag}>(.*?)</{tag}>", html, re.DOTALL)
        )
        for tag in ("script", "style")
    }
    policy = (
        f"default-src 'none'; script-src {hashes['script']}; style-src {hashes['style']}; "
        "connect-src 'self'; img-src 'self' data:; form-action 'none'; base-uri 'none'; "
        "frame-ancestors 'none'"
    )
    return html, policy
