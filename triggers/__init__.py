"""Automatic triggers: what makes Keyturn act without being called by hand.

- A policy's expiry and verification sweeps run as Temporal Schedules (``schedules``), one per
  policy and purpose, each run a sweep workflow that pages through the due credentials
  (``due``) and requests their operations through ``requesting``, like every other request.
- A view or a session's end asks for a change later (``delayed``): a workflow that waits
  without holding the credential's gate, deduplicated by its id.
- Every automatic trigger acts only inside the policy's change window (``window``).
"""
