"""A real ``rsyslogd`` on loopback ports of its own: UDP, TCP and TLS inputs, each writing the
raw messages it receives, one a line, to its own file.

The system rsyslog (the Debian package's) is never used: each Rsyslog has its own config, work
directory, pid file and a throwaway CA and server certificate (for 127.0.0.1) in a temp dir.
``stop()`` and ``start()`` take it down and bring it back on the same ports, to see what a
sender does while its receiver is away.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.servers.ports import free_port

RSYSLOGD = "/usr/sbin/rsyslogd"
START_DEADLINE = 20.0
TRANSPORTS = ("udp", "tcp", "tls")


def _certificates(directory: Path) -> None:
    """ca.pem, and server.pem/server.key for 127.0.0.1 signed by it."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keyturn test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    (directory / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (directory / "server.pem").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    (directory / "server.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )


class Rsyslog:
    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="keyturn-rsyslog-"))
        self.ports = {
            "udp": free_port(socket.SOCK_DGRAM),
            "tcp": free_port(socket.SOCK_STREAM),
            "tls": free_port(socket.SOCK_STREAM),
        }
        self.ca_file = self.directory / "ca.pem"
        self._process: subprocess.Popen[bytes] | None = None
        _certificates(self.directory)
        (self.directory / "work").mkdir()
        (self.directory / "rsyslog.conf").write_text(self._config())

    def url(self, transport: str) -> str:
        return f"{transport}://127.0.0.1:{self.ports[transport]}"

    def received(self, transport: str) -> list[str]:
        """Every message received so far over ``transport``, in arrival order."""
        path = self.directory / f"{transport}.log"
        if not path.exists():
            return []
        return [line for line in path.read_text(errors="replace").split("\n") if line]

    def _config(self) -> str:
        d = self.directory
        rules = "\n".join(
            f'ruleset(name="{t}") {{ action(type="omfile" file="{d / f"{t}.log"}" '
            f'template="raw") }}'
            for t in TRANSPORTS
        )
        return f"""\
global(workDirectory="{d / "work"}" maxMessageSize="64k"
       defaultNetstreamDriverCAFile="{d / "ca.pem"}"
       defaultNetstreamDriverCertFile="{d / "server.pem"}"
       defaultNetstreamDriverKeyFile="{d / "server.key"}")
module(load="imudp")
module(load="imtcp")
template(name="raw" type="string" string="%rawmsg%\\n")
input(type="imudp" address="127.0.0.1" port="{self.ports["udp"]}" ruleset="udp")
input(type="imtcp" address="127.0.0.1" port="{self.ports["tcp"]}" ruleset="tcp")
input(type="imtcp" address="127.0.0.1" port="{self.ports["tls"]}" ruleset="tls"
      streamDriver.name="ossl" streamDriver.mode="1" streamDriver.authMode="anon")
{rules}
"""

    def start(self) -> None:
        if self._process is not None and self._process.poll() is None:
            return
        check = subprocess.run(
            [RSYSLOGD, "-N1", "-f", str(self.directory / "rsyslog.conf")],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert check.returncode == 0, check.stdout + check.stderr
        self._process = subprocess.Popen(
            [
                RSYSLOGD, "-n", "-f", str(self.directory / "rsyslog.conf"),
                "-i", str(self.directory / "rsyslogd.pid"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(self.directory / "rsyslogd.err", "ab"),  # noqa: SIM115
        )  # fmt: skip
        deadline = time.monotonic() + START_DEADLINE
        while not all(self._listening(t) for t in ("tcp", "tls")):
            if self._process.poll() is not None:
                raise RuntimeError((self.directory / "rsyslogd.err").read_text())
            assert time.monotonic() < deadline, "rsyslogd did not start listening"
            time.sleep(0.05)

    def _listening(self, transport: str) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.ports[transport]), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        self._process.wait(timeout=20)
        self._process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
