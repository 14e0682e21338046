"""PostgreSQL's SCRAM-SHA-256 password verifier, computed on the client (RFC 5802, RFC 7677).

``ALTER ROLE … PASSWORD 'SCRAM-SHA-256$…'`` stores the verifier as given, so the new password
itself never reaches the server, and a server that logs statements logs only the verifier.

The password is normalised with SASLprep (RFC 4013) as PostgreSQL and libpq do; like them, a
password that SASLprep refuses (prohibited or unassigned characters, bad bidirectional text, or
nothing left after mapping) is used as its raw UTF-8 bytes, and an ASCII password as it is.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import stringprep
import unicodedata

ITERATIONS = 4096  # PostgreSQL's default scram_iterations
SALT_BYTES = 16

_PROHIBITED = (
    stringprep.in_table_c12,
    stringprep.in_table_c21,
    stringprep.in_table_c22,
    stringprep.in_table_c3,
    stringprep.in_table_c4,
    stringprep.in_table_c5,
    stringprep.in_table_c6,
    stringprep.in_table_c7,
    stringprep.in_table_c8,
    stringprep.in_table_c9,
    stringprep.in_table_a1,  # unassigned code points: refused for stored strings
)


def scram_sha_256(password: str, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    """``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>``, as pg_authid stores it."""
    salt = salt if salt is not None else os.urandom(SALT_BYTES)
    salted = hashlib.pbkdf2_hmac("sha256", _prepared(password).encode(), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    return f"SCRAM-SHA-256${iterations}:{_b64(salt)}${_b64(stored_key)}:{_b64(server_key)}"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _prepared(password: str) -> str:
    if password.isascii():
        return password  # PostgreSQL's own shortcut: ASCII is used as is, controls included
    mapped = "".join(
        " " if stringprep.in_table_c12(c) else c for c in password if not stringprep.in_table_b1(c)
    )
    if not mapped:
        return password
    normalised = unicodedata.normalize("NFKC", mapped)
    if any(check(c) for c in normalised for check in _PROHIBITED):
        return password
    right_to_left = [stringprep.in_table_d1(c) for c in normalised]
    if any(right_to_left) and (
        any(stringprep.in_table_d2(c) for c in normalised)
        or not (right_to_left[0] and right_to_left[-1])
    ):
        return password
    return normalised
