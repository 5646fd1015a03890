"""Per-request metrics and one JSON log line per request, as a plain ASGI middleware (cheap)."""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.logs import log_event
from services.inference.metrics import ServeMetrics


class RequestObserver:
    def __init__(self, app: ASGIApp, metrics: ServeMetrics, logger: logging.Logger, routes: set[str]) -> None:
        self.app = app
        self.routes = routes
        """Paths of the app's routes (all static): the `route` label; anything else is `unmatched`."""
        self.metrics = metrics
        self.logger = logger

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def observe_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observe_send)
        finally:
            seconds = time.perf_counter() - started
            route = scope["path"] if scope["path"] in self.routes else "unmatched"
            fields: dict[str, Any] = scope.get("state", {}).get("log_fields") or {}
            self.metrics.observe_request(route, status, seconds, fields.get("batch", 0))
            settings = getattr(scope["app"].state, "settings", None)
            if settings is None or settings.access_log:
                log_event(
                    self.logger, "request", method=scope["method"], route=route, path=scope["path"],
                    status=status, ms=round(seconds * 1000, 3), **fields,
                )  # fmt: skip
