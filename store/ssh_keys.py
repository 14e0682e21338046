"""SSH key pairs as secrets: the private key is the secret (OpenSSH format), the public key is
derived from it whenever it is needed, so the vault stores one value per version, as for a
password.

Only unencrypted OpenSSH private keys are taken: Keyturn must be able to log in with the key
without asking anyone for a passphrase, and the vault encrypts it at rest already.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncssh

KEY_TYPES = {"ed25519": "ssh-ed25519", "rsa": "ssh-rsa"}
RSA_BITS = (2048, 8192)  # the sizes a policy may ask for (inclusive)
DEFAULT_RSA_BITS = 3072
MAX_PRIVATE_KEY = 16384  # characters: an 8192-bit RSA key in OpenSSH format is about 6 500
_OPENSSH_HEADER = "-----BEGIN OPENSSH PRIVATE KEY-----"


class KeyProblem(ValueError):
    """A private key Keyturn cannot use. The message never quotes the key."""


def key_bits_problem(key_type: str, key_bits: int | None) -> str | None:
    """Why a policy's key_type/key_bits cannot make keys, or None."""
    if key_type not in KEY_TYPES:
        return f"key_type must be one of {', '.join(sorted(KEY_TYPES))}"
    if key_type == "ed25519":
        if key_bits not in (None, 256):
            return "ed25519 keys have a fixed size: leave key_bits null (or 256)"
        return None
    if key_bits is not None and not RSA_BITS[0] <= key_bits <= RSA_BITS[1]:
        return f"rsa key_bits must be between {RSA_BITS[0]} and {RSA_BITS[1]}"
    if key_bits is not None and key_bits % 8:
        return "rsa key_bits must be a multiple of 8"
    return None


def generate_private_key(key_type: str, key_bits: int | None) -> str:
    """A new key pair's private key, in OpenSSH format (unencrypted: the vault encrypts it)."""
    problem = key_bits_problem(key_type, key_bits)
    if problem:
        raise KeyProblem(problem)
    import asyncssh  # the SSH library, in the API too, only where a key is made or read

    if key_type == "rsa":
        key = asyncssh.generate_private_key("ssh-rsa", key_size=key_bits or DEFAULT_RSA_BITS)
    else:
        key = asyncssh.generate_private_key(KEY_TYPES[key_type])
    return str(key.export_private_key("openssh").decode())


def parse_private_key(text: str) -> asyncssh.SSHKey:
    """The key, or KeyProblem saying what is wrong with it (never quoting it)."""
    if not text.strip().startswith(_OPENSSH_HEADER):
        raise KeyProblem(
            f"not an OpenSSH private key (it must start with {_OPENSSH_HEADER!r}; "
            "`ssh-keygen -p -f KEY` rewrites a PEM key in that format)"
        )
    import asyncssh

    try:
        return asyncssh.import_private_key(text.strip() + "\n")
    except asyncssh.KeyImportError as exc:
        if "passphrase" in str(exc).lower():
            raise KeyProblem(
                "the private key is encrypted with a passphrase: Keyturn logs in unattended, "
                "so give it unencrypted (`ssh-keygen -p -N '' -f KEY`); the vault encrypts it"
            ) from None
        raise KeyProblem("the private key does not parse as an OpenSSH key") from None
    except (ValueError, TypeError):  # a malformed body can surface as these too
        raise KeyProblem("the private key does not parse as an OpenSSH key") from None


def public_key_line(private_key: str, comment: str = "") -> str:
    """The ``authorized_keys`` line of a private key's public half: ``type base64 [comment]``."""
    key = parse_private_key(private_key)
    algorithm, blob = key.export_public_key("openssh").decode().split()[:2]
    return f"{algorithm} {blob} {comment}".strip()
