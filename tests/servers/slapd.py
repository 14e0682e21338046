"""A real OpenLDAP ``slapd`` on a loopback port, and throwaway directory users to bind as.

The system slapd (the Debian package's) is never used: each Slapd has its own slapd.conf, an
mdb database and a log in a temp dir, and listens on a free 127.0.0.1 port. The directory has:

- suffix ``dc=keyturn,dc=test`` with ``ou=people`` (users, inetOrgPerson) and ``ou=policies``;
- the rootdn ``cn=admin,dc=keyturn,dc=test`` (ADMIN_DN / ADMIN_PASSWORD), the "auth account";
- users may write their own userPassword (``by self write``), bind anonymously (``by anonymous
  auth``), and nobody else may read it; passwords are stored ``{SSHA}``;
- the ppolicy overlay with a default policy (MIN_LENGTH, quality checked), so a too short new
  password is refused with constraintViolation, as a real directory's policy would, and with
  pwdLockout, so an entry an administrator locks (pwdAccountLockedTime) cannot bind;
- a tiny schema with Active-Directory-like ``unicodePwd`` (octet string) and
  ``userAccountControl`` (integer) attributes, so the AD templates' exact modify requests can be
  sent to a real server and read back (a stand-in: no AD runs here, and slapd enforces neither);
- TLS with a certificate of a throwaway CA: StartTLS on ``port``, LDAPS on ``ldaps_port``
  (``client_options`` are the device options of a verified StartTLS session).
"""

from __future__ import annotations

import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import ldap3
from ldap3.core.exceptions import LDAPException
from ldap3.utils.dn import escape_rdn

from tests.servers import tls
from tests.servers.ports import free_port

SLAPD = "/usr/sbin/slapd"
SCHEMA_DIR = Path("/etc/ldap/schema")
MODULE_DIR = Path("/usr/lib/ldap")
START_DEADLINE = 20.0
SUFFIX = "dc=keyturn,dc=test"
PEOPLE = f"ou=people,{SUFFIX}"
ADMIN_DN = f"cn=admin,{SUFFIX}"
ADMIN_PASSWORD = "Root pw;'\"\\ é"
MIN_LENGTH = 4  # ppolicy pwdMinLength: shorter new passwords are refused (constraintViolation)
AD_OBJECT_CLASS = "keyturnAdAccount"

_AD_SCHEMA = """\
attributetype ( 1.3.6.1.4.1.32473.1.1.1 NAME 'unicodePwd'
    DESC 'Active Directory password: UTF-16-LE, double-quoted'
    EQUALITY octetStringMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.40 SINGLE-VALUE )
attributetype ( 1.3.6.1.4.1.32473.1.1.2 NAME 'userAccountControl'
    DESC 'Active Directory account flags (a stand-in: slapd stores them, enforces nothing)'
    EQUALITY integerMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.27 SINGLE-VALUE )
objectclass ( 1.3.6.1.4.1.32473.1.2.1 NAME 'keyturnAdAccount' AUXILIARY
    MAY ( unicodePwd $ userAccountControl ) )
"""


def _config(directory: Path, password_hash: str, files: tls.TlsFiles) -> str:
    schemas = "\n".join(
        f"include {SCHEMA_DIR / name}.schema" for name in ("core", "cosine", "inetorgperson", "nis")
    )
    return f"""\
{schemas}
include {directory / "ad.schema"}
modulepath {MODULE_DIR}
moduleload back_mdb
moduleload ppolicy
pidfile {directory / "slapd.pid"}
argsfile {directory / "slapd.args"}
password-hash {{SSHA}}
TLSCACertificateFile {files.ca}
TLSCertificateFile {files.cert}
TLSCertificateKeyFile {files.key}

database mdb
maxsize 33554432
suffix "{SUFFIX}"
rootdn "{ADMIN_DN}"
rootpw {password_hash}
directory {directory / "db"}
overlay ppolicy
ppolicy_default "cn=default,ou=policies,{SUFFIX}"
access to attrs=userPassword by self write by anonymous auth by * none
access to * by * read
"""


class Slapd:
    """``slapd -d 0`` (foreground) with its own config and database. ``start_seconds`` is how
    long the last start took until the server answered a bind."""

    def __init__(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="keyturn-slapd-"))
        (self._dir / "db").mkdir()
        (self._dir / "ad.schema").write_text(_AD_SCHEMA)
        hashed = subprocess.run(
            ["slappasswd", "-h", "{SSHA}", "-s", ADMIN_PASSWORD],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        self.tls = tls.issue(self._dir / "tls")
        (self._dir / "slapd.conf").write_text(_config(self._dir, hashed, self.tls))
        self._port: int | None = None
        self._ldaps_port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self.start_seconds = 0.0

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("slapd was never started")
        return self._port

    @property
    def ldaps_port(self) -> int:
        if self._ldaps_port is None:
            raise RuntimeError("slapd was never started")
        return self._ldaps_port

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}/"

    def client_options(self) -> dict[str, object]:
        """Device options of a verified StartTLS session (on ``port``)."""
        return {"start_tls": True, "ca_file": str(self.tls.ca)}

    def start(self) -> None:
        self._port = self._port or free_port()
        self._ldaps_port = self._ldaps_port or free_port()
        urls = f"{self.url} ldaps://127.0.0.1:{self._ldaps_port}/"
        began = time.monotonic()
        with (self._dir / "slapd.log").open("ab") as log:
            self._process = subprocess.Popen(
                [SLAPD, "-h", urls, "-f", str(self._dir / "slapd.conf"), "-d", "0"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = began + START_DEADLINE
        while not self._answers():
            if self._process.poll() is not None:
                raise RuntimeError(f"slapd exited at start: {self._log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"slapd did not answer within {START_DEADLINE}s")
            time.sleep(0.02)
        self.start_seconds = time.monotonic() - began
        self._populate()

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None

    def pause(self) -> None:
        """SIGSTOP: the kernel still accepts connections, but nothing answers (a hung server).
        Returns once every thread of slapd has stopped: the signal is delivered to each thread
        on its own, and one still running could answer a request sent right after."""
        if self._process is None:
            return
        self._process.send_signal(signal.SIGSTOP)
        tasks = Path(f"/proc/{self._process.pid}/task")
        deadline = time.monotonic() + 10
        while not all(_stopped(stat) for stat in tasks.glob("*/stat")):
            if time.monotonic() > deadline:
                raise RuntimeError("slapd did not stop within 10 s of SIGSTOP")
            time.sleep(0.005)

    def resume(self) -> None:
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def admin(self) -> ldap3.Connection:
        """A bound rootdn connection (bypasses ACLs): to set up and inspect the directory."""
        server = ldap3.Server("127.0.0.1", port=self.port, connect_timeout=5)
        return ldap3.Connection(
            server, ADMIN_DN, ADMIN_PASSWORD, auto_bind=True, receive_timeout=10
        )

    def _answers(self) -> bool:
        try:
            self.admin().unbind()
        except LDAPException:
            return False
        return True

    def _populate(self) -> None:
        conn = self.admin()
        try:
            if conn.search(SUFFIX, "(objectClass=*)", search_scope=ldap3.BASE):
                return  # a restart on the same database
            entries: list[tuple[str, list[str], dict[str, object]]] = [
                (SUFFIX, ["dcObject", "organization"], {"dc": "keyturn", "o": "Keyturn"}),
                (PEOPLE, ["organizationalUnit"], {"ou": "people"}),
                (f"ou=policies,{SUFFIX}", ["organizationalUnit"], {"ou": "policies"}),
                (
                    f"cn=default,ou=policies,{SUFFIX}",
                    ["organizationalRole", "pwdPolicy"],
                    {
                        "cn": "default",
                        "pwdAttribute": "userPassword",
                        "pwdMinLength": str(MIN_LENGTH),
                        "pwdCheckQuality": "2",
                        # An administrator's pwdAccountLockedTime locks an entry only under a
                        # policy with pwdLockout; no pwdMaxFailure, so failed binds lock nothing.
                        "pwdLockout": "TRUE",
                    },
                ),
            ]
            for dn, classes, attributes in entries:
                if not conn.add(dn, classes, attributes):
                    raise RuntimeError(f"cannot add {dn}: {conn.result}")
        finally:
            conn.unbind()

    def _log_tail(self) -> str:
        try:
            return (self._dir / "slapd.log").read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"


class Users:
    """Throwaway entries under ou=people; removed by ``cleanup()``.

    Passwords go to ldap3 as UTF-8 bytes, like the executor sends them: as text ldap3 would
    SASLprep them (and refuse a tab), so the test would not check the exact bytes."""

    def __init__(self, slapd: Slapd) -> None:
        self._slapd = slapd
        self._created: list[str] = []

    @staticmethod
    def dn(username: str) -> str:
        return f"uid={escape_rdn(username)},{PEOPLE}"

    def create(self, password: str, username: str | None = None, ad: bool = False) -> str:
        username = username or f"kt{secrets.token_hex(4)}"
        dn = self.dn(username)
        classes = ["inetOrgPerson", *([AD_OBJECT_CLASS] if ad else [])]
        conn = self._slapd.admin()
        try:
            # A plain userPassword add would be stored as given; the password-modify operation
            # hashes it ({SSHA}), as a real admin tool would.
            if not conn.add(dn, classes, {"uid": username, "cn": username, "sn": username}):
                raise RuntimeError(f"cannot add {dn}: {conn.result}")
            self._created.append(dn)
            if not conn.extend.standard.modify_password(dn, None, password.encode()):
                raise RuntimeError(f"cannot set the password of {dn}: {conn.result}")
        finally:
            conn.unbind()
        return username

    def password_works(self, username: str, password: str) -> bool:
        return self.bind_works(self.dn(username), password)

    def bind_works(self, dn: str, password: str) -> bool:
        server = ldap3.Server("127.0.0.1", port=self._slapd.port, connect_timeout=5)
        conn = ldap3.Connection(server, dn, password.encode(), receive_timeout=10)
        try:
            ok = bool(conn.bind())
            if not ok and conn.result["result"] != 49:
                raise RuntimeError(f"bind as {dn} failed unexpectedly: {conn.result}")
            return ok
        finally:
            conn.unbind()

    def password_hash(self, username: str) -> bytes:
        """The stored userPassword value (to prove something did not change)."""
        return self.attribute(self.dn(username), "userPassword")

    def attribute(self, dn: str, name: str) -> bytes:
        conn = self._slapd.admin()
        try:
            if not conn.search(dn, "(objectClass=*)", search_scope=ldap3.BASE, attributes=[name]):
                raise RuntimeError(f"cannot read {dn}: {conn.result}")
            values = conn.entries[0].entry_raw_attributes.get(name) or [b""]
            return bytes(values[0])
        finally:
            conn.unbind()

    def entry_dns(self) -> list[str]:
        conn = self._slapd.admin()
        try:
            conn.search(SUFFIX, "(objectClass=*)", search_scope=ldap3.SUBTREE, attributes=[])
            return sorted(entry.entry_dn.lower() for entry in conn.entries)
        finally:
            conn.unbind()

    def cleanup(self) -> None:
        conn = self._slapd.admin()
        try:
            for dn in reversed(self._created):
                conn.delete(dn)
        finally:
            conn.unbind()
        self._created.clear()


# The bodies of the fixtures that the executor tests and the end-to-end tests each declare (at
# their own scope).


@contextmanager
def running_slapd() -> Iterator[Slapd]:
    server = Slapd()
    server.start()
    try:
        yield server
    finally:
        server.close()


@contextmanager
def users_on(server: Slapd) -> Iterator[Users]:
    users = Users(server)
    try:
        yield users
    finally:
        users.cleanup()


def _stopped(stat: Path) -> bool:
    """Whether the thread whose /proc stat file this is has stopped (state T); a thread that
    has exited since the listing counts as stopped."""
    try:
        text = stat.read_text()
    except OSError:
        return True
    return text[text.rindex(")") + 2] == "T"  # the state follows the command's closing paren
