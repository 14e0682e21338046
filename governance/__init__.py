"""Telling the world what Keyturn did: the SIEM echo of the audit trail, callbacks to the
requesting module, metrics and traces. Stands on the store and the workflow contracts."""
