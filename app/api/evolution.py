"""HTTP adapter for evolution (to be filled by its owner)."""

from flask import Blueprint

bp = Blueprint("evolution", __name__)
