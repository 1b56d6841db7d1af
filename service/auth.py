"""API keys (`DDNM_API_KEYS`): who is calling, from `Authorization: Bearer <key>` or `X-API-Key`.

Keys are held as SHA-256 digests only and compared in constant time. A caller is known by its
key's id (the first 16 hex digits of the digest), which owns the jobs it makes; the digest in full
is the secret that signs its webhooks, which the client computes from its key. With no keys the
API is open (one owner, `OPEN_OWNER`), which `python -m service` allows on loopback only; an open
API refuses cross-origin writes, which a web page on another site could otherwise send.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request

from contract.jobs import OPEN_OWNER
from contract.settings import Settings, split

DIGEST = re.compile("^[0-9a-f]{64}$")
UNSAFE_METHODS = ("POST", "PUT", "PATCH", "DELETE")


@dataclass(frozen=True)
class Caller:
    owner: str  # key id, or OPEN_OWNER
    secret: str  # signs this caller's webhooks ("" on an open API without DDNM_WEBHOOK_SECRET)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class Keys:
    """The configured keys, as digests."""

    def __init__(self, settings: Settings) -> None:
        self.digests: list[str] = []
        for entry in split(settings.api_keys):
            hashed = entry.removeprefix("sha256:").lower()
            if entry.startswith("sha256:") and not DIGEST.match(hashed):
                raise ValueError("DDNM_API_KEYS: a sha256: entry needs 64 hex digits")
            self.digests.append(hashed if entry.startswith("sha256:") else digest(entry))
        self.open_caller = Caller(OPEN_OWNER, settings.webhook_secret)

    @property
    def open(self) -> bool:
        return not self.digests

    def identify(self, key: str) -> Caller | None:
        """The caller with this key, or None; every digest is compared, so the time taken does
        not tell which one (nor how much of one) matched."""
        presented = digest(key)
        found = None
        for known in self.digests:
            if hmac.compare_digest(presented, known):
                found = Caller(known[:16], known)
        return found

    def secret(self, owner: str) -> str | None:
        """The webhook secret of the caller `owner`."""
        if owner == OPEN_OWNER:
            return self.open_caller.secret or None
        return next((d for d in self.digests if d[:16] == owner), None)


def presented_key(request: Request) -> str | None:
    bearer = request.headers.get("authorization", "")
    scheme, _, credentials = bearer.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return request.headers.get("x-api-key") or None


def _cross_origin(request: Request) -> bool:
    """A browser request sent by a page of another site (Origin or Sec-Fetch-Site say so)."""
    if request.headers.get("sec-fetch-site") == "cross-site":
        return True
    origin = request.headers.get("origin")
    if origin is None:
        return False
    allowed = split(request.app.state.settings.cors_origins)
    return urlsplit(origin).netloc != request.headers.get("host") and origin not in allowed


async def optional_caller(request: Request) -> Caller | None:
    """The caller, or None when it sent no key or a wrong one (health endpoints). (Request
    dependencies are async, so that FastAPI runs them on the event loop, not in a thread.)"""
    keys: Keys = request.app.state.keys
    if keys.open:
        return keys.open_caller
    key = presented_key(request)
    return None if key is None else keys.identify(key)


async def caller(request: Request) -> Caller:
    """The caller; 401 without a valid key, 403 for a cross-origin write to an open API."""
    keys: Keys = request.app.state.keys
    if keys.open:
        if request.method in UNSAFE_METHODS and _cross_origin(request):
            raise HTTPException(403, "cross-origin requests to this API need an API key")
        return keys.open_caller
    key = presented_key(request)
    if key is None:
        raise HTTPException(
            401,
            "no API key: send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    found = keys.identify(key)
    if found is None:
        raise HTTPException(401, "invalid API key", headers={"WWW-Authenticate": "Bearer"})
    return found


CallerDep = Annotated[Caller, Depends(caller)]
OptionalCallerDep = Annotated[Caller | None, Depends(optional_caller)]
