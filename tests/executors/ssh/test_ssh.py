"""SshExecutor against a real OpenSSH server with throwaway users (no Temporal involved)."""

from __future__ import annotations

import asyncio
import hashlib
import string
import time
from pathlib import Path

import asyncssh
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
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
    get_executor,
    registry,
)
from executors.shipped import shipped_templates
from executors.ssh import SshExecutor
from executors.ssh import executor as ssh_executor
from executors.ssh import session as session_module
from executors.ssh.script import Step, parse_script
from templating import TemplateContext, TemplateSyntaxProblem
from tests.executors.encodings import encodings_present, secrets_strategy
from tests.executors.helpers import (
    assert_no_secret,
    error_texts,
    make_context,
    make_target,
    renders_on_the_event_loop,
)
from tests.servers.sshd import Sshd, Users

TEMPLATES = {template.name: template.body for template in shipped_templates()}
EXECUTOR = SshExecutor()

# Printable ASCII without tab/newline/etc. (a password is typed on one line), space kept.
ALPHABET = "".join(c for c in string.printable if c == " " or c not in string.whitespace)
# The characters that break naive quoting: shell, regex, template comment, directive separator.
SPECIALS = "'\"\\$; #:"
plain_passwords = st.text(alphabet=ALPHABET, min_size=12, max_size=40)
special_passwords = st.text(alphabet=ALPHABET, min_size=4, max_size=32).flatmap(
    lambda base: st.permutations(list(base + SPECIALS)).map("".join)
)
passwords = st.one_of(plain_passwords, special_passwords)


def target(sshd: Sshd, **overrides: object) -> Target:
    # The pinned key as a default that a test can override.
    fields: dict[str, object] = {"host_keys": (sshd.host_key_line,), **overrides}
    return make_target("test-host", "127.0.0.1", sshd.port, **fields)


def context(
    sshd: Sshd, username: str, current: str, new: str, auth_user: str = "", auth_password: str = ""
) -> TemplateContext:
    return make_context(
        "test-host", "127.0.0.1", sshd.port, username, current, new, auth_user, auth_password
    )


def as_user(sshd: Sshd, user: str, password: str, template: str, new: str = "x") -> RunRequest:
    """A request to run ``template`` logged in as ``user`` itself; ``new``: its new secret."""
    return RunRequest(
        target(sshd), Account(user, password), template, context(sshd, user, password, new)
    )


async def self_change(sshd: Sshd, user: str, current: str, new: str) -> str:
    result = await EXECUTOR.run(as_user(sshd, user, current, TEMPLATES["ssh/linux-passwd"], new))
    return result.transcript


async def admin_change(
    sshd: Sshd, admin: str, admin_password: str, user: str, current: str, new: str
) -> str:
    result = await EXECUTOR.run(
        RunRequest(
            target(sshd),
            Account(admin, admin_password),
            TEMPLATES["ssh/linux-chpasswd"],
            context(sshd, user, current, new, admin, admin_password),
        )
    )
    return result.transcript


# --- the shipped change templates ---------------------------------------------------------------


def test_registered_through_the_entry_point() -> None:
    assert isinstance(get_executor("ssh"), SshExecutor)


def test_shipped_templates_are_valid() -> None:
    """Every installed executor's shipped templates validate, and its defaults exist."""
    shipped = {template.name: template for template in shipped_templates()}
    assert {"ssh/linux-passwd", "ssh/linux-chpasswd", "ssh/verify-login"} <= set(shipped)
    assert shipped["ssh/linux-passwd"].kind == "change"
    assert shipped["ssh/verify-login"].kind == "verify"
    for template in shipped.values():
        get_executor(template.executor).validate(template.body)
    for name, executor in registry().items():
        for purpose, template_name in executor.default_templates.items():
            assert template_name in shipped, (name, template_name)
            assert shipped[template_name].kind == purpose.removesuffix("-as-admin")


async def test_self_change_with_passwd(sshd: Sshd, ssh_users: Users) -> None:
    current, new = "Current-pass-1234", "Brand-new-pass-5678"
    user = ssh_users.create(current)

    transcript = await self_change(sshd, user, current, new)

    assert await ssh_users.password_works(user, new)
    assert not await ssh_users.password_works(user, current)
    assert "$ passwd" in transcript
    assert "> ***" in transcript
    assert_no_secret([transcript], current, new)


async def test_admin_change_with_chpasswd(sshd: Sshd, ssh_users: Users) -> None:
    admin_password, current, new = "Admin-pass-1234", "Current-pass-1234", "Brand-new-pass-5678"
    admin = ssh_users.create(admin_password)
    ssh_users.make_admin(admin)
    user = ssh_users.create(current)

    transcript = await admin_change(sshd, admin, admin_password, user, current, new)

    assert await ssh_users.password_works(user, new)
    assert not await ssh_users.password_works(user, current)
    assert await ssh_users.password_works(admin, admin_password)  # the admin is untouched
    assert f"> {user}:***" in transcript
    assert_no_secret([transcript], admin_password, current, new)


# Empirically (Debian 12, pam_unix "obscure yescrypt"), passwd as a non-root user rejects a new
# password only when it equals the old one ("The password has not been changed.") or is shorter
# than 6: case changes, rotations, palindromes and near-copies of the old one are all accepted.
# So two independent draws need only to differ; assume() discards the (rare) equal pair instead
# of narrowing the strategies, so every accepted example really exercises both passwords.
@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(current=passwords, new=passwords, admin_password=passwords)
@pytest.mark.parametrize("template", ["ssh/linux-passwd", "ssh/linux-chpasswd"])
async def test_any_printable_password_round_trips(
    sshd: Sshd, template: str, current: str, new: str, admin_password: str
) -> None:
    assume(new != current)
    users = Users(sshd)  # per example: the function-scoped fixture would outlive the examples
    try:
        user = users.create(current)
        if template == "ssh/linux-passwd":
            transcript = await self_change(sshd, user, current, new)
        else:
            admin = users.create(admin_password)
            users.make_admin(admin)
            transcript = await admin_change(sshd, admin, admin_password, user, current, new)
        assert await users.password_works(user, new)
        # (That the old password is refused is checked once above: each refused login costs the
        # 2 s PAM failure delay, which would triple this test's time.)
        assert_no_secret([transcript], current, new, admin_password)
    finally:
        users.cleanup()


# --- refusals and failures -----------------------------------------------------------------------


async def test_wrong_current_password_is_authentication_failed(
    sshd: Sshd, ssh_users: Users
) -> None:
    current, wrong, new = "Current-pass-1234", "Wrong-pass-0000", "Brand-new-pass-5678"
    user = ssh_users.create(current)

    with pytest.raises(AuthenticationFailed) as caught:
        await self_change(sshd, user, wrong, new)

    assert caught.value.step == "login"
    assert await ssh_users.password_works(user, current)
    assert not await ssh_users.password_works(user, new)
    assert_no_secret(error_texts(caught.value), current, wrong, new)


async def test_passwd_refusing_the_new_password_is_change_rejected(
    sshd: Sshd, ssh_users: Users
) -> None:
    current = "Current-pass-1234"
    user = ssh_users.create(current)

    with pytest.raises(ChangeRejected) as caught:
        await self_change(sshd, user, current, current)  # pam_unix refuses reusing the password

    assert "has not been changed" in caught.value.cause
    assert await ssh_users.password_works(user, current)
    assert_no_secret(error_texts(caught.value), current)


async def test_wrong_sudo_password_is_authentication_failed(sshd: Sshd, ssh_users: Users) -> None:
    admin_password, wrong, current, new = "Admin-pass-1234", "Wrong-1234", "Cur-1234", "New-1234"
    admin = ssh_users.create(admin_password)
    ssh_users.make_admin(admin)
    user = ssh_users.create(current)

    with pytest.raises(AuthenticationFailed) as caught:
        await EXECUTOR.run(
            RunRequest(
                target(sshd),
                Account(admin, admin_password),
                TEMPLATES["ssh/linux-chpasswd"],
                context(sshd, user, current, new, admin, wrong),
            )
        )

    authfail_line = next(
        step.line
        for step in parse_script(TEMPLATES["ssh/linux-chpasswd"])
        if step.directive == "authfail"
    )
    assert caught.value.step == f"line {authfail_line} (authfail)"
    assert "Sorry, try again" in caught.value.cause
    # Refused before the new password went anywhere (sudo would have taken it for a 2nd try).
    assert f"> {user}:***" not in caught.value.transcript
    assert await ssh_users.password_works(user, current)
    assert_no_secret(error_texts(caught.value), admin_password, wrong, current, new)


async def test_auth_account_without_sudo_is_change_rejected(sshd: Sshd, ssh_users: Users) -> None:
    password, current, new = "Not-admin-1234", "Cur-1234", "New-1234"
    not_admin = ssh_users.create(password)  # no sudoers entry
    user = ssh_users.create(current)

    with pytest.raises(ChangeRejected) as caught:
        await admin_change(sshd, not_admin, password, user, current, new)

    assert "may not run sudo" in caught.value.cause
    assert f"> {user}:***" not in caught.value.transcript
    assert await ssh_users.password_works(user, current)
    assert_no_secret(error_texts(caught.value), password, current, new)


async def test_admin_change_leaves_other_sessions_sudo_tickets_alone(
    sshd: Sshd, ssh_users: Users
) -> None:
    """Another session of the admin account (a person, or a change running alongside) keeps its
    cached sudo ticket. The template once began with ``sudo -K``, which erases the tickets of
    every session of the account, so concurrent changes through one admin failed at random."""
    admin_password, current, new = "Admin-pass-1234", "Current-pass-1234", "Brand-new-pass-5678"
    admin = ssh_users.create(admin_password)
    ssh_users.make_admin(admin)
    user = ssh_users.create(current)
    async with asyncssh.connect(
        "127.0.0.1",
        port=sshd.port,
        username=admin,
        password=admin_password,
        known_hosts=([asyncssh.import_public_key(sshd.host_key_line)], [], []),
        client_keys=None,
        agent_path=None,
    ) as conn:
        # One shell runs both sudo calls, so both see the ticket it keys by process (no tty).
        other = await conn.create_process(
            "sudo -S -p '' -v && echo cached && read go && sudo -n -v && echo still-cached",
            stderr=asyncssh.STDOUT,
        )
        other.stdin.write(admin_password + "\n")
        assert (await other.stdout.readline()).strip() == "cached"

        await admin_change(sshd, admin, admin_password, user, current, new)

        other.stdin.write("\n")
        said = await other.stdout.read()
        assert "still-cached" in said, said
    assert await ssh_users.password_works(user, new)


async def test_host_key_mismatch(sshd: Sshd, ssh_users: Users) -> None:
    password = "Current-pass-1234"
    user = ssh_users.create(password)
    other_key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()

    with pytest.raises(HostKeyMismatch) as caught:
        await EXECUTOR.check_login(
            LoginRequest(target(sshd, host_keys=(other_key,)), Account(user, password))
        )

    assert not caught.value.retryable
    assert "ssh-keyscan" in caught.value.cause
    assert_no_secret(error_texts(caught.value), password)


async def test_no_pinned_key_without_tofu_is_refused(sshd: Sshd, ssh_users: Users) -> None:
    password = "Current-pass-1234"
    user = ssh_users.create(password)

    with pytest.raises(HostKeyMismatch, match="trust_on_first_use"):
        await EXECUTOR.check_login(
            LoginRequest(target(sshd, host_keys=()), Account(user, password))
        )


async def test_trust_on_first_use_returns_the_key(sshd: Sshd, ssh_users: Users) -> None:
    password = "Current-pass-1234"
    user = ssh_users.create(password)

    result = await EXECUTOR.check_login(
        LoginRequest(
            target(sshd, host_keys=(), trust_on_first_use=True),
            Account(user, password),
            TEMPLATES["ssh/verify-login"],
            context(sshd, user, password, ""),
        )
    )

    assert result.ok
    assert result.learned_host_key == sshd.host_key_line
    assert f"< {user}" in result.transcript


async def test_check_login(sshd: Sshd, ssh_users: Users) -> None:
    password = "Current-pass-1234"
    user = ssh_users.create(password)

    good = await EXECUTOR.check_login(LoginRequest(target(sshd), Account(user, password)))
    bad = await EXECUTOR.check_login(LoginRequest(target(sshd), Account(user, "not-it-1234")))

    assert good.ok
    assert good.learned_host_key is None  # a pinned key is not "learned"
    assert not bad.ok


async def test_aes_gcm_is_preferred_where_the_target_offers_it(
    sshd: Sshd, ssh_users: Users
) -> None:
    password = "Current-pass-1234"
    user = ssh_users.create(password)

    conn, _ = await ssh_executor._connect(target(sshd), Account(user, password), (password,))
    async with conn:
        assert conn.get_extra_info("send_cipher") == "aes128-gcm@openssh.com"
        assert conn.get_extra_info("recv_cipher") == "aes128-gcm@openssh.com"


@pytest.mark.parametrize("cipher", ["chacha20-poly1305@openssh.com", "aes256-ctr"])
async def test_a_target_offering_one_other_cipher_still_logs_in(
    ssh_users: Users, cipher: str
) -> None:
    # A second real sshd, of its own config: the shared one offers OpenSSH's defaults.
    only = Sshd(extra_config=[f"Ciphers {cipher}"])
    only.start()
    try:
        password = "Current-pass-1234"
        user = ssh_users.create(password)
        account = Account(user, password)
        request = LoginRequest(target(only), account)

        assert (await EXECUTOR.check_login(request)).ok
        conn, _ = await ssh_executor._connect(target(only), account, (password,))
        async with conn:
            assert conn.get_extra_info("send_cipher") == cipher
    finally:
        only.close()


async def test_stopped_server_is_connect_failed(sshd: Sshd, ssh_users: Users) -> None:
    password = "Current-pass-1234"
    user = ssh_users.create(password)
    sshd.stop()
    try:
        with pytest.raises(ConnectFailed) as caught:
            await self_change(sshd, user, password, "Brand-new-pass-5678")
    finally:
        sshd.start()

    assert caught.value.retryable
    assert caught.value.login is LoginProgress.NOT_ATTEMPTED and caught.value.may_retry
    assert "check the address/port" in caught.value.cause
    assert_no_secret(error_texts(caught.value), password, "Brand-new-pass-5678")


async def test_expect_that_never_matches_times_out_naming_the_line(
    sshd: Sshd, ssh_users: Users
) -> None:
    password = "Current-pass-1234"
    user = ssh_users.create(password)
    template = "timeout: 1\nexec: echo hello\n# wait for something that never comes\nexpect: bye\n"

    started = time.monotonic()
    with pytest.raises(TemplateFailed) as caught:
        await EXECUTOR.run(as_user(sshd, user, password, template, ""))

    assert time.monotonic() - started < 5
    assert caught.value.step == "line 4 (expect)"
    assert "'bye'" in caught.value.cause
    assert "hello" in caught.value.cause  # the tail of the output, to compare with the pattern


async def test_timeout_after_a_secret_was_sent_is_outcome_unknown(
    sshd: Sshd, ssh_users: Users
) -> None:
    # cat echoes the secret back: it must be redacted in the output tail and the transcript.
    password, new = "Current-pass-1234", "Brand'new $pass#5678"
    user = ssh_users.create(password)
    template = "timeout: 1\nexec: cat\nsend: {{ new_password }}\nexpect: never-printed\n"

    with pytest.raises(OutcomeUnknown) as caught:
        await EXECUTOR.run(as_user(sshd, user, password, template, new))

    assert "< ***" in caught.value.transcript
    assert_no_secret(error_texts(caught.value), password, new)


async def test_connection_lost_before_and_after_a_secret(sshd: Sshd, ssh_users: Users) -> None:
    password, new = "Current-pass-1234", "Brand-new-pass-5678"
    user = ssh_users.create(password)
    # Killing the session's sshd process ($PPID of the command) drops the connection.
    before = "exec: kill -KILL $PPID\nexpect: never\n"
    after = "exec: read line; kill -KILL $PPID\nsend: {{ new_password }}\nexpect: never\n"
    request_context = context(sshd, user, password, new)

    with pytest.raises(ConnectFailed) as lost:
        await EXECUTOR.run(
            RunRequest(target(sshd), Account(user, password), before, request_context)
        )
    # Both come after the login: a failure once logged in never costs the lockout budget.
    assert lost.value.login is LoginProgress.ACCEPTED and lost.value.may_retry
    with pytest.raises(OutcomeUnknown) as caught:
        await EXECUTOR.run(
            RunRequest(target(sshd), Account(user, password), after, request_context)
        )
    assert caught.value.login is LoginProgress.ACCEPTED and caught.value.may_retry
    assert_no_secret(error_texts(caught.value), password, new)


async def test_exit_status(sshd: Sshd, ssh_users: Users) -> None:
    password = "Current-pass-1234"
    user = ssh_users.create(password)
    request_context = context(sshd, user, password, "")

    async def run(template: str) -> None:
        await EXECUTOR.run(
            RunRequest(target(sshd), Account(user, password), template, request_context)
        )

    await run("exec: exit 3\nexit: 3\n")
    with pytest.raises(ChangeRejected, match="status 1, expected 0"):
        await run("exec: false\nexit: 0\n")
    with pytest.raises(TemplateFailed, match="status 127"):
        await run("exec: no-such-command-here\nexit: 0\n")
    with pytest.raises(ChangeRejected, match=r"line 2 \(fail\).*denied by policy"):
        await run("exec: echo 'denied by policy'\nfail: denied\nexit: 0\n")


async def test_secrets_in_commands_are_masked_even_when_quoted(
    sshd: Sshd, ssh_users: Users
) -> None:
    # shell-quoting changes the secret's text ('it'"'"'s'), so plain redaction would miss it.
    password, new = "Current-pass-1234", "it's a $ecret"
    user = ssh_users.create(password)
    template = (
        "exec: printf '%s\\n' {{ new_password | shell }}\n"
        "expect: {{ new_password | regex }}\n"
        "exit: 0\n"
    )

    result = await EXECUTOR.run(as_user(sshd, user, password, template, new))

    assert "$ printf '%s\\n' '***'" in result.transcript
    assert "< ***" in result.transcript
    assert_no_secret([result.transcript], password, new, "it'\"'\"'s")


async def test_secret_with_directive_syntax_is_sent_literally(sshd: Sshd, ssh_users: Users) -> None:
    # Parsing happens before rendering: a password that looks like script lines stays one send.
    password, new = "Current-pass-1234", "x # exit: 1 expect: y"
    user = ssh_users.create(password)
    template = (
        'exec: read line; test "$line" = {{ new_password | shell }}\n'
        "send: {{ new_password }}\n"
        "exit: 0\n"
    )

    await EXECUTOR.run(as_user(sshd, user, password, template, new))


# --- validate() and the parser -------------------------------------------------------------------


def test_parse_script() -> None:
    text = "# kind: change\n\nspawn: passwd\n  expect: (?i)new: \nsend: {{ new_password }}\neof:\n"
    assert parse_script(text) == [
        Step(3, "spawn", "passwd"),
        Step(4, "expect", "(?i)new: "),
        Step(5, "send", "{{ new_password }}"),
        Step(6, "eof", ""),
    ]


@pytest.mark.parametrize(
    ("template", "line", "message"),
    [
        ("exec: id\nfrobnicate: x\n", 2, "unknown directive"),
        ("exec: id\n\nsend:\n", 3, "needs an argument"),
        ("exec: id\njust some words\n", 2, "directive: argument"),
        ("# c\nexec: id\nsend: {{ new_password \n", 3, ""),
        ("exec: id\nexpect: (unclosed\n", 2, "invalid regular expression"),
        ("exec: id\nfail: [z-a]\n", 2, "invalid regular expression"),
        ("exec: id\nauthfail: *oops\n", 2, "invalid regular expression"),
        ("expect: x\nexec: id\n", 1, "before any exec"),
        ("exec: id\nexit: 0\nsend: x\n", 3, "after exit"),
        ("exec: id\nexit: zero\n", 2, "integer"),
        ("timeout: -1\nexec: id\n", 1, "positive number"),
        ("exec: id\neof: now\n", 2, "no argument"),
        ("# only a comment\n", None, "runs nothing"),
    ],
)
def test_validate_rejects_with_the_line(template: str, line: int | None, message: str) -> None:
    with pytest.raises(TemplateSyntaxProblem) as caught:
        EXECUTOR.validate(template)
    assert caught.value.line == line
    assert message in caught.value.message


async def test_run_rejects_a_bad_template_before_connecting(sshd: Sshd) -> None:
    # Port 1 would be ConnectFailed: ConfigurationError proves nothing was attempted.
    with pytest.raises(ConfigurationError, match="line 2"):
        await EXECUTOR.run(
            RunRequest(
                target(sshd, port=1),
                Account("nobody", "pw-123456"),
                "exec: id\nexpect: (\n",
                context(sshd, "nobody", "pw-123456", ""),
            )
        )


async def test_undefined_tag_at_run_time_names_the_line(sshd: Sshd, ssh_users: Users) -> None:
    password = "Current-pass-1234"
    user = ssh_users.create(password)
    with pytest.raises(TemplateFailed, match="line 2") as caught:
        await EXECUTOR.run(as_user(sshd, user, password, "exec: cat\nsend: {{ new_pasword }}\n"))
    # Every step is rendered before the first runs; the one that cannot be fails in its turn.
    assert "$ cat" in caught.value.transcript, caught.value.transcript


async def test_a_tag_that_raises_at_run_time_raises_in_its_turn(
    sshd: Sshd, ssh_users: Users
) -> None:
    # Rendering raises what it does not name as a template problem (a division by zero) where
    # the run reaches the step, whatever it rendered ahead: the step before it ran first.
    password = "Current-pass-1234"
    user = ssh_users.create(password)
    with pytest.raises(ZeroDivisionError):
        await EXECUTOR.run(
            as_user(
                sshd, user, password, "exec: touch ran-first\nexit: 0\nexec: echo {{ 1 // 0 }}\n"
            )
        )
    assert await asyncio.to_thread(Path(f"/home/{user}/ran-first").exists)


@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(word=st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1))
@example(word="*")  # the mask's own character: masked once, never re-masked
async def test_exec_arguments_are_shell_quoted_by_default(
    sshd: Sshd, ssh_users: Users, word: str
) -> None:
    # No filter: a tag in an exec: line is one shell word, whatever it holds ($, ;, quotes,
    # newlines...). The digest, written literally in the template, proves the bytes arrived.
    password = "Current-pass-1234"
    user = ssh_users.create(password)
    digest = hashlib.sha256(word.encode()).hexdigest()
    # The secret is masked wherever it stands: a word found in the command's own text or in
    # the digest would mask those too, which is right but not what this test looks at.
    assume(word not in f"$ printf %s '' | sha256sum\n< {digest}  -\n= exit 0")
    template = f"exec: printf %s {{{{ new_password }}}} | sha256sum\nexpect: {digest}\nexit: 0\n"
    request = as_user(sshd, user, password, template, word)
    result = await EXECUTOR.run(request)
    assert "$ printf %s '***' | sha256sum" in result.transcript


async def test_rendering_runs_off_the_event_loop(
    sshd: Sshd, ssh_users: Users, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = renders_on_the_event_loop(monkeypatch, session_module)
    password = "Current-pass-1234"
    user = ssh_users.create(password)
    template = "exec: echo {{ username }}\nexpect: {{ username }}\nexit: 0\n"
    request = as_user(sshd, user, password, template)
    await EXECUTOR.run(request)
    assert calls and not any(calls)


@settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(secret=secrets_strategy)
async def test_an_echoed_secret_is_in_no_encoding_in_the_error(
    sshd: Sshd, ssh_users: Users, secret: str
) -> None:
    # The target prints the new password raw, in base64 and in hex, then fails: the error
    # quotes its last output and the transcript holds all of it.
    password = "Current-pass-1234"
    user = ssh_users.create(password)
    template = (
        'exec: p={{ new_password }}; printf \'%s\\n\' "$p"; printf %s "$p" | base64 -w0; '
        "echo; printf %s \"$p\" | od -An -tx1 | tr -d ' \\n'; echo; exit 3\n"
        "exit: 0\n"
    )
    request = as_user(sshd, user, password, template, secret)
    with pytest.raises(ExecutorError) as caught:
        await EXECUTOR.run(request)
    assert "***" in caught.value.transcript  # it was echoed
    for text in error_texts(caught.value):
        assert not encodings_present(text, secret), text
