"""One way to reach Temporal: the client every process (worker, starter, CLI) uses."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.common import SearchAttributeKey

from keyturn.codec import data_converter
from keyturn.settings import Settings

# Search attributes make operations findable in the Web UI ("KeyturnCredentialId = '…'").
SA_CREDENTIAL = SearchAttributeKey.for_keyword("KeyturnCredentialId")
SA_DEVICE = SearchAttributeKey.for_keyword("KeyturnDeviceId")
SA_KIND = SearchAttributeKey.for_keyword("KeyturnOperationKind")
SA_TRIGGER = SearchAttributeKey.for_keyword("KeyturnTrigger")
SA_STATUS = SearchAttributeKey.for_keyword("KeyturnStatus")
SEARCH_ATTRIBUTES = (SA_CREDENTIAL, SA_DEVICE, SA_KIND, SA_TRIGGER, SA_STATUS)


async def connect(settings: Settings) -> Client:
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        api_key=settings.temporal_api_key,
        tls=settings.temporal_tls,
        data_converter=data_converter(settings.master_key_bytes),
    )
