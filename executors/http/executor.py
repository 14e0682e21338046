"""The http executor: a sequence of HTTP requests against a web API (RabbitMQ's management API,
say), authenticated as the connecting account.

Device options: ``base_url`` (else ``<scheme>://<address>:<port>``, scheme option default https),
``verify_tls`` (default true) and ``ca_file`` (a private CA), ``auth`` (``basic`` default,
``bearer`` — the account's password is the token —, or ``oauth2_client_credentials`` with
``token_url``, optional ``scope`` and ``client_auth``: ``basic`` default or ``body``), and
``login_path`` (what a bare login check GETs; without it, the shipped verify template runs).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import httpx

from executors.base import (
    Account,
    AuthenticationFailed,
    ChangeRejected,
    ConfigurationError,
    ConnectFailed,
    ExecutorError,
    HostKeyMismatch,
    LoginProgress,
    LoginRequest,
    LoginResult,
    OutcomeUnknown,
    RunRequest,
    RunResult,
    Target,
    TemplateFailed,
    check_target,
    redact,
)
from executors.common import masked, parse_template, request_secrets
from executors.http.script import (
    SYNTAX,
    Request,
    Source,
    as_value,
    find_json,
    header_value,
    plain,
    render_body,
    url_segment,
    validate_script,
)
from templating import TemplateContext, TemplateSyntaxProblem, render

Escape = Callable[[object], str]
AUTH_MODES = ("basic", "bearer", "oauth2_client_credentials")
CLIENT_AUTH_MODES = ("basic", "body")


@dataclass(frozen=True)
class HttpSettings:
    """The device's options, checked once per call, before anything is sent."""

    base_url: str
    verify: ssl.SSLContext | bool
    auth: str
    token_url: str
    scope: str
    client_auth: str
    login_path: str | None


class HttpExecutor:
    name: ClassVar[str] = "http"
    username_forbids: ClassVar[str] = ":"  # HTTP Basic joins user and password with one (RFC 7617)
    syntax: ClassVar[str] = SYNTAX
    # RabbitMQ's management API lets no one but an administrator change a password, not even
    # their own: "change" is the self-change of an administrator, "change-as-admin" the usual one.
    default_templates: ClassVar[dict[str, str]] = {
        "change": "http/rabbitmq-change-self",
        "change-as-admin": "http/rabbitmq-change-admin",
        "verify": "http/rabbitmq-verify",
        "jit-create": "http/rabbitmq-create-user",
        "jit-remove": "http/rabbitmq-delete-user",
    }
    default_port: ClassVar[int] = 443

    def validate(self, template: str) -> None:
        validate_script(template)

    def check_target(self, target: Target) -> None:
        settings_for(target)

    def insecure_transport(self, target: Target) -> str | None:
        settings = settings_for(target)
        for name, url in (("base_url", settings.base_url), ("token_url", settings.token_url)):
            if url and httpx.URL(url).scheme == "http":
                return f"{name} {url!r} is plain http"
        if settings.verify is False:
            return "option 'verify_tls' is false: the server's certificate is not checked"
        return None

    async def run(self, request: RunRequest) -> RunResult:
        check_target(self, request.target)  # options and transport, before anything
        requests = parse_template(request.target, request.template, validate_script)
        settings = settings_for(request.target)
        session = Session(request.target, settings, request.account, request.context)
        return RunResult(transcript=await session.run(requests))

    async def check_login(self, request: LoginRequest) -> LoginResult:
        check_target(self, request.target)  # options and transport, before anything
        target, account = request.target, request.account
        settings = settings_for(target)
        context = request.context or _bare_context(target, account)
        if request.template is not None:
            requests = parse_template(target, request.template, validate_script)
        elif settings.login_path is not None:
            requests = [Request(line=1, method="GET", path=Source(1, settings.login_path))]
        else:
            shipped = _shipped(target, self.default_templates["verify"])
            requests = parse_template(target, shipped, validate_script)
        session = Session(target, settings, account, context)
        try:
            transcript = await session.run(requests)
        except AuthenticationFailed as exc:
            if exc.login is not LoginProgress.REFUSED:
                raise
            return LoginResult(ok=False, transcript=exc.transcript)
        return LoginResult(ok=True, transcript=transcript)


def _bare_context(target: Target, account: Account) -> TemplateContext:
    """For a login check without a context: only who and where (the account's password is
    still redacted, as the session adds it to the secrets)."""
    return TemplateContext(
        username=account.username,
        current_password="",
        new_password="",
        hostname=target.name,
        address=target.address,
        port=target.port,
    )


def _shipped(target: Target, name: str) -> str:
    from executors.shipped import shipped_templates  # reads package files: only when needed

    for template in shipped_templates():
        if template.name == name:
            return template.body
    raise ConfigurationError(
        target.name,
        "template",
        f"the shipped template {name!r} is missing from the installed package: reinstall "
        "Keyturn, or give the device a 'login_path' option",
    )


def settings_for(target: Target) -> HttpSettings:
    options: dict[str, Any] = dict(target.options)

    def bad(message: str) -> ConfigurationError:
        return ConfigurationError(
            target.name,
            "device options",
            f"device {target.name!r}: {message}; fix the device's options",
        )

    def text(key: str, default: str = "") -> str:
        value = options.get(key, default)
        if value is None:
            return default
        if not isinstance(value, str):
            raise bad(f"option {key!r} must be a string, got {value!r}")
        return value

    host = f"[{target.address}]" if ":" in target.address else target.address
    scheme = text("scheme", "https")
    base_url = text("base_url") or f"{scheme}://{host}:{target.port}"
    try:
        parsed = httpx.URL(base_url)
    except httpx.InvalidURL as exc:
        raise bad(f"base_url {base_url!r} is not a URL ({exc})") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise bad(f"base_url {base_url!r} must be an http:// or https:// URL with a host")
    verify_tls = options.get("verify_tls", True)
    if not isinstance(verify_tls, bool):
        raise bad(f"option 'verify_tls' must be true or false, got {verify_tls!r}")
    verify: ssl.SSLContext | bool = verify_tls
    ca_file = text("ca_file")
    if ca_file and verify_tls:
        try:
            verify = ssl.create_default_context(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise bad(f"ca_file {ca_file!r} cannot be read as PEM certificates ({exc})") from None
    auth = text("auth", "basic")
    if auth not in AUTH_MODES:
        raise bad(f"option 'auth' must be one of {', '.join(AUTH_MODES)}, got {auth!r}")
    token_url = text("token_url")
    if auth == "oauth2_client_credentials" and not token_url:
        raise bad("auth oauth2_client_credentials needs a 'token_url' option")
    client_auth = text("client_auth", "basic")
    if client_auth not in CLIENT_AUTH_MODES:
        raise bad(f"option 'client_auth' must be one of {', '.join(CLIENT_AUTH_MODES)}")
    login_path = text("login_path") or None
    if login_path is not None and not login_path.startswith("/"):
        raise bad(f"option 'login_path' must start with '/', got {login_path!r}")
    return HttpSettings(
        base_url=base_url.rstrip("/"),
        verify=verify,
        auth=auth,
        token_url=token_url,
        scope=text("scope"),
        client_auth=client_auth,
        login_path=login_path,
    )


# -- running a request sequence -----------------------------------------------------------------

_QUOTED = 300  # characters of a response body quoted in an error message
_UNAVAILABLE = (502, 503, 504)  # the target (or its proxy) is not serving: nothing happened
_REFUSED_CLIENT = ("invalid_client", "unauthorized_client", "invalid_grant")


@dataclass(frozen=True)
class _Rendered:
    # What is sent may carry secrets (a password in the path, a body, an Authorization header).
    url: str = field(repr=False)
    headers: list[tuple[str, str]] = field(repr=False)
    content: str | None = field(repr=False)
    form: dict[str, str] | None = field(repr=False)
    shown: list[str]  # the request as the transcript shows it, secrets masked
    bears_secret: bool


class Session:
    """Runs one request sequence as one account. One instance per call; not reusable.

    Error classes follow the change protocol: until a request carrying a secret (the new
    password, in its body or path) may have reached the target, a failure proves nothing changed
    (ConnectFailed, AuthenticationFailed, TemplateFailed, ChangeRejected). After that, any failure
    is OutcomeUnknown, so the workflow probes which secret logs in instead of losing one.
    """

    def __init__(
        self, target: Target, settings: HttpSettings, account: Account, context: TemplateContext
    ) -> None:
        self._target = target
        self._settings = settings
        self._account = account
        self._context = context
        self._masked_context = masked(context)
        self._secrets = request_secrets(context, account)
        self._lines: list[str] = []
        self._maybe_changed = False
        self._authenticated = False  # an authenticated request has had an answer
        # How far the account's login got: its credentials go out with each authenticated
        # request (or the token request); an expected answer to one means they were accepted.
        self._login = LoginProgress.NOT_ATTEMPTED
        self._token: str | None = None

    # -- the sequence ------------------------------------------------------------------------

    async def run(self, requests: list[Request]) -> str:
        timeout = httpx.Timeout(
            connect=self._target.connect_timeout,
            read=self._target.read_timeout,
            write=self._target.read_timeout,
            pool=self._target.connect_timeout,
        )
        # trust_env=False: no proxy, netrc or CA bundle of the worker's environment changes where
        # the account's credentials go; redirects are not followed, for the same reason.
        async with httpx.AsyncClient(
            verify=self._settings.verify, timeout=timeout, trust_env=False, follow_redirects=False
        ) as client:
            for request in requests:
                await self._one(client, request)
        return self.transcript()

    def transcript(self) -> str:
        return redact("\n".join(self._lines), self._secrets)

    async def _one(self, client: httpx.AsyncClient, request: Request) -> None:
        # Rendering is CPU work with a budget (templating.budget): off the event loop.
        rendered = await asyncio.to_thread(self._render, request)
        self._lines.extend(rendered.shown)
        headers = dict(rendered.headers)
        authenticated = request.auth == "account"
        if authenticated:
            headers.update(await self._auth_headers(client, request))
        if rendered.content is not None:
            headers.setdefault("Content-Type", "application/json")
        prior = self._maybe_changed
        if rendered.bears_secret:
            self._maybe_changed = True  # set before sending: once on the wire, it is uncertain
        prior_login = self._login
        if authenticated:
            self._credentials_out()
        response = await self._send(
            client,
            request,
            prior,
            prior_login,
            client.build_request(
                request.method,
                rendered.url,
                headers=headers,
                content=rendered.content.encode() if rendered.content is not None else None,
                data=rendered.form,
            ),
        )
        self._lines.append(f"< {response.status_code} {response.reason_phrase}")
        self._check_status(request, response, authenticated, prior, rendered.bears_secret)
        if authenticated:
            self._authenticated = True
            self._login = LoginProgress.ACCEPTED
        await asyncio.to_thread(self._read, request, response)  # renders the checks

    async def _send(
        self,
        client: httpx.AsyncClient,
        request: Request,
        prior: bool,
        prior_login: LoginProgress,
        built: httpx.Request,
    ) -> httpx.Response:
        try:
            return await client.send(built)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            # No connection was opened (TCP or TLS did not complete), so this request never
            # left: only earlier ones count.
            self._maybe_changed = prior
            self._login = prior_login
            raise self._transport_error(request.label, exc) from None
        except httpx.TransportError as exc:
            raise self._transport_error(request.label, exc) from None

    # -- rendering ---------------------------------------------------------------------------

    def _render(self, request: Request) -> _Rendered:
        """Each field rendered on its own with the escape of where it lands, twice: as sent, and
        masked for the transcript. A field that differs between the two carries a secret."""
        pairs: list[tuple[str, str]] = []  # (as sent, as shown) for every field
        path, shown_path = self._field(request, request.path, url_segment)
        pairs.append((path, shown_path))
        headers, shown = [], [f"> {request.method} {shown_path}"]
        for name, source in request.headers:
            value, masked = self._field(request, source, header_value)
            headers.append((name, value))
            pairs.append((value, masked))
            shown.append(f"> {name}: {masked}")
        content: str | None = None
        if request.body:
            content = self._body(request, self._context)
            try:
                masked_body = self._body(request, self._masked_context)
            except ExecutorError:  # the mask broke the body (an index into a password, say)
                masked_body = "(a body with a secret, not shown)"
            pairs.append((content, masked_body))
            shown.append(f"> {masked_body}")
        form: dict[str, str] | None = None
        if request.form:
            form = {}
            for name, source in request.form:
                value, masked = self._field(request, source, plain)
                form[name] = value
                pairs.append((value, masked))
                shown.append(f"> {name}={masked}")
        bears_secret = any(
            value != masked or any(secret in value for secret in self._secrets if secret)
            for value, masked in pairs
        )
        return _Rendered(
            self._settings.base_url + path, headers, content, form, shown, bears_secret
        )

    def _field(self, request: Request, source: Source, escape: Escape) -> tuple[str, str]:
        try:
            value = render(source.text, self._context, source.line, escape=escape)
        except TemplateSyntaxProblem as exc:
            raise self._error(
                TemplateFailed, request.label, f"line {source.line}: cannot render: {exc.message}"
            ) from None
        try:
            masked = render(source.text, self._masked_context, source.line, escape=escape)
        except TemplateSyntaxProblem:
            masked = "(a value with a secret, not shown)"
        return value, masked

    def _body(self, request: Request, context: TemplateContext) -> str:
        try:
            body = render_body(request.body, context)
        except TemplateSyntaxProblem as exc:
            raise self._error(
                TemplateFailed, request.label, f"line {exc.line}: cannot render: {exc.message}"
            ) from None
        try:
            json.loads(body)
        except json.JSONDecodeError as exc:
            raise self._error(
                TemplateFailed,
                request.label,
                f"the body is not JSON once rendered ({exc.msg}); tags become JSON strings by "
                "themselves: do not put quotes around them",
            ) from None
        return body

    # -- authentication ----------------------------------------------------------------------

    async def _auth_headers(self, client: httpx.AsyncClient, request: Request) -> dict[str, str]:
        mode, account = self._settings.auth, self._account
        if mode == "basic":
            return {"Authorization": _basic(account.username, account.password)}
        if mode == "bearer":
            return {"Authorization": self._bearer(request, account.password)}
        if self._token is None:
            self._token = await self._fetch_token(client, request)
            self._secrets = (*self._secrets, self._token)
        return {"Authorization": self._bearer(request, self._token)}

    def _bearer(self, request: Request, token: str) -> str:
        try:
            return "Bearer " + header_value(token)
        except ValueError as exc:
            raise self._error(TemplateFailed, request.label, f"the bearer token: {exc}") from None

    async def _fetch_token(self, client: httpx.AsyncClient, request: Request) -> str:
        """OAuth 2.0 client credentials (RFC 6749 4.4): the account is the client."""
        settings, account = self._settings, self._account
        url = settings.token_url
        if url.startswith("/"):
            url = settings.base_url + url
        step = "token request"
        data = {"grant_type": "client_credentials"}
        if settings.scope:
            data["scope"] = settings.scope
        headers = {}
        if settings.client_auth == "body":
            data.update(client_id=account.username, client_secret=account.password)
        else:
            headers["Authorization"] = _basic(account.username, account.password)
        self._lines.append(f"> POST {url} (client credentials of {account.username!r})")
        prior_login = self._login
        self._credentials_out()
        try:
            response = await client.post(url, data=data, headers=headers)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            self._login = prior_login  # never left
            raise self._transport_error(step, exc) from None
        except httpx.TransportError as exc:
            raise self._transport_error(step, exc) from None
        except httpx.InvalidURL as exc:
            raise self._error(TemplateFailed, step, f"token_url {url!r}: {exc}") from None
        self._lines.append(f"< {response.status_code} {response.reason_phrase}")
        document = _json_or_none(response)
        error = document.get("error") if isinstance(document, dict) else None
        if response.status_code == 401 or (
            response.status_code == 400 and error in _REFUSED_CLIENT
        ):
            raise self._refused(step, f"the token endpoint refused the client ({error or 401})")
        token = document.get("access_token") if isinstance(document, dict) else None
        if response.status_code != 200 or not isinstance(token, str) or not token:
            raise self._error(
                TemplateFailed,
                step,
                f"the token endpoint answered {response.status_code} without an access_token: "
                f"{self._quote(response)}; check token_url and scope",
            )
        self._login = LoginProgress.ACCEPTED  # the endpoint took the client's secret
        return token

    # -- answers -----------------------------------------------------------------------------

    def _check_status(
        self,
        request: Request,
        response: httpx.Response,
        authenticated: bool,
        prior: bool,
        bears_secret: bool,
    ) -> None:
        status = response.status_code
        if request.accepts(status):
            return
        if bears_secret and status < 500:
            self._maybe_changed = prior  # the target answered and refused: this did not happen
        said = self._quote(response)
        denied = status in (401, 403) and any(p.search(response.text) for p in request.denied)
        if self._maybe_changed:
            raise self._unknown(request.label, f"the target answered {status}: {said}")
        if status == 401 and authenticated and not self._authenticated and not denied:
            raise self._refused(request.label, f"the target answered 401: {said}")
        if denied or status in (401, 403):
            raise self._error(
                TemplateFailed,
                request.label,
                f"the target answered {status} ({said}): {self._account.username!r} lacks the "
                "privilege this template needs; use an account that has it (or an auth "
                "credential)",
            )
        if status in _UNAVAILABLE:
            raise self._error(
                ConnectFailed,
                request.label,
                f"the target answered {status} ({said}): it is not serving now; nothing secret "
                "had been sent, safe to retry",
            )
        expected = " ".join(map(str, request.expect)) or "2xx"
        cause = f"the target answered {status}, expected {expected}: {said}"
        if bears_secret and 400 <= status < 500:
            raise self._error(ChangeRejected, request.label, f"{cause}; check the password policy")
        raise self._error(TemplateFailed, request.label, f"{cause}; check the template")

    def _read(self, request: Request, response: httpx.Response) -> None:
        """Captures and checks: values taken from the JSON answer."""
        if not (request.captures or request.checks):
            return
        document = _json_or_none(response)
        if document is None:
            raise self._failed(request.label, f"the answer is not JSON: {self._quote(response)}")
        values = dict(self._context.values)
        for capture in request.captures:
            found, value = find_json(document, capture.path)
            if not found:
                raise self._failed(
                    f"line {capture.line} (capture)",
                    f"the answer has nothing at {capture.path_text}: {self._quote(response)}",
                )
            values[capture.name] = as_value(value)
            self._lines.append(f"= {capture.name} = {values[capture.name]}")
        self._context = dataclasses.replace(self._context, values=values)
        self._masked_context = dataclasses.replace(self._masked_context, values=values)
        for check in request.checks:
            found, value = find_json(document, check.path)
            expected, _ = self._field(request, check.expected, plain)
            if not found or as_value(value) != expected:
                shown = redact(str(as_value(value)) if found else "nothing", self._secrets)
                raise self._failed(
                    f"line {check.line} (check)",
                    f"{check.path_text} is {shown!r}, expected "
                    f"{redact(expected, self._secrets)!r}: the answer is not the one expected",
                )

    def _quote(self, response: httpx.Response) -> str:
        # Redact before cutting, so the cut can never leave a piece of a secret unredacted.
        body = redact(response.text, self._secrets).strip()
        cut = body[:_QUOTED] + ("…" if len(body) > _QUOTED else "")
        return repr(cut) if cut else "(empty body)"

    # -- errors ------------------------------------------------------------------------------

    def _credentials_out(self) -> None:
        """A request carrying the account's credentials is about to go out: until an answer
        shows them accepted, a failure leaves the login's outcome unknown."""
        if self._login is not LoginProgress.ACCEPTED:
            self._login = LoginProgress.UNKNOWN

    def _error(self, cls: type[ExecutorError], step: str, cause: str) -> ExecutorError:
        return cls(
            device=self._target.name,
            step=step,
            cause=redact(cause, self._secrets),
            transcript=self.transcript(),
            login=None if issubclass(cls, AuthenticationFailed) else self._login,
        )

    def _failed(self, step: str, cause: str) -> ExecutorError:
        if self._maybe_changed:
            return self._unknown(step, cause)
        return self._error(TemplateFailed, step, cause)

    def _unknown(self, step: str, cause: str) -> ExecutorError:
        return self._error(
            OutcomeUnknown,
            step,
            f"{cause}; a request carrying a secret had already been sent, so the change may have "
            "happened: probe which secret logs in",
        )

    def _refused(self, step: str, cause: str) -> ExecutorError:
        return self._error(
            AuthenticationFailed,
            step,
            f"{cause}: the target refused the credentials of {self._account.username!r}; check "
            "the credential (reconcile it if it drifted); not retried, to spare the lockout budget",
        )

    def _transport_error(self, step: str, exc: httpx.HTTPError) -> ExecutorError:
        where = self._settings.base_url
        if _certificate_refused(exc):
            return self._error(
                HostKeyMismatch,
                step,
                f"the TLS certificate of {where} is not trusted ({_reason(exc)}): the host may not "
                "be the one you think. Give the device a 'ca_file' option with the CA that "
                "signed it (verify_tls: false only for a throwaway test target)",
            )
        if isinstance(exc, httpx.TimeoutException):
            cause = f"no answer from {where} within the timeout ({type(exc).__name__})"
        else:
            cause = f"cannot talk to {where}: {_reason(exc)}"
        if self._maybe_changed:
            return self._unknown(step, cause)
        return self._error(
            ConnectFailed,
            step,
            f"{cause}; check the address, the port, base_url and the network path (nothing secret "
            "had been sent; safe to retry)",
        )


def _basic(username: str, password: str) -> str:
    """HTTP Basic (RFC 7617) with UTF-8, which RabbitMQ and most current servers expect."""
    pair = f"{username}:{password}".encode()
    return "Basic " + base64.b64encode(pair).decode("ascii")


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:  # JSONDecodeError and UnicodeDecodeError alike
        return None


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _certificate_refused(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return "CERTIFICATE_VERIFY_FAILED" in str(exc)
