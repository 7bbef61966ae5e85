"""CLM's version, importable from any layer without importing the Flask factory."""

__version__ = "3.1.0"
