"""The CLM Python client (`from clm.client import Client`): what a script does with the
CLM HTTP API, without writing the calls by hand. Standard library only; it never imports
the server's `app` package."""

from clm.client import ApiError, Client, Job, Page, Version

__all__ = ["ApiError", "Client", "Job", "Page", "Version"]
