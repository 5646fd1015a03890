"""Routers by resource: `predict`, `model` (mounted under /v1) and `health` (probes, metrics, status page)."""
