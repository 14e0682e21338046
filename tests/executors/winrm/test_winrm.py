"""WinrmExecutor against a protocol-level WS-Management peer (no Temporal involved).

No Windows host can run on Linux, so the peer (tests/servers/wsman_peer.py) is a stand-in that
speaks the real wire format pywinrm uses (SOAP over HTTP, Basic auth, WinRS shell operations),
decodes the PowerShell it receives and interprets exactly the shipped templates' statements with
PowerShell's own string-literal rules. An opt-in test at the end runs against a real host.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

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
    TemplateFailed,
)
from executors.shipped import shipped_templates
from executors.winrm.executor import BOOTSTRAP, PREAMBLE, WinrmExecutor, decode_stderr
from templating import TemplateContext, TemplateSyntaxProblem, escaping
from tests.executors.encodings import assert_masked, secrets_strategy
from tests.executors.helpers import error_texts, make_context, make_target
from tests.executors.http.local_api import LocalApi
from tests.servers.wsman_peer import WsmanPeer, lex

TEMPLATES = {t.name: t.body for t in shipped_templates() if t.executor == "winrm"}
EXECUTOR = WinrmExecutor()
ADMIN, ADMIN_PASSWORD = "keyturn-admin", "Adm1n'pass ‘w’ $x"
OLD = "Old-pass w0rd;$#'\"\\x`"

# The characters that break naive quoting in PowerShell and around it.
SPECIALS = "'‘’‚‛\"\\$;`% {}#@()é ßж"
passwords = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")),
    min_size=1,
    max_size=24,
).flatmap(lambda base: st.permutations(list(base + SPECIALS)).map("".join))


def target(peer: WsmanPeer, **options: object) -> Target:
    return make_target(
        "win-host",
        "127.0.0.1",
        peer.port,
        options={**peer.client_options(), **options},
        read_timeout=5.0,
    )


def context(
    username: str, current: str, new: str, auth: str = "", auth_pw: str = ""
) -> TemplateContext:
    return make_context("win-host", "127.0.0.1", 5985, username, current, new, auth, auth_pw)


def admin_request(peer: WsmanPeer, user: str, new: str, **options: object) -> RunRequest:
    return RunRequest(
        target(peer, **options),
        Account(ADMIN, ADMIN_PASSWORD),
        TEMPLATES["winrm/local-account"],
        context(user, peer.users.get(user, ""), new, ADMIN, ADMIN_PASSWORD),
    )


def self_request(peer: WsmanPeer, user: str, current: str, new: str) -> RunRequest:
    return RunRequest(
        target(peer),
        Account(user, current),
        TEMPLATES["winrm/local-account-self"],
        context(user, current, new),
    )


async def logs_in(peer: WsmanPeer, user: str, password: str) -> bool:
    request = LoginRequest(
        target(peer),
        Account(user, password),
        TEMPLATES["winrm/verify-login"],
        context(user, password, ""),
    )
    result = await EXECUTOR.check_login(request)
    return result.ok


def with_admin(peer: WsmanPeer) -> None:
    peer.users[ADMIN] = ADMIN_PASSWORD
    peer.admins.add(ADMIN)


def assert_no_secret(texts: list[str], *secrets: str) -> None:
    for text in texts:
        for secret in secrets:
            for form in (secret, escaping.powershell(secret)[1:-1]):
                assert form not in text, f"a secret leaked into {text!r}"


# -- change then verify -------------------------------------------------------------------------


async def test_admin_change_then_verify(wsman: WsmanPeer) -> None:
    with_admin(wsman)
    wsman.users["alice"] = OLD
    new = "N3w 'pass' ‘x’"

    result = await EXECUTOR.run(admin_request(wsman, "alice", new))

    assert wsman.users == {ADMIN: ADMIN_PASSWORD, "alice": new}
    script = wsman.scripts[0]
    assert script == (
        f"{PREAMBLE}\n"
        + TEMPLATES["winrm/local-account"]
        .replace("{{ username }}", "'alice'")
        .replace("{{ new_password }}", "'N3w ''pass'' ‘‘x’’'")
    )
    # The process listing shows only the bootstrap: no secret on any command line.
    encoded = base64.b64encode(BOOTSTRAP.encode("utf-16-le")).decode()
    assert wsman.command_lines == [
        "powershell.exe -NoProfile -NonInteractive -ExecutionPolicy Bypass "
        f"-EncodedCommand {encoded}"
    ]
    assert "Set-LocalUser -Name 'alice' -Password (ConvertTo-SecureString '***'" in (
        result.transcript
    )
    assert "< password set" in result.transcript and "= exit 0" in result.transcript
    assert_no_secret([result.transcript], new, OLD, ADMIN_PASSWORD)
    assert await logs_in(wsman, "alice", new)
    assert not await logs_in(wsman, "alice", OLD)
    assert wsman.actions[:6] == ["Create", "Command", "Send", "Receive", "Signal", "Delete"]


async def test_self_change_is_the_default_and_works(wsman: WsmanPeer) -> None:
    assert EXECUTOR.default_templates["change"] == "winrm/local-account-self"
    wsman.users["bob"] = OLD
    new = "S3lf-change'd"

    result = await EXECUTOR.run(self_request(wsman, "bob", OLD, new))

    assert wsman.users == {"bob": new}
    assert "$account.ChangePassword('***', '***')" in result.transcript
    assert await logs_in(wsman, "bob", new)
    assert not await logs_in(wsman, "bob", OLD)


async def test_domain_template_resets_through_admin(wsman: WsmanPeer) -> None:
    with_admin(wsman)
    wsman.users["carol@corp.example"] = OLD
    request = admin_request(wsman, "carol@corp.example", "D0main'new")
    request = RunRequest(
        request.target, request.account, TEMPLATES["winrm/domain-account"], request.context
    )
    await EXECUTOR.run(request)
    assert wsman.users["carol@corp.example"] == "D0main'new"
    assert "Set-ADAccountPassword -Identity 'carol@corp.example' -Reset" in wsman.scripts[0]


async def test_wrong_current_password_is_refused_and_changes_nothing(wsman: WsmanPeer) -> None:
    wsman.users["dave"] = OLD
    with pytest.raises(AuthenticationFailed) as caught:
        await EXECUTOR.run(self_request(wsman, "dave", "not-the-password", "whatever'1"))
    assert "refused the password of 'dave'" in str(caught.value)
    assert "win-host" in str(caught.value)
    assert wsman.users == {"dave": OLD}
    assert wsman.scripts == [] and wsman.actions == []
    assert wsman.failed_logins == 1  # one login attempt: one unit of the lockout budget
    assert caught.value.login is LoginProgress.REFUSED
    assert_no_secret([str(caught.value), caught.value.transcript], "not-the-password", OLD)


# -- escaping -----------------------------------------------------------------------------------


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(old=passwords, new=passwords)
async def test_any_password_arrives_exactly(wsman: WsmanPeer, old: str, new: str) -> None:
    assume(old != new)
    wsman.reset()
    wsman.users["erin"] = old

    await EXECUTOR.run(self_request(wsman, "erin", old, new))

    assert wsman.users == {"erin": new}
    _, literals = lex(wsman.scripts[0])
    assert old in literals and new in literals
    assert await logs_in(wsman, "erin", new)
    assert not await logs_in(wsman, "erin", old)


async def test_injection_in_password_and_username_is_literal(wsman: WsmanPeer) -> None:
    with_admin(wsman)
    user = "x'; Remove-LocalUser keyturn-admin; '"
    wsman.users[user] = OLD
    wsman.users["bystander"] = "untouched"
    new = (
        "x'; Set-LocalUser -Name 'bystander' -Password "
        "(ConvertTo-SecureString 'p' -AsPlainText -Force); '"
    )

    await EXECUTOR.run(admin_request(wsman, user, new))

    assert wsman.users == {ADMIN: ADMIN_PASSWORD, user: new, "bystander": "untouched"}
    assert len(wsman.scripts) == 1


def test_powershell_lexer_reads_doubled_quotes_like_powershell() -> None:
    for value in ["'", "‘’", "a''b", "‚‛'", "x'‘", "", "trail'"]:
        skeleton, literals = lex(f"Write-Output {escaping.powershell(value)}")
        assert skeleton == "Write-Output \x000\x00" and literals == [value]


# -- validation ---------------------------------------------------------------------------------


def test_shipped_templates_validate() -> None:
    assert set(TEMPLATES) == {
        "winrm/local-account",
        "winrm/local-account-self",
        "winrm/domain-account",
        "winrm/verify-login",
    }
    for body in TEMPLATES.values():
        EXECUTOR.validate(body)
    for key, name in EXECUTOR.default_templates.items():
        assert name in TEMPLATES, key


@pytest.mark.parametrize(
    ("template", "line"),
    [
        ("# kind: change\nWrite-Output 'a'\nSet-LocalUser -Name {{ username }\n", 3),
        ("# kind: change\n\n\n{% if x %}\nWrite-Output 1\n", 4),
        ("# kind: change\nWrite-Output '{{ new_password }}'\n", 2),
        ('# kind: change\n\nWrite-Output "{{ username }}"\n', 3),
        ("", None),
        ("# kind: change\n# only comments\n", None),
    ],
)
def test_validate_rejects_with_the_line(template: str, line: int | None) -> None:
    with pytest.raises(TemplateSyntaxProblem) as caught:
        EXECUTOR.validate(template)
    assert caught.value.line == line


async def test_undefined_tag_names_its_line_and_connects_nowhere(wsman: WsmanPeer) -> None:
    with_admin(wsman)
    template = "# kind: change\nWrite-Output 'x'\nSet-LocalUser -Name {{ usernme }}\n"
    request = admin_request(wsman, "alice", "n")
    with pytest.raises(ConfigurationError) as caught:
        await EXECUTOR.run(RunRequest(request.target, request.account, template, request.context))
    assert "line 3" in str(caught.value) and "usernme" in str(caught.value)
    assert wsman.actions == []


# -- failures and their classes -----------------------------------------------------------------


async def test_policy_refusal_is_change_rejected_without_secrets(wsman: WsmanPeer) -> None:
    with_admin(wsman)
    wsman.users["frank"] = OLD
    wsman.min_length = 64
    new = "sh'ort ‘pw’"

    with pytest.raises(ChangeRejected) as caught:
        await EXECUTOR.run(admin_request(wsman, "frank", new))

    message = str(caught.value)
    assert "does not meet the password policy requirements" in message
    assert "win-host" in message and "status 1" in message
    assert wsman.users["frank"] == OLD
    assert_no_secret([message, caught.value.transcript], new, ADMIN_PASSWORD, OLD)


# The stand-in's PowerShell reads one statement per line: no control characters in a secret here
# (real PowerShell takes a newline inside a quoted string; the SSH and SQL tests send them).
@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(secret=secrets_strategy.filter(lambda s: not any(c in s for c in "\n\t\r")))
async def test_an_echoed_secret_is_redacted_in_every_encoding(
    wsman: WsmanPeer, secret: str
) -> None:
    # PowerShell over WinRM quotes the failing source line ("+ Set-LocalUser ... '<secret>'") in
    # its CLIXML error, and a script may print the secret itself: neither reaches the error.
    wsman.reset()
    with_admin(wsman)
    wsman.users["frank"] = OLD
    wsman.min_length = 64  # longer than any drawn secret: the change is refused, with the echo
    with pytest.raises(ChangeRejected) as refused:
        await EXECUTOR.run(admin_request(wsman, "frank", secret))
    printed = admin_request(wsman, "frank", secret)
    template = (
        "# kind: change\nWrite-Output {{ new_password }}\nSet-LocalUsr -Name {{ username }}\n"
    )
    with pytest.raises(TemplateFailed) as failed:
        await EXECUTOR.run(RunRequest(printed.target, printed.account, template, printed.context))
    assert wsman.users["frank"] == OLD
    for caught in (refused.value, failed.value):
        assert_masked(error_texts(caught), secret, ADMIN_PASSWORD, where=caught.kind)


async def test_unknown_cmdlet_is_a_template_error(wsman: WsmanPeer) -> None:
    with_admin(wsman)
    request = admin_request(wsman, "alice", "n3w")
    template = "# kind: change\nSet-LocalUsr -Name {{ username }}\n"
    with pytest.raises(TemplateFailed) as caught:
        await EXECUTOR.run(RunRequest(request.target, request.account, template, request.context))
    assert "is not recognized as the name of a cmdlet" in str(caught.value)


async def test_nothing_listening_is_connect_failed(wsman: WsmanPeer) -> None:
    down = WsmanPeer()
    down.start()
    port = down.port
    down.close()
    request = self_request(wsman, "gina", OLD, "n3w")
    request = RunRequest(
        Target("win-host", "127.0.0.1", port, options=dict(request.target.options)),
        request.account,
        request.template,
        request.context,
    )
    with pytest.raises(ConnectFailed) as caught:
        await EXECUTOR.run(request)
    assert "cannot reach WinRM" in str(caught.value) and caught.value.retryable
    assert caught.value.login is LoginProgress.NOT_ATTEMPTED and caught.value.may_retry


async def test_an_untrusted_certificate_is_refused_before_any_login(tmp_path: Path) -> None:
    api = LocalApi(tls_dir=tmp_path).start()  # an HTTPS peer with a certificate of its own CA
    try:
        port = int(api.base_url.rsplit(":", 1)[1])
        request = LoginRequest(
            Target("win-host", "127.0.0.1", port, options={"transport": "basic"}),
            Account("someone", OLD),
        )
        with pytest.raises(HostKeyMismatch) as caught:
            await EXECUTOR.check_login(request)
    finally:
        api.close()
    assert "ca_file" in str(caught.value)
    assert caught.value.login is LoginProgress.NOT_ATTEMPTED  # the handshake never completed
    assert api.requests == []


async def test_wrong_path_is_reported(wsman: WsmanPeer) -> None:
    wsman.users["hank"] = OLD
    request = self_request(wsman, "hank", OLD, "n3w")
    request = RunRequest(
        target(wsman, path="/nope"), request.account, request.template, request.context
    )
    with pytest.raises(TemplateFailed) as caught:
        await EXECUTOR.run(request)
    assert "404" in str(caught.value)
    # The request carried the credentials; a 404 says nothing of what the target made of them.
    assert caught.value.login is LoginProgress.UNKNOWN


@pytest.mark.parametrize("mode", ["hang", "drop_on_receive"])
async def test_lost_after_the_script_was_sent_is_outcome_unknown(
    wsman: WsmanPeer, mode: str
) -> None:
    wsman.users["ivan"] = OLD
    setattr(wsman, mode, True)
    request = self_request(wsman, "ivan", OLD, "n3w'pw")
    request = RunRequest(
        Target(
            "win-host",
            "127.0.0.1",
            wsman.port,
            options=dict(request.target.options),
            read_timeout=1.0,
        ),
        request.account,
        request.template,
        request.context,
    )
    with pytest.raises(OutcomeUnknown) as caught:
        await EXECUTOR.run(request)
    assert "probe" in str(caught.value)
    assert caught.value.login is LoginProgress.ACCEPTED and caught.value.may_retry  # a shell ran
    assert wsman.users["ivan"] == "n3w'pw"  # it did happen: only a probe can tell
    assert_no_secret([str(caught.value), caught.value.transcript], "n3w'pw", OLD)


async def test_verify_refuses_a_wrong_password_and_flags_another_account(
    wsman: WsmanPeer,
) -> None:
    wsman.users["judy"] = OLD
    assert not await logs_in(wsman, "judy", "nope")
    assert await EXECUTOR.check_login(LoginRequest(target(wsman), Account("judy", OLD)))
    request = LoginRequest(
        target(wsman),
        Account("judy", OLD),
        TEMPLATES["winrm/verify-login"],
        context("someone-else", OLD, ""),
    )
    with pytest.raises(TemplateFailed) as caught:
        await EXECUTOR.check_login(request)
    assert "logged in as judy, expected someone-else" in str(caught.value)
    assert_no_secret([str(caught.value)], OLD)


async def test_encoded_command_mode_puts_the_script_on_the_command_line(wsman: WsmanPeer) -> None:
    """The trade-off of script_transfer 'encoded-command': it works, but the script (secrets
    included) is on the command line, base64 only, visible in the host's process listing."""
    with_admin(wsman)
    wsman.users["kim"] = OLD
    await EXECUTOR.run(admin_request(wsman, "kim", "Enc0ded'pw", script_transfer="encoded-command"))
    assert wsman.users["kim"] == "Enc0ded'pw"
    encoded = wsman.command_lines[0].rsplit(" ", 1)[1]
    assert "Enc0ded''pw" in base64.b64decode(encoded).decode("utf-16-le")


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"transport": "digest"}, "transport must be one of"),
        ({"scheme": "ftp"}, "scheme must be one of"),
        ({"colour": "blue"}, "unknown option"),
        ({"path": "wsman"}, "path must start with"),
        ({"transport": "kerberos"}, "cannot use WinRM"),
    ],
)
async def test_bad_options_are_reported_before_connecting(
    wsman: WsmanPeer, options: dict[str, object], needle: str
) -> None:
    request = self_request(wsman, "x", OLD, "N3w-password")
    request = RunRequest(
        target(wsman, **options), request.account, request.template, request.context
    )
    with pytest.raises(ConfigurationError) as caught:
        await EXECUTOR.run(request)
    assert needle in str(caught.value)
    assert wsman.actions == []


def test_clixml_stderr_is_decoded_without_the_source_echo() -> None:
    raw = (
        '#< CLIXML\r\n<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/'
        '04"><S S="progress">ignored</S><S S="Error">Boom: a_x005F_xb_x000D__x000A_</S>'
        '<S S="Error">+ Set-LocalUser -Password \'secr_x000D__x000A_</S></Objs>'
    )
    assert decode_stderr(raw) == "Boom: a_xb"


def test_every_error_is_an_executor_error() -> None:
    for cls in (AuthenticationFailed, ChangeRejected, ConnectFailed, OutcomeUnknown):
        assert issubclass(cls, ExecutorError)


# -- a real Windows host (opt-in) ---------------------------------------------------------------

REAL = ("HOST", "ADMIN", "ADMIN_PASSWORD", "USER")
REAL_ENV = {name: os.environ.get(f"KEYTURN_TEST_WINRM_{name}", "") for name in REAL}


@pytest.mark.skipif(
    not all(REAL_ENV.values()),
    reason="set KEYTURN_TEST_WINRM_HOST, KEYTURN_TEST_WINRM_ADMIN, "
    "KEYTURN_TEST_WINRM_ADMIN_PASSWORD and KEYTURN_TEST_WINRM_USER to run against a real host "
    "(optional: KEYTURN_TEST_WINRM_TRANSPORT, _SCHEME, _PORT, _VERIFY_TLS=0)",
)
async def test_against_a_real_windows_host() -> None:
    """Resets USER's password through ADMIN (local-account), verifies it, and checks that a
    wrong password is refused. USER's password is left at a random value: use a test account."""
    import secrets

    scheme = os.environ.get("KEYTURN_TEST_WINRM_SCHEME", "https")
    real = Target(
        name=REAL_ENV["HOST"],
        address=REAL_ENV["HOST"],
        port=int(
            os.environ.get("KEYTURN_TEST_WINRM_PORT") or (5986 if scheme == "https" else 5985)
        ),
        options={
            "transport": os.environ.get("KEYTURN_TEST_WINRM_TRANSPORT", "ntlm"),
            "scheme": scheme,
            "verify_tls": os.environ.get("KEYTURN_TEST_WINRM_VERIFY_TLS", "1") != "0",
        },
    )
    admin = Account(REAL_ENV["ADMIN"], REAL_ENV["ADMIN_PASSWORD"])
    user = REAL_ENV["USER"]
    new = "Kt-" + secrets.token_urlsafe(12) + "'‘$;"
    ctx = context(user, "", new, admin.username, admin.password)
    await EXECUTOR.run(RunRequest(real, admin, TEMPLATES["winrm/local-account"], ctx))
    verify = LoginRequest(real, Account(user, new), TEMPLATES["winrm/verify-login"], ctx)
    assert (await EXECUTOR.check_login(verify)).ok
    assert not (await EXECUTOR.check_login(LoginRequest(real, Account(user, "wrong")))).ok


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"transport": "basic", "scheme": "http"}, "'basic' over http"),
        ({"transport": "basic", "scheme": "https", "verify_tls": False}, "verify_tls is false"),
    ],
)
async def test_cleartext_or_unverified_is_refused(
    wsman: WsmanPeer, options: dict[str, object], reason: str
) -> None:
    wsman.users["kim"] = OLD
    insecure = make_target("win-host", "127.0.0.1", wsman.port, options=options)
    with pytest.raises(ConfigurationError, match="allow_insecure_transport") as caught:
        await EXECUTOR.check_login(LoginRequest(insecure, Account("kim", OLD)))
    assert reason in str(caught.value)
    assert caught.value.login is LoginProgress.NOT_ATTEMPTED
    assert wsman.actions == []  # nothing reached the peer


async def test_basic_over_http_when_the_device_allows_it() -> None:
    plain = WsmanPeer()  # serves plain http
    plain.start()
    try:
        plain.users["lea"] = OLD
        insecure = make_target(
            "win-host",
            "127.0.0.1",
            plain.port,
            options={"transport": "basic", "scheme": "http"},
            allow_insecure_transport=True,
        )
        assert (await EXECUTOR.check_login(LoginRequest(insecure, Account("lea", OLD)))).ok
        assert not (await EXECUTOR.check_login(LoginRequest(insecure, Account("lea", "x")))).ok
    finally:
        plain.close()
