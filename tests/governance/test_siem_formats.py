"""Each SIEM format escapes what its spec says, so values with the format's own separators parse
back whole (RFC 5424 structured data, CEF header and extension, LEEF 2.0)."""

from __future__ import annotations

from datetime import UTC, datetime

from governance.siem import octet_counted
from governance.siem_formats import EventView, render
from tests.e2e.siem_parsing import cef, leef, structured_data, syslog

NASTY = 'a|b=c\\d]e"f'
VIEW = EventView(
    audit_id=42,
    at=datetime(2026, 11, 30, 12, 0, 0, 123456, tzinfo=UTC),
    event="operation.failed",
    principal="admin",
    outcome="failed",
    operation_id="op1",
    credential_id="cr1",
    device_id="dv1",
    kind="change",
    trigger="manual",
    username=NASTY,
    device_name="web|1",
    address="10.0.0.5",
    reason="line one\nline=two",
)


def test_rfc5424_structured_data_round_trips() -> None:
    header, rest = syslog(render(VIEW, "rfc5424", hostname="h").decode())
    assert header["pri"] == str(10 * 8 + 4)  # authpriv.warning for a failure
    assert header["ts"] == "2026-11-30T12:00:00.123456Z" and header["msgid"] == "operation.failed"
    sd_id, params = structured_data(rest)
    assert sd_id == "keyturn@32473"
    assert params["username"] == NASTY and params["auditId"] == "42"
    assert params["reason"] == "line one line=two"  # one line, for receivers that split
    assert "\n" not in rest


def test_cef_escapes_header_and_extension() -> None:
    rest = syslog(render(VIEW, "cef", hostname="h").decode())[1]
    head, ext = cef(rest[2:])
    assert head == ["0", "Keyturn", "Keyturn", "0.1.0", "operation.failed", "Operation failed", "7"]
    assert ext["duser"] == NASTY and ext["dhost"] == "web|1" and ext["dst"] == "10.0.0.5"
    assert ext["reason"] == "line one\nline=two"
    assert "\n" not in rest  # one message, one line
    assert (ext["cs4Label"], ext["cs4"], ext["act"], ext["suser"]) == (
        "AuditId",
        "42",
        "change",
        "admin",
    )


def test_cef_leaves_out_dst_for_a_host_name() -> None:
    view = EventView(**{**VIEW.__dict__, "address": "web-1.example"})
    ext = cef(syslog(render(view, "cef", hostname="h").decode())[1][2:])[1]
    assert "dst" not in ext and ext["dhost"] == "web|1"


def test_leef_values_never_hold_the_delimiter() -> None:
    rest = syslog(render(VIEW, "leef", hostname="h").decode())[1]
    head, attrs = leef(rest[2:])
    assert head[:5] == ["LEEF:2.0", "Keyturn", "Keyturn", "0.1.0", "operation.failed"]
    assert attrs["accountName"] == NASTY and attrs["auditId"] == "42"
    assert attrs["reason"] == "line one line=two"


def test_octet_counting_frames_by_bytes() -> None:
    assert octet_counted("é".encode()) == b"2 \xc3\xa9"
