"""SQLAlchemy models for jobs (filled by its owner)."""
