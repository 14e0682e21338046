"""The sealed backup file: what opens it, and that nothing else does."""

from __future__ import annotations

import secrets

import pytest

from keyturn.backup_file import MAGIC, BackupContents, BackupUnreadable, open_sealed, seal

CONTENTS = BackupContents("sqlite", b"snapshot bytes", secrets.token_bytes(32), 3, "2026-11-30")
PASSPHRASE = "a passphrase for tests"


def test_the_passphrase_opens_what_it_sealed() -> None:
    assert open_sealed(seal(CONTENTS, PASSPHRASE), PASSPHRASE) == CONTENTS


def test_two_seals_of_the_same_contents_differ() -> None:
    assert seal(CONTENTS, PASSPHRASE) != seal(CONTENTS, PASSPHRASE)  # salt and nonce are fresh


@pytest.mark.parametrize(
    ("alter", "says"),
    [
        (lambda b: b, "wrong passphrase"),  # opened with another passphrase below
        (lambda b: b[:-1] + bytes([b[-1] ^ 1]), "wrong passphrase, or the backup file is damaged"),
        (lambda b: b.replace(b'"n": 32768', b'"n": 16384'), "wrong passphrase"),
        (lambda b: b"not a backup", "not a Keyturn backup file"),
        (lambda b: MAGIC + b"{no newline", "no header"),
        (lambda b: MAGIC + b"{}\n" + b[len(MAGIC) :], "its header"),
    ],
)
def test_a_damaged_file_or_a_wrong_passphrase_opens_nothing(alter: object, says: str) -> None:
    sealed = seal(CONTENTS, PASSPHRASE)
    altered = alter(sealed)  # type: ignore[operator]
    passphrase = "another passphrase" if altered == sealed else PASSPHRASE
    with pytest.raises(BackupUnreadable, match=says):
        open_sealed(altered, passphrase)
