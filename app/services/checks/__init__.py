"""The checks of production models, as services (take a session, flush, never commit):
drift (`drift`), regimes and regime champions (`regime`), paper and live performance
(`performance`). Each records a pending trigger decision when it finds a reason to
retrain; the periodic flows (app.flows.checks) and the live-report flow
(app.flows.live) arbitrate it."""
