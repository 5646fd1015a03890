"""The peer of `bench/serving.py`: the smallest FastAPI app a user would write for the same route.

    uvicorn --factory bench.peers.bare_fastapi:create_app --port 8001

`POST /v1/predict` validates the body with pydantic against the service's own request model
(`PredictRequest`: the same shape and limits) and answers a constant probability per event. No
model, no metrics, no logging: what is left is the price of HTTP, FastAPI and validation, the
floor the service's per-request overhead is measured against.
"""

from __future__ import annotations

from fastapi import FastAPI

from services.inference.schemas import PredictRequest, PredictResponse

CONSTANT = 0.5


def create_app() -> FastAPI:
    app = FastAPI(title="bare FastAPI peer")

    @app.post("/v1/predict", response_model=PredictResponse)
    async def predict(request: PredictRequest) -> PredictResponse:
        return PredictResponse(version="peer", probabilities=[CONSTANT] * len(request.events))

    @app.get("/readyz")
    async def ready() -> dict[str, str]:
        return {"status": "ready"}

    return app
