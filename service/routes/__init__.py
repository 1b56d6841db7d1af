"""One router per resource: restore (admission), jobs, models, health (liveness, readiness,
metrics)."""
