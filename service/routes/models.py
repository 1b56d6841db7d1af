"""The models workers serve."""

from __future__ import annotations

from collections import Counter

from fastapi import APIRouter, Depends

from service.auth import caller
from service.deps import StoreDep
from service.schemas import Model

router = APIRouter(tags=["models"])


@router.get("/models", dependencies=[Depends(caller)])
async def list_models(store: StoreDep) -> list[Model]:
    """Every model a worker has announced, with how many workers serve it now."""
    ready = Counter(b.model for b in await store.heartbeats() if b.ready)
    return [
        Model(**info.model_dump(), default=name == store.settings.model, workers_ready=ready[name])
        for name, info in sorted((await store.models()).items())
    ]
