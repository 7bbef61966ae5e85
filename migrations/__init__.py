"""Alembic migrations: the only way CLM's schema changes."""
