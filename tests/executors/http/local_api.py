"""A tiny real HTTP API on loopback, for what RabbitMQ cannot show without extra setup.

RabbitMQ's management API does not do OAuth 2.0 unless its OAuth plugin and an identity provider
are configured, so the client-credentials flow is tested here against a stdlib ``http.server``
issuing tokens (RFC 6749 4.4) and a protected endpoint. The same server can serve over TLS with a
certificate from a throwaway CA (made with ``cryptography``), refuse a password by policy (echoing
it, to prove error messages redact it), or hang or drop the connection after reading a request.
"""

from __future__ import annotations

import base64
import json
import secrets
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

from tests.servers import tls

MIN_LENGTH = 8  # the API's "password policy"
HANG_SECONDS = 10.0


class LocalApi:
    """Accounts are OAuth clients: ``accounts[client_id] = secret``; the API changes them."""

    def __init__(self, tls_dir: Path | None = None) -> None:
        self.accounts: dict[str, str] = {}
        self.tokens: dict[str, str] = {}  # access token -> client id
        self.requests: list[tuple[str, str]] = []  # (method, raw path) of everything served
        self.release = threading.Event()  # ends a hanging request early at shutdown
        self.ca_file: Path | None = None
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:
                api.handle(self)

            def do_POST(self) -> None:
                api.handle(self)

            def do_PUT(self) -> None:
                api.handle(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.scheme = "http"
        if tls_dir is not None:
            self.scheme = "https"
            self._server.socket = _tls_context(tls_dir, self).wrap_socket(
                self._server.socket, server_side=True
            )
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> LocalApi:
        self._thread.start()
        return self

    def close(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # -- the API -------------------------------------------------------------------------------

    def handle(self, http: BaseHTTPRequestHandler) -> None:
        self.requests.append((http.command, http.path))
        length = int(http.headers.get("Content-Length") or 0)
        body = http.rfile.read(length) if length else b""
        route = http.path.split("?")[0]
        if route == "/token" and http.command == "POST":
            return self._token(http, body)
        if route == "/public/hang":  # hangs without asking who calls
            self.release.wait(HANG_SECONDS)
            return _answer(http, 200, {})
        client = self._caller(http.headers.get("Authorization", ""))
        if client is None:
            return _answer(http, 401, {"error": "unauthorized", "reason": "Login failed"})
        if route == "/api/me":
            return _answer(http, 200, {"name": client})
        if route == "/api/hang":
            self.release.wait(HANG_SECONDS)
            return _answer(http, 200, {})
        if route == "/api/drop":
            http.close_connection = True
            http.connection.close()
            return None
        if route == "/api/echo":
            # Quotes what it was sent back in an error, in the forms careless APIs use: the body
            # as text, inside JSON, base64 and hex, and the query string as received.
            text = body.decode("utf-8", "replace")
            return _answer(
                http,
                400,
                {
                    "error": f"cannot parse {text}",
                    "body": text,
                    "base64": base64.b64encode(body).decode(),
                    "hex": body.hex(),
                    "query": http.path.partition("?")[2],
                },
            )
        if route.startswith("/api/accounts/") and http.command == "PUT":
            name = unquote(route.removeprefix("/api/accounts/"))
            password = json.loads(body)["password"]
            if len(password) < MIN_LENGTH:
                # Echoes the refused password, as careless APIs do: the executor must redact it.
                return _answer(http, 422, {"error": "too short", "password": password})
            self.accounts[name] = password
            return _answer(http, 204, None)
        return _answer(http, 404, {"error": "not found"})

    def _token(self, http: BaseHTTPRequestHandler, body: bytes) -> None:
        form = {key: values[0] for key, values in parse_qs(body.decode()).items()}
        client = _basic_pair(http.headers.get("Authorization", ""))
        if client is None and "client_id" in form:
            client = (form["client_id"], form.get("client_secret", ""))
        if form.get("grant_type") != "client_credentials":
            return _answer(http, 400, {"error": "unsupported_grant_type"})
        if client is None or self.accounts.get(client[0]) != client[1]:
            return _answer(http, 401, {"error": "invalid_client"})
        token = secrets.token_urlsafe(16)
        self.tokens[token] = client[0]
        return _answer(http, 200, {"access_token": token, "token_type": "Bearer"})

    def _caller(self, authorization: str) -> str | None:
        if authorization.startswith("Bearer "):
            return self.tokens.get(authorization.removeprefix("Bearer "))
        pair = _basic_pair(authorization)
        if pair is not None and self.accounts.get(pair[0]) == pair[1]:
            return pair[0]
        return None


def _basic_pair(authorization: str) -> tuple[str, str] | None:
    if not authorization.startswith("Basic "):
        return None
    user, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
    return user, password


def _answer(http: BaseHTTPRequestHandler, status: int, document: object) -> None:
    payload = b"" if document is None else json.dumps(document).encode()
    http.send_response(status)
    if payload:
        http.send_header("Content-Type", "application/json")
    http.send_header("Content-Length", str(len(payload)))
    http.end_headers()
    http.wfile.write(payload)


def _tls_context(directory: Path, api: LocalApi) -> ssl.SSLContext:
    files = tls.issue(directory)
    api.ca_file = files.ca
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(files.cert, files.key)
    return context
