"""HTTP adapter for models (to be filled by its owner)."""

from flask import Blueprint

bp = Blueprint("models", __name__)
