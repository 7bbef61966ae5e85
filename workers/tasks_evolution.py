"""Celery tasks for evolution (thin adapters over app/ services; filled by its owner)."""
