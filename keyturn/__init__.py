"""Keyturn's shared runtime pieces: settings, the Temporal connection and the payload codec."""
