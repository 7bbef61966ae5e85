"""SQLAlchemy models for evolution (filled by its owner)."""
