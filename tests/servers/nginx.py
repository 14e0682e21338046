"""A real TLS server to publish certificates to: Debian's nginx on a loopback port, with its own
config, pid, logs and temp files in a temp dir, run by a throwaway local account that Keyturn
logs in as over SSH (so that account may write the certificate files and run
``nginx -s reload``). It starts with a self-signed placeholder certificate."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.servers.ports import free_port
from tests.servers.sshd import Users

NGINX = "/usr/sbin/nginx"
START_DEADLINE = 15.0


class Nginx:
    def __init__(self, users: Users) -> None:
        self.password = secrets.token_urlsafe(18)
        self.user = users.create(self.password)
        self.dir = Path(tempfile.mkdtemp(prefix="keyturn-nginx-"))
        self.port = free_port()
        self.cert_path = self.dir / "site.pem"
        self.key_path = self.dir / "site.key"
        self.config = self.dir / "nginx.conf"
        self.error_log = self.dir / "error.log"
        self._pid_file = self.dir / "nginx.pid"

    @property
    def reload_command(self) -> str:
        return f"{NGINX} -p {self.dir} -c {self.config} -e {self.error_log} -s reload"

    def start(self) -> None:
        self._placeholder_certificate()
        (self.dir / "tmp").mkdir()
        self.config.write_text(
            f"""
pid {self._pid_file};
error_log {self.error_log} info;
worker_processes 1;
events {{ worker_connections 64; }}
http {{
    access_log {self.dir / "access.log"};
    client_body_temp_path {self.dir / "tmp"};
    proxy_temp_path {self.dir / "tmp"};
    fastcgi_temp_path {self.dir / "tmp"};
    uwsgi_temp_path {self.dir / "tmp"};
    scgi_temp_path {self.dir / "tmp"};
    server {{
        listen 127.0.0.1:{self.port} ssl;
        server_name localhost;
        ssl_certificate {self.cert_path};
        ssl_certificate_key {self.key_path};
        location / {{ return 200 "keyturn test site\\n"; }}
    }}
}}
"""
        )
        for path in self.dir.rglob("*"):
            shutil.chown(path, self.user, self.user)
        shutil.chown(self.dir, self.user, self.user)
        subprocess.run(
            ["runuser", "-u", self.user, "--", NGINX, "-p", str(self.dir), "-c",
             str(self.config), "-e", str(self.error_log)],
            check=True, capture_output=True,
        )  # fmt: skip
        deadline = time.monotonic() + START_DEADLINE
        while not self._pid():
            if time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not start:\n{self.log_tail()}")
            time.sleep(0.05)

    def _pid(self) -> int | None:
        try:
            return int(self._pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def _placeholder_certificate(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "placeholder")])
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
            .sign(key, hashes.SHA256())
        )  # fmt: skip
        self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.key_path.write_bytes(
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
        )  # fmt: skip
        self.key_path.chmod(0o600)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.error_log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def close(self) -> None:
        pid = self._pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGQUIT)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.05)
        shutil.rmtree(self.dir, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
