"""Celery tasks: thin adapters that call app/ services by id. (Filled by the jobs pipeline.)"""
