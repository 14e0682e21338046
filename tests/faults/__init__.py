"""Fault tests: the worker is killed (SIGKILL) or the target misbehaves mid-change, and no
credential may be lost (DESIGN.md invariant 2)."""
