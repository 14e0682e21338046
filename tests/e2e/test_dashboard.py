"""The dashboard page in a real browser (Debian's chromium, driven by Playwright): sign in with
the token, see the figures of a seeded store, follow an out-of-sync credential to its last
operation. A screenshot is kept in test-artifacts/ (KEYTURN_TEST_ARTIFACTS)."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import uvicorn
from playwright.async_api import Page, async_playwright
from sqlalchemy.engine import Engine
from temporalio.testing import WorkflowEnvironment

from keyturn.settings import Settings
from starter.app import create_app
from store.engine import make_engine, session_scope
from store.models import Credential, Device, Operation, OperationStatus, Policy, SyncState
from tests.e2e.conftest import ADMIN_TOKEN
from tests.servers.ports import free_port

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(
    os.environ.get("KEYTURN_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts")
)
LAST_BAD = "0badc0ffee" * 3 + "00"


def _seed(engine: Engine) -> None:
    now = datetime.now(UTC)
    with session_scope(engine) as db:
        db.add_all(
            [
                Device(id="dweb", name="web-1", address="10.0.0.5", port=22, executor="ssh"),
                Device(id="ddb", name="db-1", address="10.0.0.6", port=5432, executor="postgresql"),
            ]
        )
        db.flush()

        def credential(id: str, device: str, username: str, sync: SyncState) -> Credential:
            return Credential(
                id=id, device_id=device, username=username, sync_state=sync,
                change_template="ssh/linux-passwd", verify_template="ssh/verify-login",
            )  # fmt: skip

        db.add_all(
            [
                credential("cok", "dweb", "app", SyncState.IN_SYNC),
                credential("cbad", "dweb", "root", SyncState.OUT_OF_SYNC),
                credential("cdb", "ddb", "svc", SyncState.IN_SYNC),
            ]
        )
        db.flush()
        # Expiries: "svc" (changed 3 days ago, every 7 days) is due before "app" (changed an
        # hour ago, every day); "root" has no expiry.
        db.add_all(
            [
                Policy(id="pweek", name="weekly", change_every_seconds=7 * 86400),
                Policy(id="pday", name="daily", change_every_seconds=86400, paused=True),
            ]
        )
        db.flush()
        for credential_id, policy_id, changed in (
            ("cdb", "pweek", now - timedelta(days=3)),
            ("cok", "pday", now - timedelta(hours=1)),
        ):
            row = db.get(Credential, credential_id)
            assert row is not None
            row.policy_id, row.secret_changed_at = policy_id, changed
            db.add(row)

        def op(n: int, credential: str, status: OperationStatus, hours_ago: float) -> Operation:
            at = now - timedelta(hours=hours_ago)
            ended = status in (OperationStatus.SUCCEEDED, OperationStatus.FAILED)
            return Operation(
                id=f"{n:032x}", credential_id=credential, kind="change", status=status,
                workflow_id=f"w{n}", created_at=at - timedelta(seconds=30),
                finished_at=at if ended else None,
            )  # fmt: skip

        rows = [op(n, "cok", OperationStatus.SUCCEEDED, n * 1.5) for n in range(1, 7)]
        rows += [
            op(10, "cbad", OperationStatus.FAILED, 5),
            op(11, "cdb", OperationStatus.FAILED, 2),
        ]
        rows += [
            op(12, "cok", OperationStatus.RUNNING, 0),
            op(13, "cok", OperationStatus.QUEUED, 0),
        ]
        rows += [op(14, "cdb", OperationStatus.QUEUED, 0)]
        rows += [op(15, "cok", OperationStatus.SUCCEEDED, 72)]  # outside the 24 h window
        last = op(16, "cbad", OperationStatus.FAILED, 1)
        last.id, last.error_type = LAST_BAD, "OutOfSync"
        last.resolution = "probe: neither the pending nor the current secret logs in"
        db.add_all([*rows, last])


@pytest.fixture(scope="module")
async def dashboard_url(
    temporal: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[str]:
    data_dir = tmp_path_factory.mktemp("dashboard")
    settings = Settings(
        data_dir=data_dir,
        database_url=f"sqlite:///{data_dir / 'keyturn.db'}",
        master_key=base64.b64encode(temporal.master_key).decode(),  # type: ignore[attr-defined]
        admin_token=ADMIN_TOKEN,
    )
    engine = make_engine(settings.resolved_database_url)
    _seed(engine)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings, engine, temporal.client),
            host="127.0.0.1", port=port, log_level="warning", lifespan="off",
        )
    )  # fmt: skip
    task = asyncio.create_task(server.serve())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while not server.started:
        assert not task.done() and loop.time() < deadline, "the API did not start"
        await asyncio.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await task
    engine.dispose()


async def _text(page: Page, selector: str) -> str:
    return (await page.text_content(selector) or "").strip()


async def test_the_dashboard_shows_the_seeded_store(dashboard_url: str) -> None:
    problems: list[str] = []
    requested: list[str] = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM)
        page = await browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("request", lambda r: requested.append(r.url))
        await page.goto(f"{dashboard_url}/ui/")

        await page.fill("#token", "not-the-token")
        await page.click("button[type=submit]")
        await page.wait_for_selector("#error:has-text('refused')")
        assert await page.is_hidden("#dashboard")

        await page.fill("#token", ADMIN_TOKEN)
        await page.click("button[type=submit]")
        await page.wait_for_selector("#dashboard[data-loaded=true]")
        assert await _text(page, "#success-rate") == "67%"  # 6 succeeded, 3 failed
        assert await _text(page, "#in-flight") == "1"
        assert await _text(page, "#queued") == "2"
        assert await _text(page, "#out-of-sync-count") == "1"
        counts = await page.eval_on_selector_all(
            "#chart rect.succeeded", "rs => rs.map(r => Number(r.dataset.count))"
        )
        assert sum(counts) == 6
        failed = await page.eval_on_selector_all(
            "#chart rect.failed", "rs => rs.map(r => Number(r.dataset.count))"
        )
        assert sum(failed) == 3
        by_executor = await page.eval_on_selector_all(
            "#failures-by-executor tbody tr", "rows => rows.map(r => r.innerText)"
        )
        assert by_executor == ["ssh\t2", "postgresql\t1"]
        by_device = await page.eval_on_selector_all(
            "#failures-by-device tbody tr", "rows => rows.map(r => r.innerText)"
        )
        assert by_device == ["web-1\t2", "db-1\t1"]

        expiries = await page.eval_on_selector_all(
            "#upcoming-expiries tbody tr", "rows => rows.map(r => r.innerText.split('\\t'))"
        )
        assert [row[:3] for row in expiries] == [
            ["app", "web-1", "daily (paused)"],
            ["svc", "db-1", "weekly"],
        ], expiries

        link = page.locator("#out-of-sync tbody a")
        assert await link.inner_text() == LAST_BAD
        assert "root" in await _text(page, "#out-of-sync tbody tr")
        await link.click()
        await page.wait_for_selector(f"#operation-id:has-text('{LAST_BAD}')")
        assert await _text(page, "dd[data-field=error_type]") == "OutOfSync"
        assert await _text(page, "dd[data-field=status]") == "failed"

        await asyncio.to_thread(ARTIFACTS.mkdir, parents=True, exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        await browser.close()
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000
    assert problems == [] or all("401" in p for p in problems), problems  # CSP kept everything
    assert all(url.startswith(dashboard_url) for url in requested), requested  # no external asset


async def test_the_openapi_page_loads_nothing_from_outside_the_host(dashboard_url: str) -> None:
    # A vault's API host reaches no outside network, and a script from a CDN would run beside
    # the token typed into the page: every request the page makes stays on the API's origin.
    requested: list[str] = []
    problems: list[str] = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM)
        page = await browser.new_page()
        page.on("request", lambda r: requested.append(r.url))
        page.on("pageerror", lambda e: problems.append(str(e)))
        await page.goto(f"{dashboard_url}/docs")
        await page.wait_for_selector(".opblock")  # the API's operations are drawn
        assert "/v1/devices" in await page.content()
        # ReDoc is not offered: it draws a logo from its own CDN.
        assert (await page.goto(f"{dashboard_url}/redoc")).status == 404  # type: ignore[union-attr]
        await browser.close()
    outside = [u for u in requested if not u.removeprefix("blob:").startswith(dashboard_url)]
    assert len(requested) > 2 and outside == [], requested
    assert problems == []
