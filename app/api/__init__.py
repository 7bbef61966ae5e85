"""The HTTP API: a thin Flask adapter over app/ services."""

from __future__ import annotations

import importlib

from flask import Flask

from app.api import metrics, problems
from app.core.config import Settings, get_settings

# One blueprint module per owner; each exposes `bp`.
BLUEPRINT_MODULES = [
    "app.api.system",
    "app.api.models",
    "app.api.jobs",
    "app.api.continuous",
    "app.api.evolution",
    "app.api.live",
    "app.api.feeds",
    "app.api.instruments",
    "app.ui",  # the web console (HTML), /ui/
]


def build_app(settings: Settings | None = None, *, check_schema: bool = True) -> Flask:
    settings = settings or get_settings()
    if check_schema:
        from app.migrate import assert_at_head  # lazy: start-up (alembic, ~0.5 s)

        assert_at_head(settings.database_url)
    app = Flask("clm")
    app.config["CLM_SETTINGS"] = settings
    app.json.sort_keys = False  # type: ignore[attr-defined]
    problems.init_app(app)
    metrics.init_app(app)
    for module_name in BLUEPRINT_MODULES:
        module = importlib.import_module(module_name)
        app.register_blueprint(module.bp)
        init = getattr(module, "init_app", None)
        if init is not None:
            init(app)
    return app
