"""Settings, read from the environment with the ``KEYTURN_`` prefix (pydantic-settings).

Temporal's own ``TEMPORAL_ADDRESS`` / ``TEMPORAL_NAMESPACE`` / ``TEMPORAL_API_KEY`` are honoured
too, so a worker dropped into an environment already configured for the Temporal CLI just works.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from functools import cached_property
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from keyturn.crypto import derived_token
from keyturn.keyring import Keyring, parse
from keyturn.temporal_config import ClientConnectConfig, temporal_connection
from keyturn.zones import DEFAULT_ZONE, StepQueues

MASTER_KEY_FILE = "master.key"
ADMIN_TOKEN_FILE = "admin.token"


class SiemDestination(BaseModel):
    """Where the SIEM echo sends audit events (KEYTURN_SIEM_DESTINATIONS, a JSON list)."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="udp://host:port, tcp://host:port or tls://host:port")
    format: Literal["rfc5424", "cef", "leef"] = "rfc5424"
    ca_file: Path | None = Field(default=None, description="CA bundle for tls:// (PEM)")

    @field_validator("url")
    @classmethod
    def _transport_host_port(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("udp", "tcp", "tls"):
            raise ValueError(f"{url!r}: the scheme must be udp://, tcp:// or tls://")
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or not port:
            raise ValueError(f"{url!r}: give a host and a port, e.g. tcp://siem.example:6514")
        return url


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KEYTURN_", extra="ignore")

    data_dir: Path = Path("./var")
    database_url: str | None = Field(  # may carry the database password
        default=None,
        description="SQLAlchemy URL; a SQLite file in data_dir when unset",
        repr=False,
    )

    # Temporal's connection comes from temporalio.envconfig (a profile of the TOML file named by
    # TEMPORAL_CONFIG_FILE or in the default place, TEMPORAL_PROFILE, TEMPORAL_ADDRESS,
    # TEMPORAL_NAMESPACE, TEMPORAL_API_KEY, TEMPORAL_TLS*), each KEYTURN_TEMPORAL_* on top.
    # What is used in the end: ``Settings.temporal``.
    temporal_profile: str | None = None
    temporal_address: str | None = None
    temporal_namespace: str | None = None
    temporal_api_key: str | None = Field(default=None, repr=False)
    temporal_tls: bool | None = None  # unset: the profile's; an API key implies TLS
    temporal_ui_port: int = 8233
    task_queue: str = "keyturn"

    # Secrets are kept out of repr(), which a traceback or a debug log may show.
    master_key: str | None = Field(
        default=None,
        description=(
            "base64 of 32 bytes, or several separated by commas, newest first (a keyring); "
            "otherwise read from master_key_file (one key per line, newest first)"
        ),
        repr=False,
    )
    master_key_file: Path | None = None
    admin_token: str | None = Field(default=None, repr=False)

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    zones: list[str] = Field(default_factory=lambda: [DEFAULT_ZONE])
    # Executor calls (change, probe) a worker runs at once, per zone. Each mostly waits on its
    # target; the device caps, not this, keep targets from being crowded. Temporal's default
    # (100) held a thousand operations on five hundred devices to a tenth of what the caps allow.
    max_concurrent_executor_calls: int = Field(default=1000, ge=1, le=100_000)
    # The default zone's executor steps on the main task queue, where Temporal hands a step to
    # the worker whose workflow task scheduled it, in its answer to that task (eager activity
    # execution): no dispatch by the server. Only when every worker serves the default zone
    # (set it on all of them): a worker on the main queue is handed the default zone's steps,
    # wherever it sits. Off by default: see the README for what it was measured to gain and cost.
    default_zone_on_main_queue: bool = False
    # How long a worker may go silent before Temporal gives its work to another: a worker
    # killed mid-step (OOM, a lost host) is noticed this late. It is the heartbeat timeout of
    # executor steps (a change, a probe, a task) and how long a workflow's next task waits for
    # the worker that ran its last one. Shorter notices sooner; each running step then tells
    # Temporal it is alive more often (a third of this). A workflow task the lost worker was
    # running waits for the namespace's workflow task timeout (Temporal's, 10 s by default).
    lost_worker_seconds: float = Field(default=10.0, ge=1.0, le=600.0)
    # Running workflows a worker keeps in memory (Temporal's sticky cache; its default, 1000).
    # Fewer: less memory, and a workflow evicted while its operation waits is replayed from
    # history when it next has work. Measured with 1,000 operations held at a slow target: 100
    # took the worker from 362 to 268 MiB, and ending them took twice as long.
    workflow_cache_size: int = Field(default=1000, ge=0, le=100_000)
    # How often an operation waiting for a device slot checks that every holder's workflow still
    # runs: a holder terminated from the Web UI keeps its slot this long at most. Waiters are
    # signalled when their turn comes; this is the backstop, each check a few history events.
    slot_holder_check_seconds: int = Field(default=300, ge=1, le=86_400)
    # How often each policy's expiry and verification schedules sweep for due credentials, and
    # how many credentials a sweep reads per page.
    sweep_interval_seconds: float = Field(default=60.0, ge=1.0)
    sweep_page_size: int = Field(default=200, ge=1, le=10_000)

    siem_destinations: list[SiemDestination] = Field(default_factory=list)
    codec_cors_origins: list[str] = Field(
        default_factory=list, description="Web UI origins besides the dev server's own"
    )
    worker_metrics_address: str | None = Field(
        default=None, description="host:port where a worker serves the Temporal SDK's metrics"
    )
    webhook_secret: SecretStr | None = Field(
        default=None, description="whsec_<base64>: the key that signs callbacks"
    )
    webhook_allow_http: bool = False  # http:// callbacks to loopback addresses (development)

    _temporal: ClientConnectConfig = PrivateAttr()

    @model_validator(mode="after")
    def _temporal_connection(self) -> Settings:
        self._temporal = temporal_connection(
            self.temporal_profile,
            address=self.temporal_address,
            namespace=self.temporal_namespace,
            api_key=self.temporal_api_key,
            tls=self.temporal_tls,
        )
        return self

    @model_validator(mode="after")
    def _default_zone_served(self) -> Settings:
        if self.default_zone_on_main_queue and DEFAULT_ZONE not in self.zones:
            raise ValueError(
                "KEYTURN_DEFAULT_ZONE_ON_MAIN_QUEUE needs the default zone in KEYTURN_ZONES: "
                "the main queue's workers would run its steps"
            )
        return self

    @property
    def temporal(self) -> ClientConnectConfig:
        """Everything ``Client.connect`` needs to reach Temporal (keyturn/temporal.py)."""
        return self._temporal

    @field_validator("webhook_secret")
    @classmethod
    def _webhook_secret_form(cls, secret: SecretStr | None) -> SecretStr | None:
        if secret is not None:
            webhook_key(secret.get_secret_value())  # raises, saying what is wrong
        return secret

    @property
    def webhook_key(self) -> bytes | None:
        """The HMAC key that signs callbacks: the decoded part of KEYTURN_WEBHOOK_SECRET."""
        return webhook_key(self.webhook_secret.get_secret_value()) if self.webhook_secret else None

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'keyturn.db').resolve()}"

    @cached_property
    def keyring(self) -> Keyring:
        """The master keys, newest first (keyturn/keyring.py): they encrypt secrets at rest and
        workflow payloads, and are never stored in the database."""
        if self.master_key:
            return Keyring.of(*parse(self.master_key, "KEYTURN_MASTER_KEY"))
        path = self._master_key_path()
        if not path.exists():
            raise FileNotFoundError(
                f"no master key at {path}: set KEYTURN_MASTER_KEY (base64 of 32 bytes) or "
                "KEYTURN_MASTER_KEY_FILE, or run `keyturn dev` once to generate one"
            )
        return Keyring.from_file(path)

    @property
    def master_key_bytes(self) -> bytes:
        """The newest master key: what new secrets, payloads and backups are sealed with."""
        return self.keyring.newest

    @property
    def master_key_path(self) -> Path | None:
        """The keyring file ``keyturn rotate-key`` adds a key to; None when the keys come from
        KEYTURN_MASTER_KEY (then the operator puts the new key first there)."""
        return None if self.master_key else self._master_key_path()

    def _master_key_path(self) -> Path:
        return self.master_key_file or self.data_dir / MASTER_KEY_FILE

    def ensure_local_files(self) -> None:
        """First run on embedded defaults: create data_dir (0700), a master key and an admin
        token (0600), and the SQLite store (0600; SQLite gives its journal files the same
        mode). Refuses a master key file that others than its owner may read."""
        if not self.data_dir.exists():
            self.data_dir.mkdir(parents=True, mode=0o700)
            self.data_dir.chmod(0o700)  # mkdir's mode is filtered by the umask
        if not self.master_key:
            path = self._master_key_path()
            if not path.exists():
                _write_private(path, base64.b64encode(secrets.token_bytes(32)))
            mode = path.stat().st_mode & 0o777
            if mode & 0o077:
                raise PermissionError(
                    f"the master key file {path} has mode {mode:o}: others than its owner may "
                    f"access it; make it private (chmod 600 {path}) and check who read it"
                )
        if not self.database_url:
            database = self.data_dir / "keyturn.db"
            if not database.exists():
                _write_private(database, b"")  # an empty file is an empty SQLite database
        if not self.admin_token:
            token_path = self.data_dir / ADMIN_TOKEN_FILE
            if not token_path.exists():
                _write_private(token_path, secrets.token_urlsafe(32).encode())

    @property
    def resolved_admin_token(self) -> str:
        if self.admin_token:
            return self.admin_token
        return (self.data_dir / ADMIN_TOKEN_FILE).read_text().strip()

    @property
    def codec_token(self) -> str:
        """The Temporal Web UI's token for the codec endpoints: it may decode and encode
        payloads, nothing else, so the UI's configuration never holds the admin token."""
        return derived_token(self.master_key_bytes, "temporal-ui-codec")

    @property
    def codec_ui_origins(self) -> list[str]:
        """The Web UI origins the codec answers cross-origin requests from."""
        return [
            f"http://{host}:{self.temporal_ui_port}" for host in ("127.0.0.1", "localhost")
        ] + self.codec_cors_origins

    @property
    def step_queues(self) -> StepQueues:
        return StepQueues(self.task_queue, self.default_zone_on_main_queue)

    def zone_task_queue(self, zone: str) -> str:
        return self.step_queues.of(zone)


def webhook_key(secret: str) -> bytes:
    """The key of a Standard Webhooks secret, ``whsec_<base64>``; ValueError says what is wrong."""
    prefix = "whsec_"
    if not secret.startswith(prefix):
        raise ValueError("the webhook secret must look like whsec_<base64>")
    try:
        key = base64.b64decode(secret[len(prefix) :], validate=True)
    except binascii.Error:
        raise ValueError("the part after whsec_ is not base64") from None
    if len(key) < 16:
        raise ValueError("the webhook secret must decode to at least 16 bytes")
    return key


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
