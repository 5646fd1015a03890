"""The status page at `/` and the JSON it reads, `GET /v1/status`."""

from __future__ import annotations

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from services.inference.deps import FollowerDep, HolderDep, MetricsDep
from services.inference.routers.model import model_info
from services.inference.schemas import StatusResponse
from services.inference.status_page import STATUS_PAGE

page_router = APIRouter(tags=["status"])
router = APIRouter(tags=["status"])


@page_router.get("/", response_class=HTMLResponse, include_in_schema=False)
def status_page() -> HTMLResponse:
    return HTMLResponse(STATUS_PAGE)


@router.get("/status", response_model=StatusResponse, summary="Figures for the status page")
async def get_status(request: Request, holder: HolderDep, metrics: MetricsDep, follower: FollowerDep) -> StatusResponse:
    """Served model, request counters of this worker, follower state, the manifest's training figures and
    the trainer's churn numbers from Redis (`unirec:churn:*`, whatever exists)."""
    served = holder.current
    churn = await anyio.to_thread.run_sync(request.app.state.churn.read)
    return StatusResponse(
        ready=served is not None,
        model=model_info(served, holder.pinned, holder.history, holder.refused) if served is not None else None,
        requests=metrics.counts(),
        follower=follower.state() if follower is not None else {"mode": "off"},
        training=served.training if served is not None else {},
        churn=churn,
        refused=holder.refused,
    )
