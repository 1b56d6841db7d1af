"""`python -m service.healthcheck`: the API container's healthcheck. Exit 0 when the API process
on this host answers GET /healthz on its configured port (DDNM_PORT), else print why and exit 1.
Imports no web framework, so that it runs in a fraction of a second."""

from __future__ import annotations

import sys
import urllib.request

from contract.settings import Settings

PATH = "/healthz"


def url(settings: Settings) -> str:
    """Where the API of these settings answers on this host."""
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.port}{PATH}"


def main() -> int:
    try:
        with urllib.request.urlopen(url(Settings()), timeout=2) as response:
            response.read()
    except OSError as err:  # refused, timed out, or an HTTP error status
        print(f"healthcheck: {err}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
