"""Recovery by hand: secret versions, adopt, set-in-vault, a change's next password.

Real sshd, real Temporal dev server. Each path changes the credential only once the target has
been seen to accept the secret; every refused request answers a problem and changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, col, func, select
from temporalio.client import WorkflowFailureError

from store.models import AuditEvent, Operation
from tests.e2e.conftest import Stack
from tests.e2e.helpers import (
    credential,
    current_secret,
    policy,
    ssh_device,
    ssh_template,
    wait_for_step,
)
from tests.e2e.leaks import (
    assert_not_in_histories,
    assert_not_in_logs,
    assert_not_in_store,
    forms,
)
from tests.servers.sshd import Sshd, Users
from workflows.contracts import WORKFLOW_NAME, OperationInput, OperationResult

OLD = "Rec0ver-old-pass"
BEHIND = "Set-by-hand-9!x"  # set on the target behind Keyturn's back
NEXT = "Chosen-next-Passw0rd!"  # fits the test policy (20 characters, every class)


async def _requested(stack: Stack, credential_id: str, body: dict[str, Any]) -> dict[str, Any]:
    return await stack.post(f"/v1/credentials/{credential_id}/operations", body, expect=202)


async def _finished(stack: Stack, accepted: dict[str, Any]) -> dict[str, Any]:
    handle = stack.client.get_workflow_handle(accepted["workflow_id"])
    await asyncio.wait_for(handle.result(), 60)
    return await stack.get(f"/v1/operations/{accepted['operation_id']}")


async def _run(stack: Stack, credential_id: str, body: dict[str, Any]) -> dict[str, Any]:
    return await _finished(stack, await _requested(stack, credential_id, body))


async def _versions(stack: Stack, credential_id: str) -> list[dict[str, Any]]:
    response = await stack.api.get(f"/v1/credentials/{credential_id}/versions")
    assert response.status_code == 200, response.text
    result: list[dict[str, Any]] = response.json()["items"]
    return result


def _states(versions: list[dict[str, Any]]) -> dict[str, str]:
    return {v["id"]: v["state"] for v in versions}


def _store_counts(stack: Stack, *credential_ids: str) -> tuple[int, int]:
    """Operations and audit events of these credentials. Only theirs: the stack is shared, and
    operations of earlier tests may still be writing their last events."""
    with Session(stack.engine) as session:
        operations = session.exec(
            select(func.count())
            .select_from(Operation)
            .where(col(Operation.credential_id).in_(credential_ids))
        ).one()
        # A refused call is itself an audit event (api.refused); anything else would be a change.
        events = session.exec(
            select(func.count())
            .select_from(AuditEvent)
            .where(AuditEvent.event != "api.refused")
            .where(col(AuditEvent.credential_id).in_(credential_ids))
        ).one()
        return operations, events


async def _out_of_sync_credential(
    stack: Stack, sshd: Sshd, ssh_users: Users
) -> tuple[str, dict[str, Any], list[dict[str, Any]]]:
    """A credential changed once by Keyturn (OLD previous, a generated one current), whose
    password was then set behind Keyturn's back; a verify has flagged it out of sync. No
    reconcile account: only an administrator can bring it back."""
    user = ssh_users.create(OLD)
    device = await ssh_device(stack, sshd)
    pol = await policy(stack)
    cred = await credential(stack, device["id"], user, OLD, policy_id=pol["id"])
    assert (await stack.run_operation(cred["id"]))["status"] == "succeeded"
    ssh_users.set_password(user, BEHIND)
    verify = await stack.run_operation(cred["id"], "verify")
    assert verify["error_type"] == "OutOfSync"
    assert (await stack.get(f"/v1/credentials/{cred['id']}"))["sync_state"] == "out_of_sync"
    return user, cred, await _versions(stack, cred["id"])


async def test_versions_are_listed_without_secrets_and_read_one_by_one_with_a_reason(
    stack: Stack, sshd: Sshd, ssh_users: Users
) -> None:
    user = ssh_users.create(OLD)
    device = await ssh_device(stack, sshd)
    cred = await credential(stack, device["id"], user, OLD, policy_id=(await policy(stack))["id"])
    change = await stack.run_operation(cred["id"])
    new = current_secret(stack, cred["id"])

    versions = await _versions(stack, cred["id"])

    assert [v["state"] for v in versions] == ["previous", "current"]
    first, second = versions
    assert first["operation_id"] is None and second["operation_id"] == change["id"]
    # The change's verify logged in with the new secret; nothing logged in with OLD yet.
    assert second["last_login_ok_operation_id"] == change["id"]
    assert second["last_login_ok_at"] is not None and first["last_login_ok_at"] is None
    listed = str(versions).encode()
    assert not any(form in listed for s in (OLD, new) for form in forms(s))

    response = await stack.api.get(
        f"/v1/credentials/{cred['id']}/versions/{first['id']}/secret",
        params={"reason": "ticket 42: restore the old password"},
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"version_id": first["id"], "state": "previous", "secret": OLD}
    assert response.headers["cache-control"] == "no-store"
    with Session(stack.engine) as session:
        event = session.exec(
            select(AuditEvent)
            .where(AuditEvent.credential_id == cred["id"], AuditEvent.event == "secret.read")
            .order_by(col(AuditEvent.id).desc())
        ).first()
    assert event is not None
    assert event.detail["reason"] == "ticket 42: restore the old password"
    assert event.detail["version_id"] == first["id"]
    assert OLD not in str(event.detail)


@pytest.mark.parametrize(
    ("path", "params", "status", "says"),
    [
        ("versions/{version}/secret", {}, 422, "query.reason: Field required"),
        ("versions/{version}/secret", {"reason": "   "}, 422, "reason: say why"),
        ("versions/no-such-version/secret", {"reason": "x"}, 404, "has no secret version"),
        ("versions/{other}/secret", {"reason": "x"}, 404, "has no secret version"),
    ],
)
async def test_a_refused_secret_read_answers_a_problem_and_records_nothing(
    stack: Stack,
    sshd: Sshd,
    ssh_users: Users,
    path: str,
    params: dict[str, str],
    status: int,
    says: str,
) -> None:
    device = await ssh_device(stack, sshd)
    cred = await credential(stack, device["id"], ssh_users.create(OLD), OLD)
    other = await credential(stack, device["id"], ssh_users.create(OLD), "other-secret")
    before = _store_counts(stack, cred["id"], other["id"])

    response = await stack.api.get(
        f"/v1/credentials/{cred['id']}/"
        + path.format(version=cred["current_version_id"], other=other["current_version_id"]),
        params=params,
    )

    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert says in response.json()["detail"]
    assert OLD not in response.text and "other-secret" not in response.text
    assert _store_counts(stack, cred["id"], other["id"]) == before


async def test_unknown_credentials_have_no_versions(stack: Stack) -> None:
    for path in ("versions", "versions/v/secret?reason=x"):
        response = await stack.api.get(f"/v1/credentials/no-such-credential/{path}")
        assert response.status_code == 404, response.text
        assert response.headers["content-type"] == "application/problem+json"


async def test_set_in_vault_brings_an_out_of_sync_credential_back_and_adopt_of_a_refused_version_changes_nothing(  # noqa: E501
    stack: Stack, sshd: Sshd, ssh_users: Users, keyturn_logs: pytest.LogCaptureFixture
) -> None:
    user, cred, versions = await _out_of_sync_credential(stack, sshd, ssh_users)
    old_version = versions[0]["id"]
    assert versions[0]["state"] == "previous"

    adopt = await _run(stack, cred["id"], {"kind": "adopt", "version_id": old_version})

    assert adopt["status"] == "failed" and adopt["error_type"] == "SecretRefused"
    assert adopt["resolution"] == "the chosen secret is refused: nothing changed"
    assert _states(await _versions(stack, cred["id"])) == _states(versions)
    assert (await stack.get(f"/v1/credentials/{cred['id']}"))["sync_state"] == "out_of_sync"
    # Only the chosen secret was tried: one login, not a second with the current secret.
    assert [a["transcript"].splitlines()[0] for a in adopt["attempts"]] == ["[pending] refused"]

    accepted = await _requested(stack, cred["id"], {"kind": "set-in-vault", "password": BEHIND})
    done = await _finished(stack, accepted)

    assert done["status"] == "succeeded", done
    assert current_secret(stack, cred["id"]) == BEHIND
    got = await stack.get(f"/v1/credentials/{cred['id']}")
    assert got["sync_state"] == "in_sync"
    after = await _versions(stack, cred["id"])
    assert [v["state"] for v in after] == ["previous", "previous", "current"]
    assert after[-1]["operation_id"] == done["id"] == after[-1]["last_login_ok_operation_id"]
    assert await ssh_users.password_works(user, BEHIND)

    # The value an administrator supplied went nowhere but the vault, encrypted.
    await assert_not_in_histories(stack, [accepted["workflow_id"]], BEHIND)
    assert_not_in_logs(keyturn_logs, BEHIND)
    assert_not_in_store(stack, BEHIND, cred["id"])
    assert BEHIND not in str(done)


async def test_adopt_of_a_version_that_logs_in_makes_it_current(
    stack: Stack, sshd: Sshd, ssh_users: Users
) -> None:
    user, cred, versions = await _out_of_sync_credential(stack, sshd, ssh_users)
    old_version, generated = versions[0]["id"], versions[1]["id"]
    ssh_users.set_password(user, OLD)  # the target was put back to the old password by hand

    adopt = await _run(stack, cred["id"], {"kind": "adopt", "version_id": old_version})

    assert adopt["status"] == "succeeded", adopt
    assert _states(await _versions(stack, cred["id"])) == {
        old_version: "current",
        generated: "previous",
    }
    assert current_secret(stack, cred["id"]) == OLD
    assert (await stack.get(f"/v1/credentials/{cred['id']}"))["sync_state"] == "in_sync"


async def test_a_next_password_that_fits_the_policy_is_set_and_logs_in(
    stack: Stack, sshd: Sshd, ssh_users: Users, keyturn_logs: pytest.LogCaptureFixture
) -> None:
    user = ssh_users.create(OLD)
    device = await ssh_device(stack, sshd)
    pol = await policy(stack, length=20)
    cred = await credential(stack, device["id"], user, OLD, policy_id=pol["id"])

    accepted = await _requested(stack, cred["id"], {"kind": "change", "next_password": NEXT})
    done = await _finished(stack, accepted)

    assert done["status"] == "succeeded", done
    assert current_secret(stack, cred["id"]) == NEXT
    assert await ssh_users.password_works(user, NEXT)
    assert not await ssh_users.password_works(user, OLD)
    await assert_not_in_histories(stack, [accepted["workflow_id"]], NEXT)
    assert_not_in_logs(keyturn_logs, NEXT)
    assert_not_in_store(stack, NEXT, cred["id"])


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ({"kind": "change", "next_password": "Sh0rt!"}, "next_password", "is shorter than"),
        (
            {"kind": "change", "next_password": "no-digits-or-CAPITALS-here"},
            "next_password",
            "has no",
        ),
        ({"kind": "change", "next_password": "Tab\there-Passw0rd!!!!"}, "next_password", "control"),
        ({"kind": "verify", "next_password": NEXT}, "next_password", "only change operations"),
        ({"kind": "change", "version_id": "v"}, "version_id", "only adopt operations"),
        ({"kind": "adopt"}, "version_id", "adopt needs the id"),
        ({"kind": "adopt", "version_id": "no-such-version"}, "version_id", "has no secret version"),
        ({"kind": "adopt", "version_id": "{other}"}, "version_id", "has no secret version"),
        ({"kind": "adopt", "version_id": "{own}", "password": NEXT}, "password", "only set-in"),
        ({"kind": "set-in-vault"}, "password", "needs the password"),
        ({"kind": "set-in-vault", "password": ""}, "password", "must be 1 to 1024"),
    ],
)
async def test_a_refused_recovery_request_answers_a_problem_and_changes_nothing(
    stack: Stack,
    sshd: Sshd,
    ssh_users: Users,
    body: dict[str, str],
    field: str,
    says: str,
) -> None:
    device = await ssh_device(stack, sshd)
    pol = await policy(stack, length=20)
    user = ssh_users.create(OLD)
    cred = await credential(stack, device["id"], user, OLD, policy_id=pol["id"])
    other = await credential(stack, device["id"], ssh_users.create(OLD), OLD)
    ids = {"own": cred["current_version_id"], "other": other["current_version_id"]}
    body = {k: v.format(**ids) for k, v in body.items()}
    before = (_store_counts(stack, cred["id"], other["id"]), await _versions(stack, cred["id"]))

    response = await stack.api.post(f"/v1/credentials/{cred['id']}/operations", json=body)

    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["errors"][0]["field"] == field and says in problem["errors"][0]["message"]
    for secret in (body.get("password"), body.get("next_password")):
        if secret:
            assert secret not in response.text
    assert (
        _store_counts(stack, cred["id"], other["id"]),
        await _versions(stack, cred["id"]),
    ) == before
    assert [
        w async for w in stack.client.list_workflows(f"KeyturnCredentialId = '{cred['id']}'")
    ] == []
    assert await ssh_users.password_works(user, OLD)


async def test_recovery_operations_queue_with_others_on_one_credential_and_device(
    stack: Stack, sshd: Sshd, ssh_users: Users, keyturn_logs: pytest.LogCaptureFixture
) -> None:
    """Every kind at once on one credential, and a change of another credential on the same
    device: they run one at a time per credential, in request order, each seeing the target
    as the one before left it."""
    user, neighbour = ssh_users.create(OLD), ssh_users.create(OLD)
    device = await ssh_device(stack, sshd)
    pol = await policy(stack, length=20)
    cred = await credential(stack, device["id"], user, OLD, policy_id=pol["id"])
    other = await credential(stack, device["id"], neighbour, OLD, policy_id=pol["id"])
    old_version = cred["current_version_id"]
    bodies: list[dict[str, Any]] = [
        {"kind": "change", "next_password": NEXT},  # target: OLD → NEXT
        {"kind": "verify"},
        {"kind": "adopt", "version_id": old_version},  # OLD no longer logs in: nothing changes
        {"kind": "set-in-vault", "password": NEXT},  # what the target has: a new current version
        {"kind": "change"},
    ]
    neighbour_change = asyncio.create_task(_requested(stack, other["id"], {"kind": "change"}))
    accepted = [await _requested(stack, cred["id"], body) for body in bodies]

    done = [await _finished(stack, a) for a in accepted]
    done_neighbour = await _finished(stack, await neighbour_change)

    assert [d["status"] for d in done] == [
        "succeeded",
        "succeeded",
        "failed",
        "succeeded",
        "succeeded",
    ], done
    assert done[2]["error_type"] == "SecretRefused"
    for before, after in zip(accepted, accepted[1:], strict=False):
        assert after["status"] == "queued"
        op = await stack.get(f"/v1/operations/{after['operation_id']}")
        assert (
            op["created_at"]
            >= (await stack.get(f"/v1/operations/{before['operation_id']}"))["created_at"]
        )
    starts = [d["attempts"][0]["started_at"] for d in done]
    ends = [d["finished_at"] for d in done]
    assert all(e <= s for e, s in zip(ends, starts[1:], strict=False)), (starts, ends)
    assert done_neighbour["status"] == "succeeded"
    final = current_secret(stack, cred["id"])
    assert final != NEXT and await ssh_users.password_works(user, final)
    assert await ssh_users.password_works(neighbour, current_secret(stack, other["id"]))
    workflow_ids = [a["workflow_id"] for a in accepted]
    assert len(set(workflow_ids)) == len(workflow_ids)
    await assert_not_in_histories(stack, workflow_ids, NEXT)
    assert_not_in_logs(keyturn_logs, NEXT)


async def test_the_openapi_lists_every_answer_of_the_recovery_routes(stack: Stack) -> None:
    paths = (await stack.get("/openapi.json"))["paths"]
    answers = {
        # FastAPI documents 422 for every route with parameters.
        ("/v1/credentials/{credential_id}/versions", "get"): {"200", "401", "404", "422"},
        ("/v1/credentials/{credential_id}/versions/{version_id}/secret", "get"): {
            "200", "401", "404", "409", "422",
        },
        # 400: a body that is not JSON (starter/problems.py), on every route with a body.
        ("/v1/credentials/{credential_id}/operations", "post"): {
            "200", "202", "400", "401", "404", "422", "503",
        },
    }  # fmt: skip
    for (path, method), codes in answers.items():
        # 413: a body over 1 MiB, on any /v1 route (starter/limits.py); 403: a role the
        # route does not admit (starter/authz.py).
        assert set(paths[path][method]["responses"]) == codes | {"403", "413"}, path
    operation_in = (await stack.get("/openapi.json"))["components"]["schemas"]["OperationIn"]
    assert {"version_id", "password", "next_password", "private_key"} <= set(
        operation_in["properties"]
    )


async def test_the_cli_takes_a_secret_from_stdin_never_from_its_arguments(
    stack: Stack, sshd: Sshd, ssh_users: Users
) -> None:
    user, cred, _ = await _out_of_sync_credential(stack, sshd, ssh_users)
    settings = stack.settings
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("keyturn")),
        *("request", cred["id"], "--kind", "set-in-vault", "--secret-stdin"),
        env={
            **os.environ,
            "KEYTURN_TEMPORAL_ADDRESS": stack.client.service_client.config.target_host,
            "KEYTURN_DATABASE_URL": settings.resolved_database_url,
            "KEYTURN_DATA_DIR": str(settings.data_dir),
            "KEYTURN_MASTER_KEY": settings.master_key or "",
            "KEYTURN_TASK_QUEUE": settings.task_queue,
        },
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate(f"{BEHIND}\n".encode())
    assert process.returncode == 0, err
    printed = json.loads(out)
    assert printed["joined"] is False and BEHIND not in (out + err).decode()

    done = await _finished(stack, printed)

    assert done["status"] == "succeeded" and done["kind"] == "set-in-vault"
    assert current_secret(stack, cred["id"]) == BEHIND
    assert await ssh_users.password_works(user, BEHIND)


async def test_a_set_in_vault_started_with_the_temporal_client_alone_fails_clearly(
    stack: Stack, sshd: Sshd, ssh_users: Users
) -> None:
    """Only the request path can store a supplied secret: a workflow started without one is
    recorded as failed, having sent nothing, and the credential is as it was."""
    user = ssh_users.create(OLD)
    device = await ssh_device(stack, sshd)
    cred = await credential(stack, device["id"], user, OLD)
    versions = await _versions(stack, cred["id"])

    result = await stack.client.execute_workflow(
        WORKFLOW_NAME,
        OperationInput(credential_id=cred["id"], kind="set-in-vault"),
        id=f"client-set-in-vault-{cred['id']}",
        task_queue=stack.settings.task_queue,
        result_type=OperationResult,
    )

    assert result.status == "failed" and result.error_type == "ConfigurationError"
    assert result.error is not None and "set-in-vault needs the secret" in result.error
    op = await stack.get(f"/v1/operations/{result.operation_id}")
    assert op["status"] == "failed" and op["attempts"] == []
    assert await _versions(stack, cred["id"]) == versions
    assert current_secret(stack, cred["id"]) == OLD


HELD_AT_PROMPT = """# kind: change
spawn: passwd
expect: (?i)current password:
send: {{ current_password }}
expect: (?i)new password:
send: {{ new_password }}
expect: keyturn-never-appears
"""


async def test_a_set_in_vault_canceled_while_queued_sends_nothing_and_fails_its_secret(
    stack: Stack, sshd: Sshd, ssh_users: Users
) -> None:
    user = ssh_users.create(OLD)
    device = await ssh_device(stack, sshd)
    pol = await policy(stack, read_timeout_seconds=120)
    held = await ssh_template(stack, HELD_AT_PROMPT)
    cred = await credential(
        stack, device["id"], user, OLD, policy_id=pol["id"], change_template=held
    )
    change = await _requested(stack, cred["id"], {"kind": "change"})
    await wait_for_step(stack, change["workflow_id"], "change")
    queued = await _requested(stack, cred["id"], {"kind": "set-in-vault", "password": BEHIND})
    assert queued["status"] == "queued"

    response = await stack.api.post(f"/v1/operations/{queued['operation_id']}/cancel")
    assert response.status_code == 202, response.text
    with contextlib.suppress(WorkflowFailureError):
        await asyncio.wait_for(stack.client.get_workflow_handle(queued["workflow_id"]).result(), 60)
    canceled = await stack.get(f"/v1/operations/{queued['operation_id']}")

    assert canceled["status"] == "canceled" and canceled["attempts"] == []
    supplied = [
        v for v in await _versions(stack, cred["id"]) if v["operation_id"] == queued["operation_id"]
    ]
    assert [v["state"] for v in supplied] == ["failed"]
    await stack.api.post(f"/v1/operations/{change['operation_id']}/cancel")
    with contextlib.suppress(WorkflowFailureError):
        await asyncio.wait_for(stack.client.get_workflow_handle(change["workflow_id"]).result(), 60)
    assert current_secret(stack, cred["id"]) == OLD
    assert await ssh_users.password_works(user, OLD)
