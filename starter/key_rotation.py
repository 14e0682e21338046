"""``keyturn rotate-key``: a new master key for everything new, and every secret re-encrypted.

With the keys in the master key file, a new key goes at the top of it (keyturn/keyring.py):
running workers and APIs read the file again when it changes, so from that moment they write
with the new key, while the older keys below it still decrypt the payloads of workflows started
before (the payload codec accepts every key of the ring). Then every secret version is sealed
again with the new key, so the store holds no ciphertext of the older ones. With the keys in
KEYTURN_MASTER_KEY (``NEW,OLD``, newest first), the operator has put the new key there and
restarted every process; the command re-encrypts.

The older keys stay in the ring until ``keyturn rotate-key --forget-old``, which removes them
once no workflow open in Temporal holds a payload they sealed.
"""

from __future__ import annotations

from dataclasses import dataclass

from temporalio.api.common.v1 import Payload
from temporalio.client import Client

from keyturn import keyring
from keyturn.codec import PURPOSE as PAYLOADS
from keyturn.settings import Settings
from store.engine import make_engine
from store.vault import Vault, reencrypt_all


class RotationRefused(Exception):
    """Printed as ``keyturn rotate-key: <message>``; exit status 1."""


@dataclass(frozen=True)
class Rotation:
    key_id: str  # the newest key's id for secrets (SecretVersion.key_id)
    reencrypted: int  # secret versions sealed again with it
    keys: int  # keys in the ring, the newest included

    def __str__(self) -> str:
        older = self.keys - 1
        return (
            f"master key {self.key_id} is the newest; {self.reencrypted} secret versions "
            f"re-encrypted with it; {older} older key{'s' if older != 1 else ''} kept for the "
            "payloads of workflows started before (keyturn rotate-key --forget-old removes them "
            "once those have ended)"
        )


def rotate(settings: Settings) -> Rotation:
    path = settings.master_key_path
    if path is not None:
        keyring.add_newest(path)
        settings.keyring.refresh(force=True)
    elif len(settings.keyring.keys) < 2:
        raise RotationRefused(
            "KEYTURN_MASTER_KEY holds one key: put a new one before it (NEW,OLD: base64 of 32 "
            "bytes each), restart every Keyturn process with that, then run this again"
        )
    count = _reencrypt(settings)
    return Rotation(Vault(settings.keyring).newest_key_id, count, len(settings.keyring.keys))


async def forget_old_keys(settings: Settings, client: Client) -> str:
    """Drop every key but the newest from the keyring file, unless a workflow still open holds
    a payload one of them sealed (its history must keep replaying). A secret version a process
    sealed with an older key while the rotation ran is sealed again first. A line that says
    what was done."""
    path = settings.master_key_path
    if path is None:
        raise RotationRefused("the keys come from KEYTURN_MASTER_KEY: keep only the newest there")
    keys = settings.keyring.keys
    newest = settings.keyring.cipher(PAYLOADS).key_id
    # This Keyturn's workflows all run on its task queue (only executor activities may use the
    # zone queues): another deployment's, sealed with other keys, is not its concern.
    query = f"ExecutionStatus = 'Running' AND TaskQueue = '{settings.task_queue}'"
    async for execution in client.list_workflows(query):
        handle = client.get_workflow_handle(execution.id, run_id=execution.run_id)
        async for event in handle.fetch_history_events():
            if sealed_by(event) - {newest}:
                raise RotationRefused(
                    f"workflow {execution.id} is still open with payloads of an older key; "
                    "run this again once it has ended"
                )
    # Versions a process wrote with an older key while the rotation ran are sealed again now.
    _reencrypt(settings)
    keyring.write(path, keys[:1])
    older = len(keys) - 1
    return f"{older} older master key{'s' if older != 1 else ''} removed from {path}"


def _reencrypt(settings: Settings) -> int:
    engine = make_engine(settings.resolved_database_url)
    try:
        return reencrypt_all(engine, Vault(settings.keyring))
    finally:
        engine.dispose()


def sealed_by(event: object) -> set[str]:
    """The ids of the keys that sealed the payloads of a history event (inputs, results,
    signals, markers, headers…): the codec names its key in each payload's metadata."""
    found: set[str] = set()

    def walk(message: object) -> None:
        if isinstance(message, Payload):
            key_id = message.metadata.get("encryption-key-id")
            if key_id:
                found.add(key_id.decode())
            return
        fields = getattr(message, "ListFields", None)
        if fields is None:
            return
        for descriptor, value in fields():
            if descriptor.is_repeated:
                items = value.values() if hasattr(value, "values") else value
                for item in items:
                    walk(item)
            else:
                walk(value)

    walk(event)
    return found
