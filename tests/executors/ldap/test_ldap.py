"""The ldap executor against a real OpenLDAP slapd (tests/servers/slapd.py)."""

from __future__ import annotations

from pathlib import Path

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
)
from executors.ldap import LdapExecutor
from executors.ldap.script import canonical_dn, encode_value, parse_script
from templating import TemplateContext, TemplateSyntaxProblem
from tests.executors.encodings import assert_masked, secrets_strategy
from tests.executors.helpers import error_texts, make_context, make_target
from tests.servers.slapd import ADMIN_DN, ADMIN_PASSWORD, MIN_LENGTH, SUFFIX, Slapd, Users

TEMPLATES = Path(__file__).parents[3] / "executors" / "templates" / "ldap"
OLD = "Old pw;'\"\\ é"
EXECUTOR = LdapExecutor()


def template(name: str) -> str:
    return (TEMPLATES / f"{name}.tpl").read_text()


def target(slapd: Slapd, **options: object) -> Target:
    return make_target(
        "dir-1",
        "127.0.0.1",
        slapd.port,
        options={"base_dn": SUFFIX, **slapd.client_options(), **options},
        connect_timeout=5,
        read_timeout=10.5,
    )


def context(username: str, current: str, new: str, auth_password: str = "") -> TemplateContext:
    auth_username = ADMIN_DN if auth_password else ""
    return make_context(
        "dir-1", "127.0.0.1", 389, username, current, new, auth_username, auth_password
    )


async def change_self(slapd: Slapd, user: str, current: str, new: str) -> str:
    result = await EXECUTOR.run(
        RunRequest(
            target(slapd),
            Account(user, current),
            template("passwd-modify-self"),
            context(user, current, new),
        )
    )
    return result.transcript


async def change_admin(slapd: Slapd, user: str, new: str) -> str:
    result = await EXECUTOR.run(
        RunRequest(
            target(slapd),
            Account(ADMIN_DN, ADMIN_PASSWORD),
            template("passwd-modify-admin"),
            context(user, OLD, new, ADMIN_PASSWORD),
        )
    )
    return result.transcript


async def verify(slapd: Slapd, user: str, password: str) -> bool:
    result = await EXECUTOR.check_login(
        LoginRequest(
            target(slapd),
            Account(user, password),
            template("verify-bind"),
            context(user, password, password),
        )
    )
    return result.ok


# -- changes against slapd ----------------------------------------------------------------


async def test_self_change_then_verify(slapd: Slapd, ldap_users: Users) -> None:
    user = ldap_users.create(OLD)
    transcript = await change_self(slapd, user, OLD, "New pw 1!")

    assert await verify(slapd, user, "New pw 1!")
    assert not await verify(slapd, user, OLD)
    assert ldap_users.password_hash(user).startswith(b"{SSHA}")
    assert "> passwd_modify" in transcript and "old=*** new=***" in transcript
    assert OLD not in transcript and "New pw 1!" not in transcript


async def test_admin_change_then_verify(slapd: Slapd, ldap_users: Users) -> None:
    user = ldap_users.create(OLD)
    transcript = await change_admin(slapd, user, "Admin-set pw")

    assert ldap_users.password_works(user, "Admin-set pw")
    assert not ldap_users.password_works(user, OLD)
    assert ldap_users.bind_works(ADMIN_DN, ADMIN_PASSWORD)
    assert f"> passwd_modify user={Users.dn(user)} old=- new=***" in transcript
    assert ADMIN_PASSWORD not in transcript


async def test_wrong_current_password_is_refused_and_changes_nothing(
    slapd: Slapd, ldap_users: Users
) -> None:
    user = ldap_users.create(OLD)
    before = ldap_users.password_hash(user)

    with pytest.raises(AuthenticationFailed) as caught:
        await change_self(slapd, user, "wrong-old", "New pw 2!")

    assert caught.value.step == "bind" and "dir-1" in str(caught.value)
    assert "invalidCredentials" in str(caught.value)
    assert caught.value.login is LoginProgress.REFUSED
    assert "wrong-old" not in str(caught.value) + caught.value.transcript
    assert ldap_users.password_hash(user) == before
    assert ldap_users.password_works(user, OLD)


async def test_policy_refusal_is_change_rejected(slapd: Slapd, ldap_users: Users) -> None:
    user = ldap_users.create(OLD)
    short = "x" * (MIN_LENGTH - 1)

    with pytest.raises(ChangeRejected) as caught:
        await change_self(slapd, user, OLD, short)

    assert "constraintViolation" in str(caught.value) and "line 5" in str(caught.value)
    assert ldap_users.password_works(user, OLD)


async def test_verify_reports_refused_secret_as_not_ok(slapd: Slapd, ldap_users: Users) -> None:
    user = ldap_users.create(OLD)
    assert await verify(slapd, user, OLD)
    assert not await verify(slapd, user, "not it")
    probe = await EXECUTOR.check_login(LoginRequest(target(slapd), Account(user, "")))
    assert not probe.ok  # an empty password is never an (anonymous) login


async def test_verify_fails_when_the_bind_is_someone_else(slapd: Slapd, ldap_users: Users) -> None:
    user, other = ldap_users.create(OLD), ldap_users.create("Other pw")
    with pytest.raises(TemplateFailed) as caught:
        await EXECUTOR.check_login(
            LoginRequest(
                target(slapd),
                Account(Users.dn(other), "Other pw"),
                template("verify-bind"),
                context(user, "Other pw", "Other pw"),
            )
        )
    assert "whoami" in caught.value.step and "Other pw" not in str(caught.value)
    assert caught.value.login is LoginProgress.ACCEPTED  # the bind worked; the check did not


async def test_unreachable_directory_is_connect_failed(slapd: Slapd) -> None:
    down = make_target("dir-down", "127.0.0.1", 1, options=target(slapd).options, connect_timeout=2)
    with pytest.raises(ConnectFailed) as caught:
        await EXECUTOR.check_login(LoginRequest(down, Account("someone", "S3cret-pw")))
    assert "dir-down" in str(caught.value) and "S3cret-pw" not in str(caught.value)
    assert caught.value.login is LoginProgress.NOT_ATTEMPTED and caught.value.may_retry


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({}, "neither options.use_ssl"),
        ({"start_tls": True, "verify_tls": False}, "verify_tls is false"),
        ({"use_ssl": True, "verify_tls": False}, "verify_tls is false"),
    ],
)
async def test_cleartext_or_unverified_is_refused(
    slapd: Slapd, options: dict[str, object], reason: str
) -> None:
    insecure = make_target("dir-1", "127.0.0.1", slapd.port, options={"base_dn": SUFFIX, **options})
    with pytest.raises(ConfigurationError, match="allow_insecure_transport") as caught:
        await EXECUTOR.check_login(LoginRequest(insecure, Account("someone", "pw")))
    assert reason in str(caught.value)
    assert caught.value.login is LoginProgress.NOT_ATTEMPTED


async def test_ldaps(slapd: Slapd, ldap_users: Users) -> None:
    user = ldap_users.create(OLD)
    options = {"use_ssl": True, "ca_file": str(slapd.tls.ca)}
    ldaps = make_target(
        "dir-1", "127.0.0.1", slapd.ldaps_port, options={"base_dn": SUFFIX, **options}
    )
    assert (await EXECUTOR.check_login(LoginRequest(ldaps, Account(user, OLD)))).ok
    assert not (await EXECUTOR.check_login(LoginRequest(ldaps, Account(user, "Wrong-pw-1")))).ok


async def test_a_certificate_of_another_ca_is_refused(slapd: Slapd, ldap_users: Users) -> None:
    user = ldap_users.create(OLD)
    untrusted = make_target(  # StartTLS, verified against the system's CAs only
        "dir-1", "127.0.0.1", slapd.port, options={"base_dn": SUFFIX, "start_tls": True}
    )
    with pytest.raises(ConnectFailed) as caught:
        await EXECUTOR.check_login(LoginRequest(untrusted, Account(user, OLD)))
    assert caught.value.login is LoginProgress.NOT_ATTEMPTED  # the bind never went out


async def test_missing_base_dn_is_a_clear_error(slapd: Slapd) -> None:
    bare = Target("dir-1", "127.0.0.1", slapd.port)
    with pytest.raises(ConfigurationError, match="options.base_dn"):
        await EXECUTOR.check_login(LoginRequest(bare, Account("someone", "pw")))


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.text(
        alphabet=st.sampled_from(list("aZ09'\"\\%$; {}()*,=#+<>éßж\t")), min_size=MIN_LENGTH
    ).filter(lambda s: s.strip() == s and s.strip())
)
async def test_awkward_passwords_change_exactly(slapd: Slapd, ldap_users: Users, new: str) -> None:
    user = ldap_users.create(OLD)
    await change_self(slapd, user, OLD, new)
    assert ldap_users.password_works(user, new)
    assert not ldap_users.password_works(user, OLD)


# -- injection ----------------------------------------------------------------------------


@pytest.mark.parametrize("username", ["x,ou=evil", "*)(uid=*", "x'; DROP ROLE admin; --"])
async def test_injection_in_username_and_password_changes_only_that_entry(
    slapd: Slapd, ldap_users: Users, username: str
) -> None:
    bystander = ldap_users.create("Bystander pw")
    user = ldap_users.create(OLD, username=username)
    entries = ldap_users.entry_dns()
    bystander_hash = ldap_users.password_hash(bystander)
    evil = "x'); (uid=*) ,ou=evil \\2a"

    await change_admin(slapd, user, evil)
    assert await verify(slapd, user, evil)

    await change_self(slapd, user, evil, evil + "2")
    assert ldap_users.password_works(user, evil + "2")
    assert ldap_users.entry_dns() == entries
    assert ldap_users.password_hash(bystander) == bystander_hash
    assert ldap_users.bind_works(ADMIN_DN, ADMIN_PASSWORD)


# -- Active Directory's unicodePwd --------------------------------------------------------


def test_unicodepwd_encoding_bytes() -> None:
    assert encode_value('Pa"ß1', "unicodepwd") == (b'"\x00P\x00a\x00"\x00\xdf\x001\x00"\x00')
    assert encode_value("é", "") == "é".encode()


async def test_ad_template_sends_the_exact_modify(slapd: Slapd, ldap_users: Users) -> None:
    # slapd carries an AD-like unicodePwd octet-string attribute (tests/servers/slapd.py): the
    # rootdn runs the shipped AD template and the stored bytes are read back.
    user = ldap_users.create(OLD, ad=True)
    new = 'Nëw "AD" pw ж'
    result = await EXECUTOR.run(
        RunRequest(
            target(slapd),
            Account(ADMIN_DN, ADMIN_PASSWORD),
            template("ad-unicodepwd-admin"),
            context(user, OLD, new, ADMIN_PASSWORD),
        )
    )
    assert ldap_users.attribute(Users.dn(user), "unicodePwd") == f'"{new}"'.encode("utf-16-le")
    assert f"> modify {Users.dn(user)} replace unicodePwd as unicodepwd=***" in result.transcript
    assert new not in result.transcript


# -- template validation ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("# c\nbind: x", 2, "unknown operation"),
        ("passwd_modify:\n  old: a", 1, "needs a new:"),
        ("  new: x", 1, "before any operation"),
        ("modify: {{ user_dn }}\n  replace: x", 2, "modify: fields read"),
        ("modify: {{ user_dn }}\n  replace pwd as rot13: x", 2, "unknown value encoding"),
        ("modify: {{ user_dn }}", 1, "at least one"),
        ("search: {{ base_dn }}\n  scope: deep", 2, "scope:"),
        ("search: {{ base_dn }}\n  filter: (uid={{ new_password }})", 2, "secret cannot go"),
        ("whoami: uid={{ current_password }}", 1, "secret cannot go"),
        ("passwd_modify:\n  new: {{ new_password }\n", 2, ""),
        ("passwd_modify:\n  new: a\n  new: b", 3, "given twice"),
        ("compare: {{ user_dn }}\n  value: a", 1, "needs a attribute"),
        ("new: x", 1, "indented"),
    ],
)
def test_validate_names_the_line(text: str, line: int, message: str) -> None:
    with pytest.raises(TemplateSyntaxProblem) as caught:
        EXECUTOR.validate(text)
    assert caught.value.line == line and message in caught.value.message


def test_shipped_templates_parse() -> None:
    for path in TEMPLATES.glob("*.tpl"):
        EXECUTOR.validate(path.read_text())
    ops = parse_script(template("ad-unicodepwd-admin"))
    assert [(f.name, f.attribute, f.encoding) for f in ops[0].fields] == [
        ("replace", "unicodePwd", "unicodepwd")
    ]


def test_dn_comparison_handles_escapes() -> None:
    assert canonical_dn("uid=x\\2Cou\\3Devil, ou=People,dc=k") == canonical_dn(
        "UID=x\\,ou\\=evil,ou=people,dc=k"
    )


async def test_no_secret_in_errors_or_transcripts(slapd: Slapd, ldap_users: Users) -> None:
    user = ldap_users.create(OLD)
    secrets_ = (OLD, "abc")
    errors: list[ExecutorError] = []
    for current, new in ((OLD, "abc"), ("abc", "Longer pw")):
        try:
            await change_self(slapd, user, current, new)
        except ExecutorError as exc:
            errors.append(exc)
    assert [e.kind for e in errors] == ["ChangeRejected", "AuthenticationFailed"]
    for error in errors:
        for secret in secrets_:
            assert secret not in str(error) and secret not in error.transcript


async def test_a_hung_directory_times_out_as_connect_failed(
    slapd: Slapd, ldap_users: Users
) -> None:
    user = ldap_users.create(OLD)
    # Plain LDAP (the device allows it), so that the bind itself goes out to the hung server.
    hung = Target(
        "dir-1",
        "127.0.0.1",
        slapd.port,
        options={"base_dn": SUFFIX},
        read_timeout=1,
        allow_insecure_transport=True,
    )
    slapd.pause()
    try:
        with pytest.raises(ConnectFailed) as caught:
            await EXECUTOR.check_login(LoginRequest(hung, Account(user, OLD)))
    finally:
        slapd.resume()
    assert OLD not in str(caught.value)
    # The connection opened (the kernel accepts for a stopped slapd) and the bind request, with
    # the password, went out: no verdict came back, so the login's outcome is unknown.
    assert caught.value.login is LoginProgress.UNKNOWN and not caught.value.may_retry
    assert ldap_users.password_works(user, OLD)


@pytest.mark.parametrize(("name", "flags"), [("ad-disable", b"514"), ("ad-enable", b"512")])
async def test_ad_account_templates_send_the_exact_modify(
    slapd: Slapd, ldap_users: Users, name: str, flags: bytes
) -> None:
    # No Active Directory runs here: slapd stands in with an AD-like userAccountControl
    # attribute (tests/servers/slapd.py). It proves the request the shipped template sends and
    # that it lands on the entry; that AD then refuses (or allows) the logins is AD's part,
    # which only a real domain controller can show.
    user = ldap_users.create(OLD, ad=True)
    result = await EXECUTOR.run(
        RunRequest(
            target(slapd),
            Account(ADMIN_DN, ADMIN_PASSWORD),
            template(name),
            context(user, OLD, "", ADMIN_PASSWORD),
        )
    )
    assert ldap_users.attribute(Users.dn(user), "userAccountControl") == flags
    assert f"> modify {Users.dn(user)} replace userAccountControl=" in result.transcript


# Operations that carry the new password as a value (a template may not put a secret in a DN
# or a filter: servers log those in clear) where the directory refuses it or the executor shows
# it: a value of the wrong syntax, and a comparison that does not match.
ECHOES = [
    "modify: {{ user_dn }}\n  add telephoneNumber: {{ new_password }}\n",
    "compare: {{ user_dn }}\n  attribute: description\n  value: {{ new_password }}\n",
]


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(secret=secrets_strategy)
async def test_an_echoed_secret_is_redacted_in_every_encoding(
    slapd: Slapd, ldap_users: Users, secret: str
) -> None:
    user = ldap_users.create(OLD)
    for echo in ECHOES:
        request = RunRequest(
            target(slapd),
            Account(ADMIN_DN, ADMIN_PASSWORD),
            echo,
            context(user, OLD, secret, ADMIN_PASSWORD),
        )
        try:
            texts = [(await EXECUTOR.run(request)).transcript]
        except ExecutorError as exc:
            texts = error_texts(exc)
        assert_masked(texts, secret, ADMIN_PASSWORD, where=echo)
