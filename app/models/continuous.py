"""SQLAlchemy models for continuous (filled by its owner)."""
