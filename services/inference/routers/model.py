"""`/v1/model`: what is served, and the admin actions reload and rollback."""

from __future__ import annotations

import anyio
from fastapi import APIRouter, Body, status

from services.inference.deps import AdminAuth, HolderDep, ServedDep
from services.inference.errors import ServiceError
from services.inference.model_holder import LoadFailed, NothingToServe, Served
from services.inference.schemas import ErrorResponse, ModelInfo, ReloadRequest

router = APIRouter(prefix="/model", tags=["model"])

_ADMIN_ERRORS = {
    401: {"model": ErrorResponse, "description": "API key missing (required whenever one is configured)"},
    403: {"model": ErrorResponse, "description": "API key not valid"},
    409: {"model": ErrorResponse, "description": "Refused: the previous model keeps serving"},
}


def model_info(served: Served, pinned: bool, history: list[str], refused: dict[str, str]) -> ModelInfo:
    return ModelInfo(
        version=served.version,
        kind=served.kind,
        created_at=served.created_at,
        watermark_ms=served.watermark_ms,
        freshness_s=served.freshness_s(),
        loaded_at=served.loaded_at,
        pinned=pinned,
        history=history,
        refused=refused,
        schema=served.model.schema.model_dict(),
    )


@router.get(
    "",
    response_model=ModelInfo,
    summary="The served model",
    responses={503: {"model": ErrorResponse, "description": "No model loaded yet"}},
)
def get_model(served: ServedDep, holder: HolderDep) -> ModelInfo:
    """Version, creation time, event-time watermark, freshness and feature schema of the served model."""
    return model_info(served, holder.pinned, holder.history, holder.refused)


@router.post(
    "/reload", response_model=ModelInfo, summary="Load a version now", dependencies=[AdminAuth], responses=_ADMIN_ERRORS
)
async def reload(holder: HolderDep, request: ReloadRequest | None = Body(None)) -> ModelInfo:
    """Load `version` (default: the store's latest), swap to it, and follow the registry again after a rollback.

    A version refused earlier is tried again. On refusal the served model does not change (409).
    """
    version = request.version if request is not None else None
    try:
        served = await anyio.to_thread.run_sync(lambda: holder.load(version, "auto", unpin=True))
    except LoadFailed as exc:
        current = holder.current
        raise ServiceError(
            status.HTTP_409_CONFLICT, str(exc), exc.reason, current.version if current else None
        ) from exc
    except NothingToServe as exc:
        raise ServiceError(status.HTTP_409_CONFLICT, str(exc), "empty_store") from exc
    return model_info(served, holder.pinned, holder.history, holder.refused)


@router.post(
    "/rollback",
    response_model=ModelInfo,
    summary="Serve the previous version again",
    dependencies=[AdminAuth],
    responses=_ADMIN_ERRORS,
)
async def rollback(holder: HolderDep) -> ModelInfo:
    """Swap back to the version served before and pin it: new exports are not followed until a reload."""
    try:
        served = await anyio.to_thread.run_sync(holder.rollback)
    except NothingToServe as exc:
        raise ServiceError(status.HTTP_409_CONFLICT, str(exc), "no_history") from exc
    return model_info(served, holder.pinned, holder.history, holder.refused)
