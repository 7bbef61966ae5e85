"""Celery tasks for continuous (thin adapters over app/ services; filled by its owner)."""
