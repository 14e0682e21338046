"""The task manager, end to end: HTTP API → a run workflow with a child per credential →
worker → real sshd, PostgreSQL and slapd; on demand and on a Temporal Schedule."""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any

import ldap3
import psycopg
import pytest
from psycopg import sql
from sqlmodel import Session, col, select
from temporalio import activity
from temporalio.client import ScheduleActionStartWorkflow, WorkflowFailureError
from temporalio.service import RPCError, RPCStatusCode

import worker as worker_module
from activities import task_steps
from activities.gate import GateActivities
from activities.task_steps import TaskStoreActivities
from requesting.tasks import request_task_run
from store import jobs
from store.models import (
    Attempt,
    AuditEvent,
    Credential,
    Operation,
    Task,
    TaskRun,
    new_id,
)
from tests.e2e.conftest import Stack
from tests.e2e.helpers import (
    cancel_requested,
    credential,
    current_secret,
    policy,
    ssh_device,
    ssh_template,
    workers_on,
)
from tests.e2e.leaks import assert_not_in_histories
from tests.servers.postgresql import PostgresCluster, Roles, roles_on
from tests.servers.slapd import ADMIN_DN, ADMIN_PASSWORD, SUFFIX, Slapd, running_slapd
from tests.servers.slapd import Users as LdapUsers
from tests.servers.slapd import users_on as ldap_users_on
from tests.servers.sshd import Sshd, Users
from triggers import task_schedules
from workflows.contracts import (
    TASK_RUN_WORKFLOW,
    TASK_TARGET_WORKFLOW,
    Admission,
    RegisterInput,
    TaskRunPlan,
    TaskRunStart,
    TaskTargetInput,
    task_schedule_id,
    task_target_workflow_id,
)

PASSWORD = "Task-pass w0rd;$'\"x"
# Prints its parameters and the account's password (which must come back masked), then who
# it runs as. Every tag is shell-quoted where it lands: the word's ';' and spaces stay text.
ECHO_TASK = (
    "# kind: task\n"
    "# param: word string\n"
    "# param: mode choice(fast,slow) fast\n"
    "# param: count int 2\n"
    "exec: printf 'word=%s mode=%s count=%s secret=%s\\n' {{ params.word }} {{ params.mode }}"
    " {{ params.count }} {{ current_password }}; id -un\n"
)
SLOW_TASK = """# kind: task
# param: seconds choice(1,2,30) 1
exec: sleep {{ params.seconds }}; echo slept
"""


@pytest.fixture(scope="module")
def slapd() -> Iterator[Slapd]:
    with running_slapd() as server:
        yield server


@pytest.fixture
def ldap_users(slapd: Slapd) -> Iterator[LdapUsers]:
    with ldap_users_on(slapd) as users:
        yield users


@pytest.fixture
def pg_roles(pg_cluster: PostgresCluster) -> Iterator[Roles]:
    with roles_on(pg_cluster) as roles:
        yield roles


async def _task(
    stack: Stack, template: str, credential_ids: list[str], **extra: Any
) -> dict[str, Any]:
    body = {
        "name": f"task-{secrets.token_hex(4)}",
        "template": template,
        "credential_ids": credential_ids,
        **extra,
    }
    return await stack.post("/v1/tasks", body)


async def _run(stack: Stack, task_id: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """Run the task through the API and wait for its workflow; the run as the API shows it."""
    accepted = await stack.post(f"/v1/tasks/{task_id}/runs", {"parameters": parameters}, 202)
    await stack.client.get_workflow_handle(accepted["workflow_id"]).result()
    return await stack.get(f"/v1/tasks/{task_id}/runs/{accepted['run_id']}")


async def _ssh_credentials(stack: Stack, sshd: Sshd, ssh_users: Users, count: int) -> list[str]:
    """``count`` accounts, each on a device of its own (all pointing at the one sshd)."""
    pol = await policy(stack)
    made = []
    for _ in range(count):
        device = await ssh_device(stack, sshd)
        user = ssh_users.create(PASSWORD)
        made.append(
            (await credential(stack, device["id"], user, PASSWORD, policy_id=pol["id"]))["id"]
        )
    return made


async def test_a_task_with_parameters_runs_on_two_devices_through_sshd(
    stack: Stack, sshd: Sshd, ssh_users: Users
) -> None:
    creds = await _ssh_credentials(stack, sshd, ssh_users, 2)
    template = await ssh_template(stack, ECHO_TASK, kind="task")
    task = await _task(stack, template, creds, parameters={"count": 7})
    assert task["schedule"] is None and task["schedule_id"] is None

    run = await _run(stack, task["id"], {"word": "a b; touch /tmp/x", "mode": "slow"})

    assert run["status"] == "succeeded", run
    assert (run["trigger"], run["requested_by"]) == ("manual", "admin")
    assert run["parameters"] == {"word": "a b; touch /tmp/x", "mode": "slow", "count": 7}
    assert sorted(r["credential_id"] for r in run["results"]) == sorted(creds)
    for result in run["results"]:
        user = (await stack.get(f"/v1/credentials/{result['credential_id']}"))["username"]
        assert (result["status"], result["exit_status"]) == ("succeeded", 0), result
        assert result["output"] == f"word=a b; touch /tmp/x mode=slow count=7 secret=***\n{user}\n"
        # Each target is an operation of kind task on its credential, with its attempt.
        op = await stack.get(f"/v1/operations/{result['operation_id']}")
        assert (op["kind"], op["trigger"], op["status"]) == ("task", "manual", "succeeded")
        assert [(a["step"], a["outcome"]) for a in op["attempts"]] == [("task", "succeeded")]
        assert PASSWORD not in str(op)
    assert PASSWORD not in str(run)
    # The run's own result names each target's status, not its output (the store has that):
    # hundreds of targets' outputs would not fit in one payload.
    ended = await stack.client.get_workflow_handle(run["workflow_id"]).result()
    assert sorted((r["status"], r["output"], r["output_truncated"]) for r in ended["results"]) == [
        ("succeeded", "", True),
        ("succeeded", "", True),
    ]
    workflows = [run["workflow_id"]] + [task_target_workflow_id(run["id"], c) for c in creds]
    await assert_not_in_histories(stack, workflows, PASSWORD)
    with Session(stack.engine) as db:
        events = [
            e.event
            for e in db.exec(select(AuditEvent).order_by(col(AuditEvent.id)))
            if e.detail.get("run_id") == run["id"]
        ]
    assert events[0] == "task.run_requested" and events[-1] == "task.run_succeeded"
    assert "task.run_started" in events
    listed = await stack.get(f"/v1/tasks/{task['id']}/runs")
    assert [r["id"] for r in listed["items"]] == [run["id"]]


async def test_a_failing_command_fails_its_target_with_its_exit_status(
    stack: Stack, sshd: Sshd, ssh_users: Users
) -> None:
    (cred,) = await _ssh_credentials(stack, sshd, ssh_users, 1)
    failing = await ssh_template(
        stack, "# kind: task\n# param: code int\nexec: echo no; exit {{ params.code }}\n", "task"
    )
    task = await _task(stack, failing, [cred])

    run = await _run(stack, task["id"], {"code": 3})

    assert run["status"] == "failed"
    (result,) = run["results"]
    assert (result["status"], result["exit_status"], result["output"]) == ("failed", 3, "no\n")


async def test_bad_parameters_are_refused_before_anything_runs(
    stack: Stack, sshd: Sshd, ssh_users: Users
) -> None:
    (cred,) = await _ssh_credentials(stack, sshd, ssh_users, 1)
    template = await ssh_template(stack, ECHO_TASK, kind="task")
    task = await _task(stack, template, [cred])
    queue = stack.settings.task_queue
    visible = f"WorkflowType = '{TASK_RUN_WORKFLOW}' AND TaskQueue = '{queue}'"
    before = (await stack.client.count_workflows(visible)).count

    for parameters, field in [
        ({"word": "w", "colour": "red"}, "parameters.colour"),  # unknown
        ({"word": 5}, "parameters.word"),  # a number for a string
        ({"word": "w", "count": "2"}, "parameters.count"),  # a string for an int
        ({"word": "w", "count": True}, "parameters.count"),  # a bool for an int
        ({"word": "w", "mode": "medium"}, "parameters.mode"),  # not one of the choices
        ({}, "parameters.word"),  # a required one missing
    ]:
        refused = await stack.api.post(
            f"/v1/tasks/{task['id']}/runs", json={"parameters": parameters}
        )
        assert refused.status_code == 422, refused.text
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["errors"][0]["field"] == field, refused.json()
    # A task created with a bad value, or scheduled without a required one, is refused too.
    names = []
    extras: list[tuple[dict[str, Any], str]] = [
        ({"parameters": {"mode": "medium"}}, "parameters.mode"),
        ({"schedule": {"every_seconds": 60}}, "parameters.word"),
    ]
    for extra, field in extras:
        names.append(f"bad-{secrets.token_hex(3)}")
        body = {"name": names[-1], "template": template, "credential_ids": [cred], **extra}
        refused = await stack.api.post("/v1/tasks", json=body)
        assert refused.status_code == 422, refused.text
        assert refused.json()["errors"][0]["field"] == field

    with Session(stack.engine) as db:
        assert db.exec(select(TaskRun).where(TaskRun.task_id == task["id"])).all() == []
        assert db.exec(select(Operation).where(Operation.credential_id == cred)).all() == []
        assert db.exec(select(Task).where(col(Task.name).in_(names))).all() == []
    # Visibility lags: a good run must show up, and with it the count says nothing else did.
    good = await _run(stack, task["id"], {"word": "ok"})
    assert good["status"] == "succeeded"
    deadline = asyncio.get_running_loop().time() + 20
    while (count := (await stack.client.count_workflows(visible)).count) == before:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.2)
    assert count == before + 1


async def test_a_scheduled_task_runs_on_its_schedule_until_deleted(
    stack: Stack, sshd: Sshd, ssh_users: Users
) -> None:
    (cred,) = await _ssh_credentials(stack, sshd, ssh_users, 1)
    task = await _task(stack, "ssh/uptime", [cred], schedule={"every_seconds": 2})
    assert task["schedule"] == {"every_seconds": 2}
    assert task["schedule_id"] == task_schedule_id(task["id"]) == f"keyturn-task-{task['id']}"
    described = await stack.client.get_schedule_handle(task["schedule_id"]).describe()
    action = described.schedule.action
    assert isinstance(action, ScheduleActionStartWorkflow)
    assert (action.workflow, action.task_queue) == (TASK_RUN_WORKFLOW, stack.settings.task_queue)

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while True:
        runs = (await stack.get(f"/v1/tasks/{task['id']}/runs"))["items"]
        done = [r for r in runs if r["status"] == "succeeded"]
        if done:
            break
        assert loop.time() < deadline, runs
        await asyncio.sleep(0.2)
    run = done[0]
    assert (run["trigger"], run["requested_by"]) == ("task-schedule", None)
    (result,) = run["results"]
    assert result["exit_status"] == 0 and "load average" in result["output"]
    op = await stack.get(f"/v1/operations/{result['operation_id']}")
    assert (op["kind"], op["trigger"]) == ("task", "task-schedule")

    deleted = await stack.api.delete(f"/v1/tasks/{task['id']}")
    assert deleted.status_code == 200 and deleted.json()["deleted_at"]
    with pytest.raises(RPCError) as gone:
        await stack.client.get_schedule_handle(task["schedule_id"]).describe()
    assert gone.value.status == RPCStatusCode.NOT_FOUND
    refused = await stack.api.post(f"/v1/tasks/{task['id']}/runs", json={})
    assert refused.status_code == 409


async def test_task_runs_and_a_change_on_one_credential_take_turns(
    stack: Stack, sshd: Sshd, ssh_users: Users
) -> None:
    """Two runs of a task and a change requested together on one credential (and device):
    one at a time at the credential's gate, every one succeeds, each run logging in with the
    secret current when its turn came."""
    (cred,) = await _ssh_credentials(stack, sshd, ssh_users, 1)
    slow = await ssh_template(stack, SLOW_TASK, kind="task")
    task = await _task(stack, slow, [cred])

    first = await stack.post(f"/v1/tasks/{task['id']}/runs", {"parameters": {"seconds": "2"}}, 202)
    await _registered(stack, cred)  # the first run holds the gate: the others come after it
    change, second = await asyncio.gather(
        stack.post(f"/v1/credentials/{cred}/operations", {"kind": "change"}, 202),
        stack.post(f"/v1/tasks/{task['id']}/runs", {}, 202),
    )
    for workflow_id in (first["workflow_id"], second["workflow_id"], change["workflow_id"]):
        await stack.client.get_workflow_handle(workflow_id).result()

    runs = [await stack.get(f"/v1/tasks/{task['id']}/runs/{r['run_id']}") for r in (first, second)]
    assert [r["status"] for r in runs] == ["succeeded", "succeeded"], runs
    changed = await stack.get(f"/v1/operations/{change['operation_id']}")
    assert changed["status"] == "succeeded", changed
    assert await ssh_users.password_works(
        (await stack.get(f"/v1/credentials/{cred}"))["username"], current_secret(stack, cred)
    )
    with Session(stack.engine) as db:
        operations = db.exec(
            select(Operation)
            .where(Operation.credential_id == cred)
            .order_by(col(Operation.gate_seq))
        ).all()
        spans = []
        for operation in operations:
            attempts = db.exec(select(Attempt).where(Attempt.operation_id == operation.id)).all()
            spans.append(
                (
                    min(a.started_at for a in attempts),
                    max(a.finished_at for a in attempts if a.finished_at),
                )
            )
    assert [o.kind for o in operations].count("task") == 2 and len(operations) == 3
    # The first run was requested first: it held the gate, the others queued behind it.
    assert operations[0].id == runs[0]["results"][0]["operation_id"]
    assert all(o.waiting_for == operations[i].id for i, o in enumerate(operations[1:]))
    for (_, ended), (started, _) in zip(spans, spans[1:], strict=False):
        assert ended <= started, spans


async def _registered(stack: Stack, credential_id: str, within: float = 20) -> None:
    """Wait until an operation on the credential is at its gate (polls the store)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        with Session(stack.engine) as db:
            if db.exec(select(Operation).where(Operation.credential_id == credential_id)).first():
                return
        assert loop.time() < deadline, "no operation registered"
        await asyncio.sleep(0.05)


async def test_postgresql_terminate_idle_sessions(
    stack: Stack, pg_cluster: PostgresCluster, pg_roles: Roles
) -> None:
    admin = pg_roles.create(PASSWORD, admin=True)
    idle_role = pg_roles.create(PASSWORD)
    with pg_cluster.new_databases() as (database,):
        device = await stack.post(
            "/v1/devices",
            {
                "name": f"pg-{secrets.token_hex(4)}",
                "address": "127.0.0.1",
                "port": pg_cluster.port,
                "executor": "postgresql",
                "options": {"database": database, **pg_cluster.client_options()},
            },
        )
        cred = await credential(stack, device["id"], admin, PASSWORD)
        task = await _task(stack, "postgresql/terminate-idle-sessions", [cred["id"]])
        with pg_cluster.superuser_connection() as superuser:  # may end others' sessions
            superuser.execute(
                sql.SQL("GRANT pg_signal_backend, pg_read_all_stats TO {}").format(
                    sql.Identifier(admin)
                )
            )
        idle = psycopg.connect(
            host="127.0.0.1",
            port=pg_cluster.port,
            user=idle_role,
            password=PASSWORD,
            dbname=database,
            autocommit=True,
        )
        try:
            run = await _run(stack, task["id"], {"idle_minutes": 0})

            assert run["status"] == "succeeded", run
            (result,) = run["results"]
            assert (result["exit_status"], result["output"]) == (0, "1")
            with pytest.raises(psycopg.OperationalError):
                idle.execute("SELECT 1")
        finally:
            idle.close()


async def test_ldap_list_locked_accounts(stack: Stack, slapd: Slapd, ldap_users: LdapUsers) -> None:
    locked, unlocked = ldap_users.create(PASSWORD), ldap_users.create(PASSWORD)
    conn = slapd.admin()
    try:
        assert conn.modify(
            LdapUsers.dn(locked),
            {"pwdAccountLockedTime": [(ldap3.MODIFY_REPLACE, [b"000001010000Z"])]},
        ), conn.result
    finally:
        conn.unbind()
    device = await stack.post(
        "/v1/devices",
        {
            "name": f"ldap-{secrets.token_hex(4)}",
            "address": "127.0.0.1",
            "port": slapd.port,
            "executor": "ldap",
            "options": {"base_dn": SUFFIX, **slapd.client_options()},
        },
    )
    admin = await credential(stack, device["id"], ADMIN_DN, ADMIN_PASSWORD)
    task = await _task(stack, "ldap/list-locked-accounts", [admin["id"]])

    run = await _run(stack, task["id"], {})

    assert run["status"] == "succeeded", run
    (result,) = run["results"]
    listed = result["output"].lower().splitlines()
    assert LdapUsers.dn(locked).lower() in listed
    assert LdapUsers.dn(unlocked).lower() not in listed


async def test_a_task_that_cannot_work_is_refused_and_nothing_is_stored(
    stack: Stack, sshd: Sshd, ssh_users: Users, pg_cluster: PostgresCluster
) -> None:
    (cred,) = await _ssh_credentials(stack, sshd, ssh_users, 1)
    other_profile = await ssh_device(stack, sshd, profile=f"p-{secrets.token_hex(3)}")
    elsewhere = await credential(stack, other_profile["id"], "someone", PASSWORD)
    pg = await stack.post(
        "/v1/devices",
        {
            "name": f"pg-{secrets.token_hex(4)}",
            "address": "127.0.0.1",
            "port": pg_cluster.port,
            "executor": "postgresql",
            "options": {"database": "postgres", **pg_cluster.client_options()},
        },
    )
    on_pg = await credential(stack, pg["id"], "someone", PASSWORD)
    taken = await _task(stack, "ssh/uptime", [cred])
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"template": "ssh/linux-passwd"}, 422, "template"),  # a change template
        ({"template": "ssh/no-such-task"}, 422, "template"),
        ({"credential_ids": ["nope"]}, 422, "credential_ids.0"),
        ({"credential_ids": [cred, on_pg["id"]]}, 422, "credential_ids.1"),  # other executor
        ({"credential_ids": [cred, elsewhere["id"]]}, 422, "credential_ids"),  # two profiles
        ({"template": "ssh/service-restart", "parameters": {"service": 1}}, 422, ""),
        ({"schedule": {"cron": "every day"}}, 422, ""),
        ({"schedule": {"cron": "0 3 * * *", "timezone": "Mars/Olympus"}}, 422, ""),
        ({"schedule": {"cron": "0 3 * * *", "every_seconds": 5}}, 422, ""),
        ({"schedule": {"cron": "99 3 * * *"}}, 422, "schedule"),  # Temporal refuses it
        ({"name": taken["name"]}, 409, ""),
    ]
    for change, status, field in cases:
        body = {
            "name": f"refused-{secrets.token_hex(3)}",
            "template": "ssh/uptime",
            "credential_ids": [cred],
            **change,
        }
        refused = await stack.api.post("/v1/tasks", json=body)
        assert refused.status_code == status, (change, refused.text)
        assert refused.headers["content-type"] == "application/problem+json"
        if field:
            assert refused.json()["errors"][0]["field"] == field, refused.json()
    with Session(stack.engine) as db:
        refused_names = db.exec(select(Task).where(col(Task.name).startswith("refused-"))).all()
    assert refused_names == []


async def test_a_target_canceled_while_queued_cancels_its_run_and_no_other(
    stack: Stack, sshd: Sshd, ssh_users: Users
) -> None:
    (cred,) = await _ssh_credentials(stack, sshd, ssh_users, 1)
    slow = await ssh_template(stack, SLOW_TASK, kind="task")
    task = await _task(stack, slow, [cred])
    first = await stack.post(f"/v1/tasks/{task['id']}/runs", {"parameters": {"seconds": "2"}}, 202)
    await _registered(stack, cred)
    second = await stack.post(f"/v1/tasks/{task['id']}/runs", {}, 202)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while True:  # the second run's operation queued behind the first's
        run = await stack.get(f"/v1/tasks/{task['id']}/runs/{second['run_id']}")
        operation_id = run["results"][0]["operation_id"] if run["results"] else None
        if operation_id:
            with Session(stack.engine) as db:
                queued = db.get(Operation, operation_id)
            if queued is not None and queued.status == "queued":
                break
        assert loop.time() < deadline, run
        await asyncio.sleep(0.05)

    canceled = await stack.api.post(f"/v1/operations/{operation_id}/cancel")
    assert canceled.status_code == 202, canceled.text
    for accepted in (first, second):
        await stack.client.get_workflow_handle(accepted["workflow_id"]).result()

    ran = await stack.get(f"/v1/tasks/{task['id']}/runs/{first['run_id']}")
    dropped = await stack.get(f"/v1/tasks/{task['id']}/runs/{second['run_id']}")
    assert (ran["status"], dropped["status"]) == ("succeeded", "canceled")
    assert dropped["results"][0]["status"] == "canceled"
    op = await stack.get(f"/v1/operations/{operation_id}")
    assert op["status"] == "canceled" and op["attempts"] == []  # it never ran


async def test_schedules_are_made_to_match_the_tasks_on_start(
    stack: Stack, sshd: Sshd, ssh_users: Users
) -> None:
    """At a worker's start: a task whose schedule went missing gets it back, and the schedule
    of a task that is gone is removed."""
    (cred,) = await _ssh_credentials(stack, sshd, ssh_users, 1)
    hourly = {"cron": "0 * * * *", "timezone": "Europe/Paris"}
    kept = await _task(stack, "ssh/uptime", [cred], schedule=hourly)
    orphan = await _task(stack, "ssh/uptime", [cred], schedule=hourly)
    await stack.client.get_schedule_handle(kept["schedule_id"]).delete()
    with Session(stack.engine) as db:  # gone from the store behind Temporal's back
        row = db.get(Task, orphan["id"])
        assert row is not None
        row.deleted_at = row.created_at
        db.add(row)
        db.commit()

    done = await task_schedules.reconcile(stack.client, stack.engine, stack.settings)

    assert orphan["schedule_id"] in done.removed
    described = await stack.client.get_schedule_handle(kept["schedule_id"]).describe()
    # Temporal keeps a cron spec as its calendar: minute 0 of every hour.
    (calendar,) = described.schedule.spec.calendars
    assert [(r.start, r.end) for r in calendar.minute] == [(0, 0)]
    assert described.schedule.spec.time_zone_name == "Europe/Paris"
    with pytest.raises(RPCError):
        await stack.client.get_schedule_handle(orphan["schedule_id"]).describe()
    await stack.client.get_schedule_handle(kept["schedule_id"]).delete()


async def test_a_task_template_with_a_bad_declaration_is_refused_when_saved(stack: Stack) -> None:
    refused = await stack.api.post(
        "/v1/templates",
        json={
            "name": f"ssh/task-{secrets.token_hex(3)}",
            "executor": "ssh",
            "kind": "task",
            "body": "# kind: task\n# param: n float\nexec: echo {{ params.n }}\n",
        },
    )
    assert refused.status_code == 422, refused.text
    assert refused.json()["errors"][0] == {
        "field": "body",
        "line": 2,
        "message": "parameter 'n': unknown type 'float' (string, int, bool, choice(a,b,…))",
    }
    # A parameter read but not declared: refused now, not by a run after its first command.
    name = f"ssh/task-{secrets.token_hex(3)}"
    refused = await stack.api.post(
        "/v1/templates",
        json={
            "name": name,
            "executor": "ssh",
            "kind": "task",
            "body": "# kind: task\n# param: n int\nexec: echo {{ params.n }}\n"
            "exec: echo {{ params.m }}\n",
        },
    )
    assert refused.status_code == 422, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    (error,) = refused.json()["errors"]
    assert (error["field"], error["line"]) == ("body", 4), error
    assert "params.m is not declared" in error["message"]
    assert (await stack.api.get(f"/v1/templates/{name}/versions")).status_code == 404


async def test_a_target_canceled_while_running_stops_and_frees_its_credential(
    stack: Stack, sshd: Sshd, ssh_users: Users
) -> None:
    (cred,) = await _ssh_credentials(stack, sshd, ssh_users, 1)
    slow = await ssh_template(stack, SLOW_TASK, kind="task")
    task = await _task(stack, slow, [cred])
    accepted = await stack.post(
        f"/v1/tasks/{task['id']}/runs", {"parameters": {"seconds": "30"}}, 202
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while True:  # its attempt has begun: the command is running on the host
        with Session(stack.engine) as db:
            attempt = db.exec(
                select(Attempt)
                .join(Operation, col(Operation.id) == col(Attempt.operation_id))
                .where(Operation.credential_id == cred)
            ).first()
        if attempt is not None:
            break
        assert loop.time() < deadline
        await asyncio.sleep(0.05)

    canceled = await stack.api.post(f"/v1/operations/{attempt.operation_id}/cancel")
    assert canceled.status_code == 202, canceled.text
    async with asyncio.timeout(20):  # well before the command's 30 s
        await stack.client.get_workflow_handle(accepted["workflow_id"]).result()

    run = await stack.get(f"/v1/tasks/{task['id']}/runs/{accepted['run_id']}")
    assert run["status"] == "canceled", run
    op = await stack.get(f"/v1/operations/{attempt.operation_id}")
    assert op["status"] == "canceled"
    assert [(a["step"], a["outcome"]) for a in op["attempts"]] == [("task", "canceled")]
    # The gate and the device's slot were given back: a change runs at once.
    changed = await stack.run_operation(cred)
    assert changed["status"] == "succeeded", changed


async def test_a_target_canceled_while_its_job_loads_closes_its_attempt_as_never_run(
    stack: Stack, sshd: Sshd, ssh_users: Users, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The task step beats while it waits for its store work, so a cancel reaches it there
    too: the attempt it had opened is closed as canceled (not left running) and the target is
    not asked. A change of the same credential, requested meanwhile, waits at its gate and
    then runs; another task run goes on beside it."""
    (cred, other) = await _ssh_credentials(stack, sshd, ssh_users, 2)
    echo = await ssh_template(stack, ECHO_TASK, kind="task")
    held_task, other_task = await _task(stack, echo, [cred]), await _task(stack, echo, [other])
    loading, saw_cancel = threading.Event(), threading.Event()
    original = jobs.load_task_job

    def held(engine: Any, vault: Any, operation_id: str, run_id: str) -> Any:
        # The first load is the held task's: no other run starts before it is held.
        if not loading.is_set():
            loading.set()
            deadline = time.monotonic() + 60
            while not activity.is_cancelled():  # the cancel comes with a heartbeat's answer
                assert time.monotonic() < deadline, "the cancel never reached the step"
                time.sleep(0.05)
            saw_cancel.set()
        return original(engine, vault, operation_id, run_id)

    monkeypatch.setattr(task_steps, "load_task_job", held)
    held_run = await stack.post(
        f"/v1/tasks/{held_task['id']}/runs", {"parameters": {"word": "w"}}, 202
    )
    assert await asyncio.to_thread(loading.wait, 30)
    run = await stack.get(f"/v1/tasks/{held_task['id']}/runs/{held_run['run_id']}")
    operation_id = run["results"][0]["operation_id"]
    changed, beside, canceled = await asyncio.gather(
        stack.run_operation(cred),
        _run(stack, other_task["id"], {"word": "w"}),
        stack.api.post(f"/v1/operations/{operation_id}/cancel"),
    )
    assert canceled.status_code == 202, canceled.text
    async with asyncio.timeout(30):
        await stack.client.get_workflow_handle(held_run["workflow_id"]).result()

    assert saw_cancel.is_set()
    op = await stack.get(f"/v1/operations/{operation_id}")
    assert op["status"] == "canceled", op
    assert [(a["step"], a["outcome"]) for a in op["attempts"]] == [("task", "canceled")]
    assert (changed["status"], beside["status"]) == ("succeeded", "succeeded"), (changed, beside)
    username = (await stack.get(f"/v1/credentials/{cred}"))["username"]
    assert await ssh_users.password_works(username, current_secret(stack, cred))


async def test_a_run_takes_no_more_of_a_device_than_its_cap(
    stack: Stack, sshd: Sshd, ssh_users: Users
) -> None:
    """Three accounts on one device that takes one operation at a time: the run's targets
    take turns on it (the device's slots), and all succeed."""
    device = await ssh_device(stack, sshd, max_concurrent_operations=1)
    creds = [
        (await credential(stack, device["id"], ssh_users.create(PASSWORD), PASSWORD))["id"]
        for _ in range(3)
    ]
    slow = await ssh_template(stack, SLOW_TASK, kind="task")
    task = await _task(stack, slow, creds)

    run = await _run(stack, task["id"], {"seconds": "1"})

    assert run["status"] == "succeeded", run
    with Session(stack.engine) as db:
        attempts = sorted(
            db.exec(
                select(Attempt).where(
                    col(Attempt.operation_id).in_([r["operation_id"] for r in run["results"]])
                )
            ).all(),
            key=lambda a: a.started_at,
        )
    assert len(attempts) == 3
    for before, after in zip(attempts, attempts[1:], strict=False):
        assert before.finished_at is not None and before.finished_at <= after.started_at


async def test_a_run_canceled_while_it_runs_stops_every_target(
    stack: Stack, sshd: Sshd, ssh_users: Users
) -> None:
    creds = await _ssh_credentials(stack, sshd, ssh_users, 2)
    slow = await ssh_template(stack, SLOW_TASK, kind="task")
    task = await _task(stack, slow, creds)
    accepted = await stack.post(
        f"/v1/tasks/{task['id']}/runs", {"parameters": {"seconds": "30"}}, 202
    )
    path = f"/v1/tasks/{task['id']}/runs/{accepted['run_id']}"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while True:  # both commands are running on the host: each target's attempt has begun
        results = (await stack.get(path))["results"]
        with Session(stack.engine) as db:
            attempts = db.exec(
                select(Attempt).where(
                    col(Attempt.operation_id).in_([r["operation_id"] for r in results])
                )
            ).all()
        if len(attempts) == 2:
            break
        assert loop.time() < deadline, results
        await asyncio.sleep(0.05)

    canceled = await stack.api.post(f"{path}/cancel")
    assert canceled.status_code == 202, canceled.text
    async with asyncio.timeout(20):  # well before the commands' 30 s
        with pytest.raises(WorkflowFailureError):  # the run's workflow ends canceled
            await stack.client.get_workflow_handle(accepted["workflow_id"]).result()

    run = await stack.get(path)
    assert run["status"] == "canceled", run
    assert [r["status"] for r in run["results"]] == ["canceled", "canceled"]
    for result in run["results"]:  # each executor had stopped when the run ended
        op = await stack.get(f"/v1/operations/{result['operation_id']}")
        assert op["status"] == "canceled", op
        assert [(a["step"], a["outcome"]) for a in op["attempts"]] == [("task", "canceled")]
    again = await stack.api.post(f"{path}/cancel")
    assert again.status_code == 409


async def test_an_inactive_credential_fails_its_target_without_a_login(
    stack: Stack, sshd: Sshd, ssh_users: Users
) -> None:
    """A deactivated account is locked on its target: the task does not try to log in as it
    (which would spend its lockout budget); the other target runs."""
    locked, usable = await _ssh_credentials(stack, sshd, ssh_users, 2)
    with Session(stack.engine) as db:
        row = db.get(Credential, locked)
        assert row is not None
        row.active = False
        db.add(row)
        db.commit()
    task = await _task(stack, "ssh/uptime", [locked, usable])

    run = await _run(stack, task["id"], {})

    assert run["status"] == "failed"
    results = {r["credential_id"]: r for r in run["results"]}
    assert results[usable]["status"] == "succeeded"
    assert (results[locked]["status"], results[locked]["error_type"]) == (
        "failed",
        "ConfigurationError",
    )
    assert "activate it" in results[locked]["error"]
    # The account is not really locked here: had the task logged in, it would have succeeded.
    op = await stack.get(f"/v1/operations/{results[locked]['operation_id']}")
    assert [(a["step"], a["outcome"], a["transcript"]) for a in op["attempts"]] == [
        ("task", "ConfigurationError", "")
    ]


async def test_a_task_s_schedule_parameters_and_credentials_change_with_patch(
    stack: Stack, sshd: Sshd, ssh_users: Users
) -> None:
    first, second = await _ssh_credentials(stack, sshd, ssh_users, 2)
    template = await ssh_template(stack, ECHO_TASK, kind="task")
    task = await _task(stack, template, [first], parameters={"word": "a"})
    path = f"/v1/tasks/{task['id']}"
    handle = stack.client.get_schedule_handle(task_schedule_id(task["id"]))

    cron = {"cron": "15 2 * * *", "timezone": "Asia/Tokyo"}
    changed = await stack.api.patch(
        path, json={"schedule": cron, "credential_ids": [first, second]}
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["schedule"] == cron and changed.json()["credential_ids"] == [
        first,
        second,
    ]
    assert (await handle.describe()).schedule.spec.time_zone_name == "Asia/Tokyo"
    assert changed.json()["parameters"] == {"word": "a"}  # absent: left as it was

    # With a schedule, the required word cannot go; a bad value is refused too: nothing changes.
    for body, field in [
        ({"parameters": {}}, "parameters.word"),
        ({"parameters": {"word": "b", "mode": "medium"}}, "parameters.mode"),
        ({"schedule": {"every_seconds": 0}}, ""),
    ]:
        refused = await stack.api.patch(path, json=body)
        assert refused.status_code == 422, refused.text
        if field:
            assert refused.json()["errors"][0]["field"] == field
    assert (await stack.get(path))["parameters"] == {"word": "a"}

    cleared = await stack.api.patch(path, json={"schedule": None, "parameters": {}})
    assert cleared.status_code == 200, cleared.text
    assert (cleared.json()["schedule"], cleared.json()["schedule_id"]) == (None, None)
    with pytest.raises(RPCError):
        await handle.describe()

    assert (await stack.api.delete(path)).status_code == 200
    assert (await stack.api.patch(path, json={"parameters": {}})).status_code == 409


class _HeldRegister(GateActivities):
    """The real register (the operation is at its credential's gate), after which the target
    waits for the test: a cancel comes while it registers."""

    registered = threading.Event()
    proceed = threading.Event()

    @activity.defn(name="keyturn.register")
    def register(self, request: RegisterInput) -> Admission:
        admission = super().register(request)
        type(self).registered.set()
        assert type(self).proceed.wait(60)
        return admission


async def test_a_target_canceled_while_it_registers_leaves_its_credential_free(
    stack: Stack, sshd: Sshd, ssh_users: Users, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A target canceled while it registers at its credential's gate (as when a run is canceled
    as soon as it starts): it ends canceled and leaves the gate, so the credential's next
    operation runs."""
    (cred,) = await _ssh_credentials(stack, sshd, ssh_users, 1)
    queue = f"{stack.settings.task_queue}-held-{secrets.token_hex(4)}"
    run_id, operation_id = new_id(), new_id()
    monkeypatch.setattr(worker_module, "GateActivities", _HeldRegister)
    _HeldRegister.registered.clear()
    _HeldRegister.proceed.clear()
    async with workers_on(stack, queue):
        handle = await stack.client.start_workflow(
            TASK_TARGET_WORKFLOW,
            TaskTargetInput(run_id, cred, operation_id, "manual", "admin"),
            id=task_target_workflow_id(run_id, cred),
            task_queue=queue,
        )
        try:
            assert await asyncio.to_thread(_HeldRegister.registered.wait, 30)
            await handle.cancel()
            # The cancel is in the workflow's history before register's answer is.
            await cancel_requested(stack, handle.id)
        finally:
            _HeldRegister.proceed.set()
        with pytest.raises(WorkflowFailureError):  # it ends canceled
            await handle.result()

    with Session(stack.engine) as db:
        operation = db.get(Operation, operation_id)
    assert operation is not None and operation.status == "canceled", operation
    async with asyncio.timeout(30):  # it would queue for ever behind a target still at the gate
        changed = await stack.run_operation(cred)
    assert changed["status"] == "succeeded", changed


class _HeldBegin(TaskStoreActivities):
    """The real begin_task_run (the run is marked running), after which the run waits for the
    test: a cancel comes while the run begins."""

    begun = threading.Event()
    proceed = threading.Event()

    @activity.defn(name="keyturn.begin_task_run")
    def begin_task_run(self, start: TaskRunStart) -> TaskRunPlan:
        plan = super().begin_task_run(start)
        type(self).begun.set()
        assert type(self).proceed.wait(60)
        return plan


async def test_a_run_canceled_as_it_begins_ends_canceled(
    stack: Stack, sshd: Sshd, ssh_users: Users, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run canceled (through the API) while its first step runs: it ends canceled, with its
    targets, rather than staying ``running`` for ever with nothing left to end it."""
    (cred,) = await _ssh_credentials(stack, sshd, ssh_users, 1)
    task = await _task(stack, "ssh/uptime", [cred])
    queue = f"{stack.settings.task_queue}-held-{secrets.token_hex(4)}"
    monkeypatch.setattr(worker_module, "TaskStoreActivities", _HeldBegin)
    _HeldBegin.begun.clear()
    _HeldBegin.proceed.clear()
    async with workers_on(stack, queue):
        requested = await request_task_run(
            stack.engine, stack.client, queue, task["id"], {}, "admin"
        )
        path = f"/v1/tasks/{task['id']}/runs/{requested.run_id}"
        try:
            assert await asyncio.to_thread(_HeldBegin.begun.wait, 30)
            canceled = await stack.api.post(f"{path}/cancel")
            assert canceled.status_code == 202, canceled.text
            await cancel_requested(stack, requested.workflow_id)
        finally:
            _HeldBegin.proceed.set()
        with pytest.raises(WorkflowFailureError):  # it ends canceled
            await stack.client.get_workflow_handle(requested.workflow_id).result()

    run = await stack.get(path)
    assert run["status"] == "canceled", run
    assert [r["status"] for r in run["results"]] == ["canceled"], run
    assert (await stack.api.post(f"{path}/cancel")).status_code == 409


async def test_a_run_uses_the_template_version_its_parameters_were_checked_against(
    stack: Stack, sshd: Sshd, ssh_users: Users, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A version approved after a run was requested, before its targets start, is not the one
    the run runs: the run names the version its parameters were checked against (here the
    new one would need a parameter the run does not have)."""
    (cred,) = await _ssh_credentials(stack, sshd, ssh_users, 1)
    name = await ssh_template(
        stack, "# kind: task\n# param: word string\nexec: echo one {{ params.word }}\n", "task"
    )
    task = await _task(stack, name, [cred])
    queue = f"{stack.settings.task_queue}-held-{secrets.token_hex(4)}"
    monkeypatch.setattr(worker_module, "TaskStoreActivities", _HeldBegin)
    _HeldBegin.begun.clear()
    _HeldBegin.proceed.clear()
    async with workers_on(stack, queue):
        requested = await request_task_run(
            stack.engine, stack.client, queue, task["id"], {"word": "w"}, "admin"
        )
        try:
            assert await asyncio.to_thread(_HeldBegin.begun.wait, 30)
            await ssh_template(
                stack,
                "# kind: task\n# param: word string\n# param: other string\n"
                "exec: echo two {{ params.word }} {{ params.other }}\n",
                "task",
                name=name,
            )
        finally:
            _HeldBegin.proceed.set()
        await stack.client.get_workflow_handle(requested.workflow_id).result()

    run = await stack.get(f"/v1/tasks/{task['id']}/runs/{requested.run_id}")
    assert (run["status"], run["template_version"]) == ("succeeded", 1), run
    assert run["results"][0]["output"] == "one w\n"
