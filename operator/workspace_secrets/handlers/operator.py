"""kopf's operator-wide activities: login, startup (App.start), cleanup (App.stop), the liveness probe."""

from __future__ import annotations

from typing import Any

import kopf

from workspace_secrets.app import App


@kopf.on.login(id="login")
async def login(memo: Any, **_: Any) -> kopf.ConnectionInfo:
    return await App.of(memo).connection_info()


@kopf.on.startup(id="configure")
async def configure(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    await App.of(memo).start(settings)


@kopf.on.cleanup(id="shutdown")
async def shutdown(memo: Any, **_: Any) -> None:
    await App.of(memo).stop()


@kopf.on.probe(id="secretWatch")
async def secret_watch_health(memo: Any, **_: Any) -> dict[str, Any]:
    """kopf caches probe results for 10 s, so the endpoint reacts within --watch-unhealthy-threshold + 10 s."""
    return App.of(memo).health()
