"""Alembic's environment for the store: ``env.py`` and one revision per schema step."""
