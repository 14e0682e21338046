"""HttpExecutor against RabbitMQ's real management API (no Temporal involved)."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from executors.base import (
    Account,
    AuthenticationFailed,
    ConfigurationError,
    ExecutorError,
    LoginProgress,
    LoginRequest,
    RunRequest,
    Target,
    TemplateFailed,
    get_executor,
)
from executors.http import HttpExecutor
from executors.http.script import parse_json_path
from executors.shipped import shipped_templates
from templating import TemplateContext, TemplateSyntaxProblem
from tests.executors.helpers import assert_no_secret, error_texts, make_context, make_target
from tests.servers.rabbitmq import BASE_URL, MANAGEMENT_PORT, RabbitMQ, RabbitUsers

TEMPLATES = {template.name: template.body for template in shipped_templates()}
EXECUTOR = HttpExecutor()
ADMIN_CHANGE = TEMPLATES["http/rabbitmq-change-admin"]
SELF_CHANGE = TEMPLATES["http/rabbitmq-change-self"]
VERIFY = TEMPLATES["http/rabbitmq-verify"]

# Quotes, backslashes, %, $, ;, spaces, braces, template markers and non-ASCII letters.
SPECIALS = "'\"\\%$; {}[#é ßж/:"
ALPHABET = st.characters(codec="utf-8", categories=("L", "N", "P", "S", "Zs"))
passwords = st.one_of(
    st.text(alphabet=ALPHABET, min_size=8, max_size=32),
    st.text(alphabet=ALPHABET, min_size=4, max_size=24).flatmap(
        lambda base: st.permutations(list(base + SPECIALS)).map("".join)
    ),
)


def target(**options: object) -> Target:
    # The throwaway RabbitMQ node's management API is plain http: the device allows it.
    return make_target(
        "rabbit-test",
        "127.0.0.1",
        MANAGEMENT_PORT,
        options={"base_url": BASE_URL, **options},
        allow_insecure_transport=True,
    )


def context(
    username: str, current: str, new: str, auth_user: str = "", auth_password: str = ""
) -> TemplateContext:
    return make_context(
        "rabbit-test",
        "127.0.0.1",
        MANAGEMENT_PORT,
        username,
        current,
        new,
        auth_user,
        auth_password,
    )


async def admin_change(admin: str, admin_password: str, user: str, current: str, new: str) -> str:
    result = await EXECUTOR.run(
        RunRequest(
            target(),
            Account(admin, admin_password),
            ADMIN_CHANGE,
            context(user, current, new, admin, admin_password),
        )
    )
    return result.transcript


async def logs_in(user: str, password: str) -> bool:
    result = await EXECUTOR.check_login(
        LoginRequest(target(), Account(user, password), VERIFY, context(user, password, ""))
    )
    return result.ok


# --- registration and shipped templates ---------------------------------------------------------


def test_registered_through_the_entry_point() -> None:
    assert isinstance(get_executor("http"), HttpExecutor)


def test_shipped_templates_are_valid() -> None:
    shipped = {t.name: t for t in shipped_templates() if t.executor == "http"}
    assert shipped["http/rabbitmq-change-admin"].kind == "change"
    assert shipped["http/rabbitmq-change-self"].kind == "change"
    assert shipped["http/rabbitmq-verify"].kind == "verify"
    for template in shipped.values():
        EXECUTOR.validate(template.body)
    for name in HttpExecutor.default_templates.values():
        assert name in shipped


# --- changes against RabbitMQ -------------------------------------------------------------------


async def test_admin_change_then_verify(rabbitmq: RabbitMQ, rabbit_users: RabbitUsers) -> None:
    admin_password, current, new = "Admin-pass-1234", "Current-pass-1234", "Brand-new-pass-5678"
    admin = rabbit_users.create(admin_password, tags=("administrator",))
    user = rabbit_users.create(current, tags=("management", "monitoring"))

    transcript = await admin_change(admin, admin_password, user, current, new)

    assert await logs_in(user, new)
    assert not await logs_in(user, current)  # the old secret is refused
    assert rabbitmq.password_works(user, new) and not rabbitmq.password_works(user, current)
    assert sorted(rabbitmq.user(user)["tags"]) == ["management", "monitoring"]  # kept
    assert rabbitmq.password_works(admin, admin_password)
    assert f"> PUT /api/users/{user}" in transcript
    assert '"password": "***"' in transcript
    assert_no_secret([transcript], admin_password, current, new)


async def test_an_administrator_changes_its_own_password(
    rabbitmq: RabbitMQ, rabbit_users: RabbitUsers
) -> None:
    current, new = "Current-pass-1234", "Brand-new-pass-5678"
    user = rabbit_users.create(current, tags=("administrator",))

    await EXECUTOR.run(
        RunRequest(target(), Account(user, current), SELF_CHANGE, context(user, current, new))
    )

    assert rabbitmq.password_works(user, new) and not rabbitmq.password_works(user, current)
    assert rabbitmq.user(user)["tags"] == ["administrator"]


async def test_a_non_administrator_cannot_change_itself_and_is_told_why(
    rabbitmq: RabbitMQ, rabbit_users: RabbitUsers
) -> None:
    # RabbitMQ answers 401 "Not administrator user": a missing privilege, not a refused secret.
    current, new = "Current-pass-1234", "Brand-new-pass-5678"
    user = rabbit_users.create(current)

    with pytest.raises(TemplateFailed) as caught:
        await EXECUTOR.run(
            RunRequest(target(), Account(user, current), SELF_CHANGE, context(user, current, new))
        )

    assert "lacks the privilege" in str(caught.value) and "rabbit-test" in str(caught.value)
    assert rabbitmq.password_works(user, current)
    assert_no_secret(error_texts(caught.value), current, new)


async def test_wrong_current_secret_is_refused_and_nothing_changes(
    rabbitmq: RabbitMQ, rabbit_users: RabbitUsers
) -> None:
    current, new = "Current-pass-1234", "Brand-new-pass-5678"
    user = rabbit_users.create(current, tags=("administrator",))
    before = rabbitmq.user(user)["password_hash"]

    with pytest.raises(AuthenticationFailed) as caught:
        await EXECUTOR.run(
            RunRequest(
                target(), Account(user, "wrong-pass"), SELF_CHANGE, context(user, "wrong-pass", new)
            )
        )

    assert "refused the credentials" in str(caught.value)
    assert rabbitmq.user(user)["password_hash"] == before
    assert rabbitmq.password_works(user, current)
    assert_no_secret(error_texts(caught.value), "wrong-pass", new)


async def test_wrong_admin_secret_is_refused(rabbitmq: RabbitMQ, rabbit_users: RabbitUsers) -> None:
    admin = rabbit_users.create("Admin-pass-1234", tags=("administrator",))
    user = rabbit_users.create("Current-pass-1234")

    with pytest.raises(AuthenticationFailed):
        await admin_change(admin, "not-it", user, "Current-pass-1234", "Brand-new-pass-5678")

    assert rabbitmq.password_works(user, "Current-pass-1234")


async def test_verify_of_a_user_without_management_tag_is_not_a_refusal(
    rabbit_users: RabbitUsers,
) -> None:
    user = rabbit_users.create("Current-pass-1234", tags=())
    with pytest.raises(TemplateFailed, match="lacks the privilege"):
        await logs_in(user, "Current-pass-1234")
    assert not await logs_in(user, "wrong-password")  # "Login failed" is still a refusal


async def test_bare_login_check_uses_the_verify_template(rabbit_users: RabbitUsers) -> None:
    user = rabbit_users.create("Current-pass-1234")
    login = await EXECUTOR.check_login(LoginRequest(target(), Account(user, "Current-pass-1234")))
    assert login.ok
    refused = await EXECUTOR.check_login(LoginRequest(target(), Account(user, "nope")))
    assert not refused.ok


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(new=passwords)
async def test_any_password_is_changed_literally(
    rabbitmq: RabbitMQ, rabbit_users: RabbitUsers, new: str
) -> None:
    admin = rabbit_users.create("Admin-pass-1234", tags=("administrator",))
    user = rabbit_users.create("Current-pass-1234")

    transcript = await admin_change(admin, "Admin-pass-1234", user, "Current-pass-1234", new)

    assert rabbitmq.password_works(user, new)
    assert not rabbitmq.password_works(user, "Current-pass-1234")
    assert_no_secret([transcript], new)


async def test_injection_in_password_and_username_is_literal(
    rabbitmq: RabbitMQ, rabbit_users: RabbitUsers
) -> None:
    admin = rabbit_users.create("Admin-pass-1234", tags=("administrator",))
    bystander = rabbit_users.create("Bystander-pass-1234")
    # Path tricks (/ . % ? #), a JSON break-out and an SQL-style payload in the name.
    odd_name = "kt-x/../guest%2F?a=1#'; DROP ROLE admin; --"
    user = rabbit_users.create("Current-pass-1234", name=odd_name)
    evil = 'x", "tags": ["administrator"], "y": "{{ auth_password }}%2F\\'
    users_before = rabbitmq.user_names()
    bystander_hash = rabbitmq.user(bystander)["password_hash"]

    await admin_change(admin, "Admin-pass-1234", user, "Current-pass-1234", evil)

    assert rabbitmq.password_works(user, evil)
    assert rabbitmq.user(user)["tags"] == ["management"]  # no administrator smuggled in
    # Other tests may create their own throwaway users (kt-<hex>) on the shared broker meanwhile:
    # whatever else appeared was smuggled in.
    appeared = rabbitmq.user_names() - users_before
    assert all(re.fullmatch(r"kt-[0-9a-f]{8}", name) for name in appeared), appeared
    assert rabbitmq.user(bystander)["password_hash"] == bystander_hash
    assert rabbitmq.password_works("guest", "guest")
    assert rabbitmq.password_works(admin, "Admin-pass-1234")


# --- errors that need no special peer ----------------------------------------------------------


async def test_nothing_listening_is_connect_failed() -> None:
    dead = target(base_url="http://127.0.0.1:9")  # discard port: nothing listens there
    with pytest.raises(ExecutorError) as caught:
        await EXECUTOR.run(
            RunRequest(dead, Account("u", "Pass-1234"), SELF_CHANGE, context("u", "Pass-1234", "N"))
        )
    assert caught.value.kind == "ConnectFailed" and caught.value.retryable
    assert caught.value.login is LoginProgress.NOT_ATTEMPTED and caught.value.may_retry
    assert "rabbit-test" in str(caught.value)


async def test_bad_device_options_are_reported() -> None:
    with pytest.raises(ConfigurationError, match="auth"):
        await EXECUTOR.check_login(
            LoginRequest(target(auth="kerberos"), Account("u", "secret-pass"))
        )


# --- validate() ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "line", "message"),
    [
        ("", None, "sends nothing"),
        ("# only a comment\nexpect: 200\n", 2, "before any request"),
        ("request: GET /x\nfrobnicate: 1\n", 2, "unknown directive"),
        ("request: get /x\n", 1, "upper-case method"),
        ("request: GET http://elsewhere/x\n", 1, "must start with '/'"),
        ("request: GET /x\nexpect: 2000\n", 2, "not an HTTP status"),
        ("request: GET /x\nexpect: {{ username }}\n", 2, "cannot contain tags"),
        ("request: GET /x\n\ncapture: 1abc = $.a\n", 3, "capture:"),
        ("request: GET /x\ncapture: a = $..b\n", 2, "invalid JSON path"),
        ("request: GET /x\ndenied: (\n", 2, "regular expression"),
        ("request: GET /x\nheader: Authorization: x\n", 2, "set by the executor"),
        ("request: GET /x\nheader: no value\n", 2, "Name: value"),
        ('request: PUT /x\nbody: {"p": {{ new_password }\n', 2, "unexpected"),
        ('request: PUT /x\nbody: {"p": "{{ new_password }}"}\n', 2, "not JSON"),
        ('request: PUT /x\nbody: {"p":\nbody:  {{ new_password }},}\n', 3, "not JSON"),
        ("request: PUT /x\nbody: {}\nform: a=b\n", 2, "not both"),
        ("request: GET /x\nauth: maybe\n", 2, "auth:"),
        ("request: GET /x\ncheck: $.name\n", 2, "check:"),
    ],
)
def test_validate_rejects_bad_templates(template: str, line: int | None, message: str) -> None:
    with pytest.raises(TemplateSyntaxProblem) as caught:
        EXECUTOR.validate(template)
    assert caught.value.line == line
    assert message in caught.value.message


async def test_a_template_error_fails_before_connecting() -> None:
    dead = target(base_url="http://127.0.0.1:9")
    with pytest.raises(ConfigurationError, match="line 1"):
        await EXECUTOR.run(
            RunRequest(dead, Account("u", "p"), "request: nope", context("u", "", ""))
        )


def test_json_paths() -> None:
    assert parse_json_path("$.tags", 1) == ("tags",)
    assert parse_json_path("user.tags[0]", 1) == ("user", "tags", 0)
    assert parse_json_path("user.tags.0", 1) == ("user", "tags", 0)
    assert parse_json_path("$", 1) == ()
