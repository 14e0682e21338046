"""Executors: one plugin per protocol, found through the ``keyturn.executors`` entry points."""
