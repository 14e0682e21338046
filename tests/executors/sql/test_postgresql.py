"""PostgresqlExecutor against a real, throwaway PostgreSQL cluster (no Temporal involved)."""

from __future__ import annotations

import base64
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from executors.base import (
    Account,
    AuthenticationFailed,
    ChangeRejected,
    ConfigurationError,
    ConnectFailed,
    ExecutorError,
    LoginProgress,
    LoginRequest,
    RunRequest,
    Target,
    TemplateFailed,
    get_executor,
)
from executors.shipped import shipped_templates
from executors.sql import script as script_module
from executors.sql.postgresql import PostgresqlExecutor
from executors.sql.script import parse_script
from templating import TemplateContext, TemplateSyntaxProblem
from templating.scram import scram_sha_256
from tests.executors.helpers import (
    assert_no_secret,
    error_texts,
    make_context,
    make_target,
    renders_on_the_event_loop,
)
from tests.servers.postgresql import PostgresCluster, Roles, roles_on, running_cluster

TEMPLATES = {t.name: t.body for t in shipped_templates()}
EXECUTOR = PostgresqlExecutor()
SPECIALS = "'\"\\%$; {}é ßж-\n"
# Characters a password may hold on PostgreSQL: anything but NUL (newlines included).
ALPHABET = st.characters(codec="utf-8", exclude_characters="\x00")
passwords = st.text(alphabet=ALPHABET, min_size=1, max_size=24).flatmap(
    lambda base: st.permutations(list(base + SPECIALS)).map("".join)
)


def target(cluster: PostgresCluster, **overrides: object) -> Target:
    """A target over verified TLS; ``options`` given are added to the TLS ones."""
    options = {**cluster.client_options(), **dict(overrides.pop("options", {}))}  # type: ignore[call-overload]
    return make_target("pg-test", "127.0.0.1", cluster.port, options=options, **overrides)


def context(
    cluster: PostgresCluster, user: str, current: str, new: str, auth: str = "", auth_pw: str = ""
) -> TemplateContext:
    return make_context("pg-test", "127.0.0.1", cluster.port, user, current, new, auth, auth_pw)


async def self_change(cluster: PostgresCluster, user: str, current: str, new: str) -> str:
    result = await EXECUTOR.run(
        RunRequest(
            target(cluster),
            Account(user, current),
            TEMPLATES["postgresql/alter-role-self"],
            context(cluster, user, current, new),
        )
    )
    return result.transcript


async def verify(cluster: PostgresCluster, user: str, password: str) -> bool:
    result = await EXECUTOR.check_login(
        LoginRequest(
            target(cluster),
            Account(user, password),
            TEMPLATES["postgresql/verify-login"],
            context(cluster, user, password, password),
        )
    )
    return result.ok


def test_registered_and_shipped_templates_valid() -> None:
    assert isinstance(get_executor("postgresql"), PostgresqlExecutor)
    shipped = {t.name: t for t in shipped_templates() if t.executor == "postgresql"}
    assert set(PostgresqlExecutor.default_templates.values()) <= set(shipped)
    assert shipped["postgresql/alter-role-self"].kind == "change"
    assert shipped["postgresql/alter-role-admin"].kind == "change"
    assert shipped["postgresql/verify-login"].kind == "verify"
    for template in shipped.values():
        EXECUTOR.validate(template.body)


async def test_change_then_verify(pg_cluster: PostgresCluster, pg_roles: Roles) -> None:
    current, new = "Current-pass-1234", "Brand-new-pass-5678"
    user = pg_roles.create(current)
    before = pg_roles.attributes(user)

    transcript = await self_change(pg_cluster, user, current, new)

    assert await verify(pg_cluster, user, new)
    assert not await verify(pg_cluster, user, current)  # the old secret is refused
    assert await pg_roles.password_works(user, new)
    assert not await pg_roles.password_works(user, current)
    assert pg_roles.attributes(user) == before
    # The verifier shown is the mask's: the transcript has neither the password nor its own.
    assert re.search(
        rf"> ALTER ROLE \"{user}\" WITH PASSWORD 'SCRAM-SHA-256\$4096:\S+';", transcript
    )
    assert "< ALTER ROLE" in transcript
    assert_no_secret([transcript], current, new)


async def test_verify_transcript_shows_the_session(
    pg_cluster: PostgresCluster, pg_roles: Roles
) -> None:
    user = pg_roles.create("Pass-word-1")
    result = await EXECUTOR.check_login(
        LoginRequest(
            target(pg_cluster),
            Account(user, "Pass-word-1"),
            TEMPLATES["postgresql/verify-login"],
            context(pg_cluster, user, "Pass-word-1", "x"),
        )
    )
    assert result.ok
    assert result.transcript == f"> SELECT current_user;\n< SELECT 1\n< {user}"


async def test_verify_of_another_role_is_a_template_failure(
    pg_cluster: PostgresCluster, pg_roles: Roles
) -> None:
    user = pg_roles.create("Pass-word-1")
    with pytest.raises(TemplateFailed, match="line 4 \\(expect\\)") as caught:
        await EXECUTOR.check_login(
            LoginRequest(
                target(pg_cluster),
                Account(user, "Pass-word-1"),
                TEMPLATES["postgresql/verify-login"],
                context(pg_cluster, "someone_else", "Pass-word-1", "x"),
            )
        )
    assert caught.value.login is LoginProgress.ACCEPTED  # it failed once logged in


async def test_change_as_admin(pg_cluster: PostgresCluster, pg_roles: Roles) -> None:
    admin_pw, current, new = "Adm1n'pw\\", "Current-1", "New-secret-2"
    admin = pg_roles.create(admin_pw, admin=True)
    user = pg_roles.create(current)
    await EXECUTOR.run(
        RunRequest(
            target(pg_cluster),
            Account(admin, admin_pw),
            TEMPLATES["postgresql/alter-role-admin"],
            context(pg_cluster, user, current, new, admin, admin_pw),
        )
    )
    assert await pg_roles.password_works(user, new)
    assert not await pg_roles.password_works(user, current)
    assert await pg_roles.password_works(admin, admin_pw)


async def test_wrong_current_password(pg_cluster: PostgresCluster, pg_roles: Roles) -> None:
    current, wrong, new = "Right-pass-1", "Wrong-pass-2", "New-pass-3"
    user = pg_roles.create(current)
    with pytest.raises(AuthenticationFailed) as caught:
        await self_change(pg_cluster, user, wrong, new)
    assert caught.value.login is LoginProgress.REFUSED
    assert "refused the login" in str(caught.value) and "pg-test" in str(caught.value)
    assert_no_secret(error_texts(caught.value), current, wrong, new)
    assert await pg_roles.password_works(user, current)
    assert not await pg_roles.password_works(user, new)
    login = await EXECUTOR.check_login(LoginRequest(target(pg_cluster), Account(user, wrong)))
    assert not login.ok


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(old=passwords, new=passwords)
async def test_any_password_changes_literally(
    pg_cluster: PostgresCluster, pg_roles: Roles, old: str, new: str
) -> None:
    if old == new:
        new += "x"
    user = pg_roles.create(old)
    transcript = await self_change(pg_cluster, user, old, new)
    assert await pg_roles.password_works(user, new)
    assert not await pg_roles.password_works(user, old)
    assert_no_secret([transcript], old, new)


async def test_injection_in_password_and_username(
    pg_cluster: PostgresCluster, pg_roles: Roles
) -> None:
    victim = pg_roles.create("Victim-pass-1")
    # Under 64 bytes: PostgreSQL truncates longer names (NAMEDATALEN).
    evil_user = f"x\"'; DROP ROLE {victim}; --"
    evil_pw = f"x'; DROP ROLE {victim}; --"
    pg_roles.create("Start-pass-1", name=evil_user)
    roles_before = pg_roles.role_names()

    await self_change(pg_cluster, evil_user, "Start-pass-1", evil_pw)

    assert pg_roles.role_names() == roles_before
    assert await pg_roles.password_works(evil_user, evil_pw)
    assert await pg_roles.password_works(victim, "Victim-pass-1")
    assert await verify(pg_cluster, evil_user, evil_pw)


async def test_insufficient_privilege_is_rejected(
    pg_cluster: PostgresCluster, pg_roles: Roles
) -> None:
    # A plain role may not change another role's password: the server says no.
    me, other = pg_roles.create("Me-pass-1"), pg_roles.create("Other-pass-1")
    with pytest.raises(ChangeRejected) as caught:
        await EXECUTOR.run(
            RunRequest(
                target(pg_cluster),
                Account(me, "Me-pass-1"),
                TEMPLATES["postgresql/alter-role-admin"],
                context(pg_cluster, other, "Other-pass-1", "Secret-new-9", me, "Me-pass-1"),
            )
        )
    assert "42501" in str(caught.value) and "line 6 (statement)" in str(caught.value)
    assert_no_secret(error_texts(caught.value), "Secret-new-9", "Me-pass-1", "Other-pass-1")
    assert await pg_roles.password_works(other, "Other-pass-1")


async def test_server_error_quoting_a_secret_is_redacted(
    pg_cluster: PostgresCluster, pg_roles: Roles
) -> None:
    user = pg_roles.create("Pass-word-1")
    template = "SELECT {{ new_password }}::integer;\n"
    secret = "it's-a-secret"
    with pytest.raises(ChangeRejected) as caught:
        await EXECUTOR.run(
            RunRequest(
                target(pg_cluster),
                Account(user, "Pass-word-1"),
                template,
                context(pg_cluster, user, "Pass-word-1", secret),
            )
        )
    assert "invalid input syntax" in str(caught.value)
    assert_no_secret(error_texts(caught.value), secret, "it''s-a-secret", "Pass-word-1")


async def test_stopped_server_is_connect_failed(
    pg_cluster: PostgresCluster, pg_roles: Roles
) -> None:
    user = pg_roles.create("Pass-word-1")
    pg_cluster.stop()
    with pytest.raises(ConnectFailed) as caught:
        await self_change(pg_cluster, user, "Pass-word-1", "New-pass-2")
    assert caught.value.retryable and "pg-test" in str(caught.value)
    assert caught.value.login is LoginProgress.NOT_ATTEMPTED and caught.value.may_retry
    assert_no_secret(error_texts(caught.value), "Pass-word-1", "New-pass-2")


async def test_bad_device_options(pg_cluster: PostgresCluster) -> None:
    with pytest.raises(ConfigurationError, match="sslmode"):
        await EXECUTOR.check_login(
            LoginRequest(target(pg_cluster, options={"sslmode": "sometimes"}), Account("a", "b"))
        )


@pytest.mark.parametrize("sslmode", ["disable", "prefer", "require", "verify-ca"])
async def test_below_verify_full_is_refused_before_connecting(
    pg_cluster: PostgresCluster, sslmode: str
) -> None:
    with pytest.raises(ConfigurationError, match="allow_insecure_transport") as caught:
        await EXECUTOR.check_login(
            LoginRequest(target(pg_cluster, options={"sslmode": sslmode}), Account("a", "b"))
        )
    assert f"sslmode is {sslmode!r}" in str(caught.value)
    assert caught.value.login is LoginProgress.NOT_ATTEMPTED


async def test_the_default_is_verify_full(pg_cluster: PostgresCluster, pg_roles: Roles) -> None:
    # No sslmode, no CA file: the cluster's certificate chains to no CA the system trusts.
    user = pg_roles.create("Pass-word-1")
    plain = make_target("pg-test", "127.0.0.1", pg_cluster.port)
    with pytest.raises(ConnectFailed, match="certificate") as caught:
        await EXECUTOR.check_login(LoginRequest(plain, Account(user, "Pass-word-1")))
    assert caught.value.login is LoginProgress.NOT_ATTEMPTED  # refused before the password


async def test_insecure_transport_when_the_device_allows_it(
    pg_cluster: PostgresCluster, pg_roles: Roles
) -> None:
    user = pg_roles.create("Pass-word-1")
    insecure = make_target(
        "pg-test",
        "127.0.0.1",
        pg_cluster.port,
        options={"sslmode": "disable"},
        allow_insecure_transport=True,
    )
    assert EXECUTOR.insecure_transport(insecure) is not None
    login = await EXECUTOR.check_login(LoginRequest(insecure, Account(user, "Pass-word-1")))
    assert login.ok
    assert EXECUTOR.insecure_transport(target(pg_cluster)) is None


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(password=passwords)
def test_scram_verifier_is_the_one_the_server_computes(
    pg_cluster: PostgresCluster, pg_roles: Roles, password: str
) -> None:
    """The server hashes a plaintext password itself (SASLprep included); the client-side
    verifier, with the same salt and iterations, must be the same bytes."""
    user = pg_roles.create(password)
    with pg_cluster.superuser_connection() as conn:
        row = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (user,))
        stored = str(row.fetchone()[0])  # type: ignore[index]
    iterations, salt = stored.split("$")[1].split(":")
    assert scram_sha_256(password, base64.b64decode(salt), int(iterations)) == stored


async def test_the_server_log_never_sees_the_new_password() -> None:
    log_everything = "-c log_statement=all -c log_min_error_statement=info"
    with running_cluster(log_everything) as logged, roles_on(logged) as roles:
        current, new = "Current-pass-1234", "Brand-new-pass-5678;'é"
        user = roles.create(current)
        transcript = await self_change(logged, user, current, new)
        assert await roles.password_works(user, new)
        log = logged.log_path.read_text(errors="replace")
    # The statement is logged, carrying the verifier only.
    assert f'ALTER ROLE "{user}" WITH PASSWORD \'SCRAM-SHA-256$4096:' in log
    assert new not in log and new.replace("'", "''") not in log
    assert_no_secret([transcript], new)


async def test_rendering_runs_off_the_event_loop(
    pg_cluster: PostgresCluster, pg_roles: Roles, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = renders_on_the_event_loop(monkeypatch, script_module)
    current, new = "Current-pass-1234", "Brand-new-pass-5678"
    user = pg_roles.create(current)
    await self_change(pg_cluster, user, current, new)
    assert await verify(pg_cluster, user, new)  # its expect: line renders too
    assert calls and not any(calls)


async def test_missing_database(pg_cluster: PostgresCluster, pg_roles: Roles) -> None:
    user = pg_roles.create("Pass-word-1")
    with pytest.raises(TemplateFailed, match="no database 'nope'") as caught:
        await EXECUTOR.check_login(
            LoginRequest(
                target(pg_cluster, options={"database": "nope"}), Account(user, "Pass-word-1")
            )
        )
    # The server says so after the password went in; only its text tells why the login
    # failed, which is never enough to give a lockout charge back.
    assert caught.value.login is LoginProgress.UNKNOWN


async def test_read_timeout_after_a_secret_is_outcome_unknown(
    pg_cluster: PostgresCluster, pg_roles: Roles
) -> None:
    user = pg_roles.create("Pass-word-1")
    template = "SELECT length({{ new_password }});\nSELECT pg_sleep(5);\n"
    with pytest.raises(ExecutorError) as caught:
        await EXECUTOR.run(
            RunRequest(
                target(pg_cluster, read_timeout=0.5),
                Account(user, "Pass-word-1"),
                template,
                context(pg_cluster, user, "Pass-word-1", "Secret-77"),
            )
        )
    assert caught.value.kind == "OutcomeUnknown" and "line 2" in str(caught.value)
    assert caught.value.login is LoginProgress.ACCEPTED and caught.value.may_retry
    assert_no_secret(error_texts(caught.value), "Secret-77", "Pass-word-1")


async def test_a_login_cut_off_before_its_verdict_is_of_unknown_outcome() -> None:
    # auth_delay holds every failed authentication 4 s before answering (as servers slowing
    # down password guessing do): the connect times out after the password was sent.
    with running_cluster(
        "-c shared_preload_libraries=auth_delay -c auth_delay.milliseconds=4000"
    ) as slow:
        with roles_on(slow) as roles:
            user = roles.create("Pass-word-1")
            with pytest.raises(ConnectFailed) as caught:
                await EXECUTOR.check_login(
                    LoginRequest(target(slow, connect_timeout=1.0), Account(user, "Wrong-pass-2"))
                )
            assert caught.value.login is LoginProgress.UNKNOWN and not caught.value.may_retry
            assert "after the password was sent" in str(caught.value)
            assert_no_secret(error_texts(caught.value), "Wrong-pass-2")
            # Heard in time, the same refusal is a clean one.
            refused = await EXECUTOR.check_login(
                LoginRequest(target(slow, connect_timeout=8.0), Account(user, "Wrong-pass-2"))
            )
            assert not refused.ok
        slow.stop()  # and a server that cannot be reached saw nothing
        with pytest.raises(ConnectFailed) as down:
            await EXECUTOR.check_login(LoginRequest(target(slow), Account(user, "Pass-word-1")))
        assert down.value.login is LoginProgress.NOT_ATTEMPTED and down.value.may_retry


# --- the template language -----------------------------------------------------------------


def test_statements_split_at_line_ends_only() -> None:
    statements = parse_script(
        "-- kind: change\n\nSELECT 'a;b';\nALTER ROLE x\n  WITH PASSWORD {{ new_password }};\n"
        "SELECT 1;\n-- expect: 1\n"
    )
    assert [(s.line, s.text) for s in statements] == [
        (3, "SELECT 'a;b'"),
        (4, "ALTER ROLE x\n  WITH PASSWORD {{ new_password }}"),
        (6, "SELECT 1"),
    ]
    assert statements[2].expect == "1" and statements[2].expect_line == 7


@pytest.mark.parametrize(
    ("template", "line", "words"),
    [
        ("SELECT 1;\nSELECT 2\n", 2, "does not end with ';'"),
        ("SELECT 1; -- no\n", 1, "does not end with ';'"),
        ("-- expect: x\nSELECT 1;\n", 1, "before any statement"),
        ("SELECT\n-- expect: x\n1;\n", 2, "inside a statement"),
        ("SELECT 1;\n-- expect: (\n", 2, "invalid regular expression"),
        ("SELECT 1;\n-- expect: a\n-- expect: b\n", 3, "only one expect"),
        ("SELECT 1;\n;\n", 2, "empty statement"),
        ("SELECT 1;\nSELECT {{ new_password;\n", 2, ""),
        ("-- just a comment\n", None, "runs no statement"),
    ],
)
def test_validate_rejects_bad_templates(template: str, line: int | None, words: str) -> None:
    with pytest.raises(TemplateSyntaxProblem) as caught:
        EXECUTOR.validate(template)
    assert caught.value.line == line
    assert words in caught.value.message


async def test_bad_template_fails_before_connecting(pg_cluster: PostgresCluster) -> None:
    with pytest.raises(ConfigurationError, match="line 1"):
        await EXECUTOR.run(
            RunRequest(
                target(pg_cluster, port=1),
                Account("nobody", "x"),
                "SELECT {{ nope }\n",
                context(pg_cluster, "nobody", "x", "y"),
            )
        )
