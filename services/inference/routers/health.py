"""Probes and metrics: `/healthz` (alive), `/readyz` (a model is loaded), `/metrics` (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from services.inference.deps import HolderDep, MetricsDep
from services.inference.errors import json_response
from services.inference.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Health,
    summary="Readiness: a model is loaded",
    responses={503: {"model": Health, "description": "No model loaded yet"}},
)
def readyz(holder: HolderDep) -> Response:
    served = holder.current
    if served is None:
        return json_response({"status": "not_ready", "version": None}, status.HTTP_503_SERVICE_UNAVAILABLE)
    return json_response({"status": "ready", "version": served.version})


@router.get(
    "/metrics",
    summary="Prometheus metrics (`unirec_serve_*`)",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Text exposition format"}
    },
)
def metrics(metrics: MetricsDep) -> Response:
    payload, content_type = metrics.exposition()
    return Response(payload, media_type=content_type)
