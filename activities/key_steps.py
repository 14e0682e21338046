"""The change and the probe of an ssh-key credential, on its device and every key target.

A key change is the password protocol spread over several devices, with one rule on top: the
old key keeps working everywhere until the new one works everywhere.

1. install the new public key on each device (the account logging in with its current key, or
   the auth account on the credential's own device);
2. log in with the new key on each device (running the verify template);
3. only then remove the old key from each device (logging in with the new key, or the auth
   account).

Failure semantics, per phase:

- 1 or 2 fails on any device: the new key is removed again from every device it may have
  reached (logging in with the current key), the old key was never touched, the vault keeps
  it current. If that clean-up is complete the error stands as it is (nothing remains: the
  pending key is failed); if not, the outcome is unknown and the workflow probes (a probe finds
  the current key still working everywhere, fails the pending version and removes the new key
  where it logs in).
- 3 fails on a device: the new key works everywhere, so it is committed; the old key stays
  authorized on that device, which the operation's ``key_results`` says (``old_key_removed``
  false, with the reason). Nothing is lost; the stale key is for an administrator to remove.

A retried change whose earlier attempt may have reached a device first asks whether the new
key already logs in everywhere; if so it only finishes step 3. Every step is idempotent (an
install of a key present, a removal of a key absent, change nothing), so any attempt may run
again after a crash at any point.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol, TypeVar

from sqlalchemy.engine import Engine

from executors.base import (
    Account,
    ChangeRejected,
    ConfigurationError,
    ExecutorError,
    LoginProgress,
    LoginRequest,
    LoginResult,
    OutcomeUnknown,
    RunRequest,
    RunResult,
    get_executor,
)
from keyturn import failpoints
from store.engine import session_scope
from store.jobs import Job, KeyDevice
from store.models import Operation
from store.ssh_keys import public_key_line
from workflows.contracts import CHOSEN_SECRET_KINDS, ChangeOutcome, ProbeOutcome

_L = TypeVar("_L")
# Kinds whose pending key this operation generated: it may remove the old key once the new one
# works everywhere, and the new key where it must not stay.
_ROTATING_KINDS = ("change", "reconcile")


class Logins(Protocol):
    """What the executor activities lend a key step: charged logins, host-key pinning, and
    recording that a version logs in."""

    async def _login(
        self, job: Job, account: Account, call: Callable[[], Awaitable[_L]], device_id: str | None
    ) -> _L: ...

    async def _pin_learned_key(self, job: Job, key: str | None, device_id: str = "") -> None: ...

    async def _seen_working(self, job: Job, version_id: str | None) -> None: ...


@dataclass
class DeviceResult:
    """What a key change did on one device: the operation's ``key_results`` (no secret)."""

    device_id: str
    device: str
    new_key_installed: bool = False
    new_key_logs_in: bool = False
    old_key_removed: bool | None = None  # None: not tried (the change did not get that far)
    detail: str | None = None


class KeySteps:
    def __init__(self, logins: Logins, engine: Engine, job: Job) -> None:
        assert job.holds_key and job.key_devices
        self._logins = logins
        self._engine = engine
        self._job = job
        self._executor = get_executor(job.device.executor)
        self._lines: list[str] = []
        self._results = {
            d.device_id: DeviceResult(d.device_id, d.target.name) for d in job.key_devices
        }
        comment = f"keyturn:{job.credential.id}"
        self._old_line = public_key_line(job.current_password, comment)
        pending = job.pending_password
        self._new_line = public_key_line(pending, comment) if pending else None

    @property
    def transcript(self) -> str:
        return "\n".join(self._lines)

    # -- the change -------------------------------------------------------------------------

    async def change(self, may_have_sent: bool) -> tuple[str, ChangeOutcome]:
        if may_have_sent and await self._new_key_logs_in_everywhere(verify=True):
            self._lines.append("new key already logs in everywhere (probe): finishing the change")
            await self._remove_everywhere(self._old_line, with_new_key=True)
            await self._record()
            return self.transcript, ChangeOutcome(already_applied=True, verified=True)
        reached: list[KeyDevice] = []
        try:
            for device in self._job.key_devices:
                reached.append(device)  # before the call: its answer may be lost, not its effect
                try:
                    await self._edit(device, "install", self._pending_line, with_new_key=False)
                except ExecutorError as exc:
                    if exc.login in (LoginProgress.NOT_ATTEMPTED, LoginProgress.REFUSED):
                        reached.pop()  # no session was opened there: nothing ran, nothing to undo
                    raise
                self._results[device.device_id].new_key_installed = True
                if len(reached) == 1 and len(self._job.key_devices) > 1:
                    failpoints.reach(failpoints.KEY_INSTALLED_ON_ONE)
            if not await self._new_key_logs_in_everywhere(verify=True):
                refused = [r.device for r in self._results.values() if not r.new_key_logs_in]
                raise ChangeRejected(
                    ", ".join(refused),
                    "verify",
                    "the new key was installed but does not log in there",
                )
        except ExecutorError as exc:
            raise await self._undo(reached, exc) from None
        failpoints.reach(failpoints.KEY_VERIFIED)
        await self._remove_everywhere(self._old_line, with_new_key=True)
        await self._record()
        return self.transcript, ChangeOutcome(already_applied=False, verified=True)

    async def _undo(self, reached: list[KeyDevice], exc: ExecutorError) -> ExecutorError:
        """Phase 1 or 2 failed: take the new key off every device it may have reached. The
        error stands if that worked everywhere; otherwise the outcome is unknown (probe)."""
        self._lines.append(f"failed: {exc}; removing the new key again")
        undone = True
        for device in reached:
            try:
                await self._edit(device, "remove", self._pending_line, with_new_key=False)
                self._results[device.device_id].new_key_installed = False
            except ExecutorError as undo_exc:
                undone = False
                self._results[device.device_id].detail = f"new key not removed: {undo_exc.cause}"
        await self._record()
        transcript = "\n".join(filter(None, [self.transcript, exc.transcript]))
        if undone and not isinstance(exc, OutcomeUnknown):
            exc.transcript = transcript
            if reached and not isinstance(exc, ConfigurationError):
                names = ", ".join(d.target.name for d in reached)
                return type(exc)(
                    exc.device,
                    exc.step,
                    f"{exc.cause}; the new key, installed on {names}, was removed again",
                    transcript,
                    login=exc.login,
                )
            return exc
        return OutcomeUnknown(
            exc.device,
            exc.step,
            f"{exc.cause}; the new key could not be removed again everywhere, so it may be "
            "authorized somewhere: probe",
            transcript,
            login=exc.login,
        )

    # -- the probe --------------------------------------------------------------------------

    async def probe(self, login_only: bool) -> tuple[str, ProbeOutcome]:
        """Does the pending key log in everywhere? If not, the current one?"""
        rotating = self._job.operation.kind in _ROTATING_KINDS
        if self._new_line is not None:
            if await self._new_key_logs_in_everywhere(verify=not login_only):
                await self._logins._seen_working(self._job, self._job.operation.pending_version_id)
                if rotating:  # the change got past its verify: finish it
                    await self._remove_everywhere(self._old_line, with_new_key=True)
                    await self._record()
                return self.transcript, ProbeOutcome(True, None)
            if self._job.operation.kind in CHOSEN_SECRET_KINDS:
                return self.transcript, ProbeOutcome(False, None)
        current_works = True
        for device in self._job.key_devices:
            ok = await self._logs_in(device, self._job.current_password, "current", verify=False)
            current_works = current_works and ok
        if current_works:
            await self._logins._seen_working(self._job, self._job.current_version_id)
            partly = [r for r in self._results.values() if r.new_key_logs_in]
            if rotating and partly and self._new_line is not None:
                # The change failed halfway: the vault keeps the current key, which works
                # everywhere, so the new one must not stay authorized anywhere.
                await self._remove_everywhere(self._new_line, with_new_key=False)
                await self._record()
        return self.transcript, ProbeOutcome(False, current_works)

    # -- steps on every device --------------------------------------------------------------

    async def _new_key_logs_in_everywhere(self, verify: bool) -> bool:
        pending = self._job.pending_password
        if pending is None:
            return False
        everywhere = True
        for device in self._job.key_devices:
            ok = await self._logs_in(device, pending, "new", verify=verify)
            self._results[device.device_id].new_key_logs_in = ok
            everywhere = everywhere and ok
        if everywhere:
            await self._logins._seen_working(self._job, self._job.operation.pending_version_id)
        return everywhere

    async def _remove_everywhere(self, line: str, with_new_key: bool) -> None:
        """Best effort on each device: a failure is recorded on its result, never raised."""
        removing_old = line == self._old_line
        for device in self._job.key_devices:
            try:
                await self._edit(device, "remove", line, with_new_key=with_new_key)
                if removing_old:
                    self._results[device.device_id].old_key_removed = True
            except ExecutorError as exc:
                self._lines.append(f"[{device.target.name}] remove failed: {exc}")
                if removing_old:
                    result = self._results[device.device_id]
                    result.old_key_removed = False
                    result.detail = f"the old key is still authorized: {exc.cause}"

    async def _logs_in(self, device: KeyDevice, key: str, which: str, verify: bool) -> bool:
        account = self._job.account(key)
        template = self._job.verify_template if verify else None
        request = LoginRequest(device.target, account, template, self._job.context())
        result: LoginResult = await self._logins._login(
            self._job, account, lambda: self._executor.check_login(request), device.device_id
        )
        await self._logins._pin_learned_key(self._job, result.learned_host_key, device.device_id)
        self._lines.append(
            f"[{device.target.name}] [{which} key] {'logs in' if result.ok else 'refused'}"
        )
        if result.transcript:
            self._lines.append(result.transcript)
        return result.ok

    async def _edit(self, device: KeyDevice, action: str, line: str, with_new_key: bool) -> None:
        """Run the device's install or remove template for ``line``. The account connects with
        the auth account where the device is privileged, else as itself: with the new key once
        it is known to work (removing the old one), with the current key before."""
        if device.privileged and self._job.auth_account is not None:
            account = self._job.auth_account
        else:
            secret = self._job.pending_password if with_new_key else self._job.current_password
            account = self._job.account(secret or "")
        template = device.install_template if action == "install" else device.remove_template
        context = self._job.context(values={"public_key": line})
        request = RunRequest(device.target, account, template, context)
        result: RunResult = await self._logins._login(
            self._job, account, lambda: self._executor.run(request), device.device_id
        )
        await self._logins._pin_learned_key(self._job, result.learned_host_key, device.device_id)
        self._lines.append(f"[{device.target.name}] {action} {line.split()[0]} key")
        self._lines.append(result.transcript)

    @property
    def _pending_line(self) -> str:
        assert self._new_line is not None
        return self._new_line

    async def _record(self) -> None:
        results = [asdict(r) for r in self._results.values()]
        await asyncio.to_thread(_store_results, self._engine, self._job.operation.id, results)


def _store_results(engine: Engine, operation_id: str, results: list[dict[str, Any]]) -> None:
    with session_scope(engine) as session:
        operation = session.get(Operation, operation_id)
        if operation is not None:
            operation.key_results = results
            session.add(operation)
