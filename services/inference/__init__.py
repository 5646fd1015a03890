"""The FastAPI inference service: loads exported models, swaps them without downtime, serves predictions."""

from services.inference.app import create_app, serve_app

__all__ = ["create_app", "serve_app"]
