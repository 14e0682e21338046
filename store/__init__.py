"""The store: SQLModel tables, the engine, secrets encrypted at rest, password generation."""
