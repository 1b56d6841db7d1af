"""Request dependencies, as `Annotated` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from contract.settings import Settings
from service.events import EventHub
from service.jobs import JobStore


async def get_store(request: Request) -> JobStore:
    return request.app.state.store


async def get_hub(request: Request) -> EventHub:
    return request.app.state.hub


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


StoreDep = Annotated[JobStore, Depends(get_store)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
HubDep = Annotated[EventHub, Depends(get_hub)]
