"""HTTP adapter for continuous (to be filled by its owner)."""

from flask import Blueprint

bp = Blueprint("continuous", __name__)
