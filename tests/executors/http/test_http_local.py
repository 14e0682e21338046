"""HttpExecutor against a tiny real API on loopback (tests/executors/http/local_api.py).

RabbitMQ does not do OAuth 2.0 without its OAuth plugin and an identity provider, serves no TLS
in this setup and has no password policy, so those paths run against this server instead: an
OAuth 2.0 client-credentials token endpoint and a protected API, over TLS when asked.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

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
    OutcomeUnknown,
    RunRequest,
    Target,
)
from executors.http import HttpExecutor
from templating import TemplateContext
from tests.executors.encodings import assert_masked, secrets_strategy
from tests.executors.helpers import assert_no_secret as assert_no_secrets_in
from tests.executors.helpers import error_texts
from tests.executors.http.local_api import LocalApi

EXECUTOR = HttpExecutor()
OAUTH = {"auth": "oauth2_client_credentials", "token_url": "/token", "scope": "accounts"}

CHANGE = """# kind: change
request: PUT /api/accounts/{{ username }}
body: {"password": {{ new_password }}}
expect: 204
"""
VERIFY = """# kind: verify
request: GET /api/me
check: $.name == {{ username }}
"""


def target(api: LocalApi, **options: object) -> Target:
    return Target(
        name="local-api",
        address="127.0.0.1",
        port=0,
        options={"base_url": api.base_url, **options},
        connect_timeout=2.0,
        read_timeout=1.0,
        allow_insecure_transport=api.scheme == "http",  # the HTTPS tests get no exemption
    )


def context(username: str, current: str, new: str) -> TemplateContext:
    return TemplateContext(
        username=username,
        current_password=current,
        new_password=new,
        hostname="local-api",
        address="127.0.0.1",
        port=0,
    )


def assert_no_secret(exc: ExecutorError, *secrets: str) -> None:
    assert_no_secrets_in(error_texts(exc), *secrets)


async def change(api: LocalApi, template: str, current: str, new: str, **options: object) -> str:
    result = await EXECUTOR.run(
        RunRequest(
            target(api, **options), Account("app", current), template, context("app", current, new)
        )
    )
    return result.transcript


async def logs_in(api: LocalApi, password: str, **options: object) -> bool:
    result = await EXECUTOR.check_login(
        LoginRequest(
            target(api, **options), Account("app", password), VERIFY, context("app", "", "")
        )
    )
    return result.ok


async def test_oauth2_client_credentials_change_then_verify(local_api: LocalApi) -> None:
    local_api.accounts["app"] = "Client-secret-1"

    transcript = await change(local_api, CHANGE, "Client-secret-1", "Client-secret-2", **OAUTH)

    assert local_api.accounts["app"] == "Client-secret-2"
    assert await logs_in(local_api, "Client-secret-2", **OAUTH)
    assert not await logs_in(local_api, "Client-secret-1", **OAUTH)
    assert local_api.requests[:2] == [("POST", "/token"), ("PUT", "/api/accounts/app")]
    assert "Client-secret" not in transcript
    for token in local_api.tokens:
        assert token not in transcript


async def test_oauth2_client_secret_in_the_body(local_api: LocalApi) -> None:
    local_api.accounts["app"] = "Client-secret-1"
    assert await logs_in(local_api, "Client-secret-1", **OAUTH, client_auth="body")


async def test_oauth2_refused_client_is_authentication_failed(local_api: LocalApi) -> None:
    local_api.accounts["app"] = "Client-secret-1"
    with pytest.raises(AuthenticationFailed) as caught:
        await change(local_api, CHANGE, "wrong-secret", "Client-secret-2", **OAUTH)
    assert local_api.accounts["app"] == "Client-secret-1"
    assert "token request" in str(caught.value)
    assert caught.value.login is LoginProgress.REFUSED
    assert_no_secret(caught.value, "wrong-secret", "Client-secret-2")


async def test_bearer_auth_uses_the_password_as_token(local_api: LocalApi) -> None:
    local_api.tokens["Api-key-12345"] = "app"
    assert await logs_in(local_api, "Api-key-12345", auth="bearer")
    assert not await logs_in(local_api, "Api-key-other", auth="bearer")


async def test_refused_password_is_change_rejected_and_redacted(local_api: LocalApi) -> None:
    # The API echoes the refused password in its 422 answer; the error quotes the body redacted.
    local_api.accounts["app"] = "Current-pass-1"
    with pytest.raises(ChangeRejected) as caught:
        await change(local_api, CHANGE, "Current-pass-1", "Sh0rt!")
    assert "422" in str(caught.value) and "too short" in str(caught.value)
    assert "***" in str(caught.value)
    assert_no_secret(caught.value, "Current-pass-1", "Sh0rt!")
    assert local_api.accounts["app"] == "Current-pass-1"


async def test_connection_dropped_after_the_secret_was_sent_is_outcome_unknown(
    local_api: LocalApi,
) -> None:
    local_api.accounts["app"] = "Current-pass-1"
    template = 'request: POST /api/drop\nbody: {"password": {{ new_password }}}\n'
    with pytest.raises(OutcomeUnknown) as caught:
        await change(local_api, template, "Current-pass-1", "New-pass-12345")
    assert caught.value.retryable and "probe" in str(caught.value)
    # The request that changed the password was also the first to carry the credentials, and
    # no answer came: the login's outcome is unknown too, so the step is not retried (probe).
    assert caught.value.login is LoginProgress.UNKNOWN and not caught.value.may_retry
    assert_no_secret(caught.value, "Current-pass-1", "New-pass-12345")


async def test_timeout_before_any_secret_is_connect_failed(local_api: LocalApi) -> None:
    local_api.accounts["app"] = "Current-pass-1"
    with pytest.raises(ConnectFailed, match="no answer") as caught:
        await change(local_api, "request: GET /api/hang\n", "Current-pass-1", "New-pass-12345")
    # Nothing was changed, but the hanging request carried the credentials: no verdict on them.
    assert caught.value.login is LoginProgress.UNKNOWN and not caught.value.may_retry


async def test_a_hang_before_the_credentials_leave_is_safe_to_retry(local_api: LocalApi) -> None:
    local_api.accounts["app"] = "Current-pass-1"
    with pytest.raises(ConnectFailed, match="no answer") as caught:
        await change(
            local_api, "request: GET /public/hang\nauth: none\n", "Current-pass-1", "New-pass-1"
        )
    assert caught.value.login is LoginProgress.NOT_ATTEMPTED and caught.value.may_retry


async def test_a_failure_after_an_accepted_login_is_safe_to_retry(local_api: LocalApi) -> None:
    local_api.accounts["app"] = "Current-pass-1"
    with pytest.raises(ConnectFailed, match="no answer") as caught:
        await change(
            local_api, "request: GET /api/me\nrequest: GET /api/hang\n", "Current-pass-1", "x"
        )
    assert caught.value.login is LoginProgress.ACCEPTED and caught.value.may_retry


async def test_timeout_after_the_secret_was_sent_is_outcome_unknown(local_api: LocalApi) -> None:
    local_api.accounts["app"] = "Current-pass-1"
    template = 'request: POST /api/hang\nbody: {"password": {{ new_password }}}\n'
    with pytest.raises(OutcomeUnknown, match="no answer"):
        await change(local_api, template, "Current-pass-1", "New-pass-12345")


async def test_failure_after_an_accepted_change_is_outcome_unknown(local_api: LocalApi) -> None:
    # The change went through; a later step failing must not make the workflow drop the secret.
    local_api.accounts["app"] = "Current-pass-1"
    template = CHANGE + "request: GET /api/missing\nauth: none\n"
    with pytest.raises(OutcomeUnknown) as caught:
        await change(local_api, template, "Current-pass-1", "New-pass-12345")
    assert local_api.accounts["app"] == "New-pass-12345"
    assert caught.value.login is LoginProgress.ACCEPTED and caught.value.may_retry


async def test_tls_is_verified_by_default(tls_api: LocalApi) -> None:
    tls_api.accounts["app"] = "Current-pass-1"
    with pytest.raises(HostKeyMismatch) as caught:
        await logs_in(tls_api, "Current-pass-1")
    assert "ca_file" in str(caught.value) and not caught.value.retryable
    assert tls_api.requests == []  # refused before any request, so no credential went out
    assert caught.value.login is LoginProgress.NOT_ATTEMPTED


async def test_tls_with_the_private_ca_works(tls_api: LocalApi) -> None:
    tls_api.accounts["app"] = "Current-pass-1"
    assert tls_api.ca_file is not None
    ca = str(tls_api.ca_file)
    await change(tls_api, CHANGE, "Current-pass-1", "New-pass-12345", ca_file=ca)
    assert await logs_in(tls_api, "New-pass-12345", ca_file=ca)
    assert not await logs_in(tls_api, "Current-pass-1", ca_file=ca)


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({}, "is plain http"),
        ({"verify_tls": False}, "'verify_tls' is false"),
        (
            {"auth": "oauth2_client_credentials", "token_url": "http://127.0.0.1:1/token"},
            "token_url 'http://127.0.0.1:1/token' is plain http",
        ),
    ],
)
async def test_cleartext_or_unverified_is_refused(
    tmp_path: Path, options: dict[str, object], reason: str
) -> None:
    api = LocalApi(tls_dir=tmp_path).start()
    try:
        base_url = api.base_url if options else api.base_url.replace("https:", "http:")
        insecure = Target(
            name="local-api",
            address="127.0.0.1",
            port=0,
            options={"base_url": base_url, "ca_file": str(api.ca_file), **options},
        )
        with pytest.raises(ConfigurationError, match="allow_insecure_transport") as caught:
            await EXECUTOR.check_login(LoginRequest(insecure, Account("client-1", "Pass-1")))
    finally:
        api.close()
    assert reason in str(caught.value)
    assert caught.value.login is LoginProgress.NOT_ATTEMPTED
    assert api.requests == []


# Each request makes the API quote the new password back in a 400 answer: sent in a JSON body,
# a form body, a query string and a header-free raw body, it comes back as text, JSON, base64,
# hex and percent-encoded.
ECHOES = [
    'request: POST /api/echo\nbody: {"password": {{ new_password }}}\nexpect: 200\n',
    "request: POST /api/echo\nform: password={{ new_password }}\nexpect: 200\n",
    "request: GET /api/echo?password={{ new_password }}\nexpect: 200\n",
]


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(secret=secrets_strategy)
async def test_an_echoed_secret_is_redacted_in_every_encoding(
    local_api: LocalApi, secret: str
) -> None:
    local_api.accounts["app"] = "Current-pass-1"
    for template in ECHOES:
        with pytest.raises(ExecutorError) as caught:
            await change(local_api, template, "Current-pass-1", secret)
        assert "400" in str(caught.value)  # the API did answer with the echo
        assert_masked(error_texts(caught.value), secret, "Current-pass-1", where=template)
