"""Workflows: orchestration only, deterministic, no I/O (DESIGN.md invariant 3)."""
