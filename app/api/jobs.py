"""HTTP adapter for jobs (to be filled by its owner)."""

from flask import Blueprint

bp = Blueprint("jobs", __name__)
