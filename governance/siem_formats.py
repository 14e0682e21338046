"""An audit event as a syslog message: RFC 5424 with structured data, CEF or LEEF 2.0.

CEF and LEEF ride in the MSG part of an RFC 5424 message, as syslog collectors expect them. Every
message carries the event's audit id (``auditId``, CEF ``cs4``/``externalId``), so a receiver can
tell a duplicate (delivery is at least once) and a gap.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from store.models import as_utc

Format = Literal["rfc5424", "cef", "leef"]
FORMATS: tuple[Format, ...] = ("rfc5424", "cef", "leef")
VENDOR = "Keyturn"
PRODUCT = "Keyturn"
VERSION = "0.1.0"
# RFC 5612's documentation enterprise number: Keyturn has no IANA number of its own.
SD_ID = "keyturn@32473"
FACILITY_AUTHPRIV = 10
APP_NAME = "keyturn"
UNHAPPY = ("failed", "refused")
LEEF_DELIMITER = "^"


@dataclass(frozen=True)
class EventView:
    """An audit event with the names a SIEM shows (the managed account, the device)."""

    audit_id: int
    at: datetime
    event: str
    principal: str
    outcome: str
    operation_id: str | None
    credential_id: str | None
    device_id: str | None
    kind: str | None  # the operation's kind: change, verify, reconcile
    trigger: str | None
    username: str | None  # the managed account
    device_name: str | None
    address: str | None
    reason: str | None


def render(view: EventView, fmt: Format, hostname: str | None = None) -> bytes:
    """The whole syslog message, without transport framing."""
    host = hostname or socket.gethostname() or "-"
    severity = 4 if view.outcome in UNHAPPY else 5  # warning / notice
    timestamp = as_utc(view.at).isoformat(timespec="microseconds").replace("+00:00", "Z")
    header = f"<{FACILITY_AUTHPRIV * 8 + severity}>1 {timestamp} {host} {APP_NAME} - "
    msgid = view.event[:32]
    if fmt == "rfc5424":
        summary = f"{view.event} {view.outcome}" + (f": {view.reason}" if view.reason else "")
        summary = _one_line(summary)
        return f"{header}{msgid} {_structured_data(view)} {summary}".encode()
    body = _cef(view) if fmt == "cef" else _leef(view)
    return f"{header}{msgid} - {body}".encode()


def _fields(view: EventView) -> list[tuple[str, str | int | None]]:
    return [
        ("auditId", view.audit_id),
        ("event", view.event),
        ("principal", view.principal),
        ("outcome", view.outcome),
        ("operationId", view.operation_id),
        ("credentialId", view.credential_id),
        ("deviceId", view.device_id),
        ("kind", view.kind),
        ("trigger", view.trigger),
        ("username", view.username),
        ("device", view.device_name),
        ("address", view.address),
        ("reason", view.reason),
    ]


def _structured_data(view: EventView) -> str:
    params = " ".join(
        f'{name}="{_sd_escape(str(value))}"' for name, value in _fields(view) if value is not None
    )
    return f"[{SD_ID} {params}]"


def _sd_escape(value: str) -> str:
    """RFC 5424 §6.3.3: '"', '\\' and ']' are escaped in PARAM-VALUE; a line break becomes a
    space, so a message stays one line for receivers that split on them."""
    value = _one_line(value)
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _one_line(value: str) -> str:
    return value.replace("\r\n", " ").replace("\n", " ").replace("\r", " ")


def _cef(view: EventView) -> str:
    severity = 7 if view.outcome in UNHAPPY else 3
    header = "|".join(
        _cef_header(part)
        for part in (VENDOR, PRODUCT, VERSION, view.event, _title(view.event), str(severity))
    )
    extension: list[tuple[str, str | int | None]] = [
        ("rt", int(as_utc(view.at).timestamp() * 1000)),
        ("act", view.kind),
        ("duser", view.username),
        ("dhost", view.device_name),
        ("dst", view.address if view.address and _is_ip(view.address) else None),
        ("suser", view.principal),
        ("outcome", view.outcome),
        ("reason", view.reason),
        ("externalId", view.audit_id),
        ("cs1Label", "Operation"),
        ("cs1", view.operation_id),
        ("cs2Label", "Credential"),
        ("cs2", view.credential_id),
        ("cs3Label", "Device"),
        ("cs3", view.device_id),
        ("cs4Label", "AuditId"),
        ("cs4", view.audit_id),
        ("cs5Label", "Trigger"),
        ("cs5", view.trigger),
    ]
    pairs = " ".join(f"{k}={_cef_value(str(v))}" for k, v in extension if v is not None)
    return f"CEF:0|{header}|{pairs}"


def _cef_header(value: str) -> str:
    """CEF header fields escape '\\' and '|'."""
    return value.replace("\\", "\\\\").replace("|", "\\|")


def _cef_value(value: str) -> str:
    """CEF extension values escape '\\' and '=', and write line breaks as \\n and \\r."""
    return value.replace("\\", "\\\\").replace("=", "\\=").replace("\n", "\\n").replace("\r", "\\r")


def _leef(view: EventView) -> str:
    """LEEF 2.0 with a '^' delimiter, declared in the header: a tab, LEEF's default, is
    rewritten by syslog relays (rsyslog escapes control characters as #011)."""
    attributes: list[tuple[str, str | int | None]] = [
        ("devTime", as_utc(view.at).strftime("%b %d %Y %H:%M:%S.%f")[:-3] + " UTC"),
        ("devTimeFormat", "MMM dd yyyy HH:mm:ss.SSS z"),
        ("cat", view.event.split(".")[0]),
        ("sev", 7 if view.outcome in UNHAPPY else 3),
        ("usrName", view.principal),
        ("accountName", view.username),
        ("dst", view.address if view.address and _is_ip(view.address) else None),
        ("dstHostName", view.device_name),
        ("action", view.kind),
        ("outcome", view.outcome),
        ("reason", view.reason),
        ("auditId", view.audit_id),
        ("operationId", view.operation_id),
        ("credentialId", view.credential_id),
        ("deviceId", view.device_id),
        ("trigger", view.trigger),
    ]
    pairs = LEEF_DELIMITER.join(
        f"{k}={_leef_value(str(v))}" for k, v in attributes if v is not None
    )
    header = "|".join(_leef_value(p).replace("|", " ") for p in (VENDOR, PRODUCT, VERSION))
    return f"LEEF:2.0|{header}|{_leef_value(view.event).replace('|', ' ')}|{LEEF_DELIMITER}|{pairs}"


def _leef_value(value: str) -> str:
    """LEEF has no escapes: the delimiter and line breaks in a value become spaces."""
    for char in (LEEF_DELIMITER, "\t", "\n", "\r"):
        value = value.replace(char, " ")
    return value


def _title(event: str) -> str:
    return event.replace(".", " ").replace("_", " ").capitalize()


def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True
