"""Dependencies of the routes, as `Annotated` aliases (the FastAPI way: handlers stay small).

Every dependency is `async def`: FastAPI runs a plain `def` dependency in its thread pool, one
thread hop (and a GIL handoff) per dependency per request, which cost more than the model at batch 1.
`POST /v1/predict` takes none at all: solving its seven (the served model and the optional API key
with their sub-dependencies) cost more CPU per request than featurizing and scoring one event, so
it calls `served_or_503` and `check_predict_key` itself (it is a plain ASGI handler: routers/predict.py).
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from functools import lru_cache
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from services.inference.follower import Follower
from services.inference.metrics import ServeMetrics
from services.inference.model_holder import ModelHolder, Served
from services.inference.settings import ServeSettings


@lru_cache
def get_settings() -> ServeSettings:
    """One settings object per process; tests replace it with `app.dependency_overrides`."""
    return ServeSettings()


def settings_of(request_app: object) -> ServeSettings:
    """The settings the app runs with, honouring a test's override (for the lifespan, outside a request)."""
    overrides = getattr(request_app, "dependency_overrides", {})
    return overrides.get(get_settings, get_settings)()


async def app_settings(request: Request) -> ServeSettings:
    """The settings the lifespan started the app with (`settings_of`, so a test's override counts)."""
    return request.app.state.settings


async def get_holder(request: Request) -> ModelHolder:
    return request.app.state.holder


async def get_metrics(request: Request) -> ServeMetrics:
    return request.app.state.metrics


async def get_follower(request: Request) -> Follower | None:
    return request.app.state.follower


def served_or_503(holder: ModelHolder) -> Served:
    """The model for this request, taken once: a swap during the request does not affect it."""
    served = holder.current
    if served is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "no model loaded yet", headers={"Retry-After": "5"})
    return served


async def get_served(holder: Annotated[ModelHolder, Depends(get_holder)]) -> Served:
    return served_or_503(holder)


SettingsDep = Annotated[ServeSettings, Depends(app_settings)]
HolderDep = Annotated[ModelHolder, Depends(get_holder)]
MetricsDep = Annotated[ServeMetrics, Depends(get_metrics)]
FollowerDep = Annotated[Follower | None, Depends(get_follower)]
ServedDep = Annotated[Served, Depends(get_served)]

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="The service's API key.")
_bearer = HTTPBearer(auto_error=False, description="The service's API key as a bearer token.")


def _check_key(settings: ServeSettings, header: str | None, bearer: HTTPAuthorizationCredentials | None) -> None:
    if settings.api_key is None:
        return
    given = header or (bearer.credentials if bearer is not None else None)
    if given is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "API key required: send it as X-API-Key or Authorization: Bearer",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not hmac.compare_digest(given.encode(), settings.api_key.get_secret_value().encode()):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "API key not valid")


async def require_admin(
    settings: SettingsDep,
    header: Annotated[str | None, Depends(_api_key_header)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Admin routes: the API key is required whenever one is configured."""
    _check_key(settings, header, bearer)


def check_predict_key(settings: ServeSettings, headers: Mapping[str, str]) -> None:
    """Predict: the API key is required only with `predict_requires_key` (read from the headers that
    `APIKeyHeader` and `HTTPBearer` read)."""
    if not settings.predict_requires_key:
        return
    scheme, _, token = headers.get("authorization", "").partition(" ")
    bearer = HTTPAuthorizationCredentials(scheme=scheme, credentials=token) if scheme.lower() == "bearer" else None
    _check_key(settings, headers.get("x-api-key"), bearer if bearer and token else None)


PREDICT_SECURITY = [{"APIKeyHeader": []}, {"HTTPBearer": []}]
"""The predict route's `security` in /openapi.json (the schemes the admin routes' dependencies declare)."""

AdminAuth = Depends(require_admin)
