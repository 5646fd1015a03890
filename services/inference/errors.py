"""The service's HTTP errors with a machine-readable reason: `{"detail", "reason", "version"}`."""

from __future__ import annotations

import orjson
from fastapi import HTTPException, Request
from fastapi.responses import Response


class ServiceError(HTTPException):
    def __init__(self, status_code: int, detail: str, reason: str | None = None, version: str | None = None) -> None:
        super().__init__(status_code, detail)
        self.reason = reason
        self.version = version


async def service_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    return json_response(
        {"detail": exc.detail, "reason": exc.reason, "version": exc.version}, exc.status_code, exc.headers
    )


def json_response(content: object, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content), status_code, headers, media_type="application/json")
