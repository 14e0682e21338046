"""The SIEM echo's resend path, forced: a receiver that breaks its TCP or TLS connection in the
middle of a stream of events loses what it had not read, and gets it again on the next one.

The outage test (test_siem_echo) stops rsyslog while operations run, which may or may not catch
events in flight. Here the receiver (tests/servers/syslog_receiver.py) drops each of its first
two connections at a known message, so the messages from there on are certainly lost and only
the resend can bring them: every event arrives, in order, none missing, and a repeat happens
only where a connection broke."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from governance.siem import endpoint
from keyturn.settings import SiemDestination
from store import audit, siem_outbox
from store.engine import session_scope
from tests.e2e.conftest import Stack, running_stack
from tests.e2e.siem_parsing import audit_id
from tests.servers.syslog_receiver import SyslogReceiver
from tests.servers.tls import issue

# Connection 1 keeps 5 messages, connection 2 keeps 12; connection 3 keeps the rest.
DROP_AFTER = (5, 12)
EVENTS = 40
ARRIVAL_DEADLINE = 60.0
_NO_LEASE = timedelta(0)


@pytest.fixture
async def receivers(tmp_path: Path) -> AsyncIterator[dict[str, SyslogReceiver]]:
    started = {
        "tcp": SyslogReceiver(DROP_AFTER),
        "tls": SyslogReceiver(DROP_AFTER, tls=issue(tmp_path / "tls")),
    }
    for receiver in started.values():
        await receiver.start()
    yield started
    for receiver in started.values():
        await receiver.close()


@pytest.fixture
async def echoing(
    temporal: WorkflowEnvironment, receivers: dict[str, SyslogReceiver], tmp_path: Path
) -> AsyncIterator[tuple[Stack, list[SiemDestination]]]:
    destinations = [
        SiemDestination(url=receivers["tcp"].url, format="rfc5424"),
        SiemDestination(url=receivers["tls"].url, format="cef", ca_file=tmp_path / "tls/ca.pem"),
    ]
    async with running_stack(
        temporal,
        tmp_path,
        siem_destinations=[d.model_dump(mode="json") for d in destinations],
    ) as stack:
        yield stack, destinations


def _record_events(stack: Stack, destinations: list[SiemDestination]) -> list[int]:
    """Make sure each destination has its cursor (a new one starts at the trail's end: events
    before it are not its to send), then append EVENTS audit events in one transaction, so
    they wait in the outbox together and go out as one stream."""
    for destination in destinations:
        # An expired lease: the echo's own sender takes the cursor over on its next look.
        siem_outbox.claim(stack.engine, endpoint(destination).key, "test", lease=_NO_LEASE)
    with session_scope(stack.engine) as session:
        return [audit.record(session, "test.resend", number=n) for n in range(EVENTS)]


async def test_a_connection_dropped_mid_stream_is_resent_from_the_last_delivered_event(
    echoing: tuple[Stack, list[SiemDestination]], receivers: dict[str, SyslogReceiver]
) -> None:
    stack, destinations = echoing
    wanted = await asyncio.to_thread(_record_events, stack, destinations)

    for transport, receiver in receivers.items():

        def arrived(receiver: SyslogReceiver = receiver) -> bool:
            got = {audit_id(m) for c in receiver.connections for m in c}
            return set(wanted) <= got

        await receiver.until(arrived, ARRIVAL_DEADLINE)
        connections = [[audit_id(m) for m in c] for c in receiver.connections]
        assert [len(c) for c in connections[:2]] == list(DROP_AFTER), (transport, connections)
        assert len(connections) == 3, (transport, connections)  # no other break happened
        for ids in connections:  # each connection carries events in order, none skipped
            assert ids == list(range(ids[0], ids[0] + len(ids))), (transport, ids)
        for before, after in zip(connections, connections[1:], strict=False):
            lost = before[-1] + 1  # the message the receiver dropped unread
            # The next connection starts at or before it: resent, never skipped.
            assert after[0] <= lost and lost in after, (transport, connections)
        # Once each, in order, from the first event on: nothing missing.
        first_seen = list(dict.fromkeys(i for ids in connections for i in ids))
        assert first_seen == sorted(first_seen)
        assert set(wanted) <= set(first_seen)
        assert first_seen == list(range(first_seen[0], first_seen[-1] + 1))
