"""The service's Prometheus metrics (`unirec_serve_*`, names fixed by docs/metrics.md).

Each app owns one `ServeMetrics` with its own registry, so several apps in one process (tests)
never collide. With several uvicorn workers, `unirec serve` sets `PROMETHEUS_MULTIPROC_DIR`
before the workers start; every worker then writes its samples there and `/metrics` (served by
whichever worker the scrape reaches) aggregates all of them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SWAP_KINDS = ("full", "delta", "rollback")
FAILURE_REASONS = ("checksum", "gap", "missing", "schema", "format", "error")
"""Labels of `unirec_serve_failed_loads_total{reason}` (see model_holder.failure_reason)."""
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
REQUESTS_PER_FORWARD_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class ServeMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.multiprocess = multiprocess_dir() is not None
        r = self.registry
        self.requests = Counter("unirec_serve_requests", "HTTP requests", ["route", "status"], registry=r)
        self.latency = Histogram(
            "unirec_serve_request_latency_seconds", "Request latency", ["route"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram(
            "unirec_serve_batch_size", "Events per predict request", buckets=BATCH_BUCKETS, registry=r
        )
        self.forwards = Counter(
            "unirec_serve_forwards", "Forwards run (one per batch formed by the dynamic batcher)", registry=r
        )
        self.forward_events = Histogram(
            "unirec_serve_forward_events", "Events scored per forward", buckets=BATCH_BUCKETS, registry=r
        )
        self.forward_requests = Histogram(
            "unirec_serve_forward_requests", "Predict requests answered by one forward",
            buckets=REQUESTS_PER_FORWARD_BUCKETS, registry=r,
        )  # fmt: skip
        self.model_info = Gauge(
            "unirec_serve_model_info", "1 for the model version being served", ["version"],
            multiprocess_mode="livemax", registry=r,
        )  # fmt: skip
        self.model_age = Gauge(
            "unirec_serve_model_age_seconds", "Now minus the served model's event-time watermark",
            multiprocess_mode="livemax", registry=r,
        )  # fmt: skip
        self.swaps = Counter("unirec_serve_swaps", "Model swaps", ["kind"], registry=r)
        self.failed_loads = Counter(
            "unirec_serve_failed_loads", "Artifacts refused (the previous model kept serving)", ["reason"], registry=r
        )
        self.refused_versions = Gauge(
            "unirec_serve_refused_version_info", "1 for each version refused since start (not retried)",
            ["version", "reason"], multiprocess_mode="livemax", registry=r,
        )  # fmt: skip
        self.unseen_ids = Counter(
            "unirec_serve_unseen_ids", "Looked-up IDs never seen in training", ["feature"], registry=r
        )
        self.lookups = Counter("unirec_serve_lookups", "Looked-up IDs", ["feature"], registry=r)
        self.missing_features = Counter(
            "unirec_serve_missing_features", "Events without the feature", ["feature"], registry=r
        )
        self.unknown_features = Counter(
            "unirec_serve_unknown_features", "Events naming a feature the schema does not know", registry=r
        )
        for kind in SWAP_KINDS:  # every series exists from the start, so rate() and alerts see zeros
            self.swaps.labels(kind=kind)
        for reason in FAILURE_REASONS:
            self.failed_loads.labels(reason=reason)
        self._request_children: dict[tuple[str, int], tuple[Counter, Histogram]] = {}
        self._feature_children: dict[tuple[str, str], Counter] = {}
        self._counts = {"predict_requests": 0, "predictions": 0, "errors": 0, "started_at": time.time()}
        self._version: str | None = None
        self._watermark_s: float | None = None

    # -- requests --------------------------------------------------------------------------------
    def observe_request(self, route: str, status: int, seconds: float, batch: int = 0) -> None:
        children = self._request_children.get((route, status))
        if children is None:  # labels() hashes and locks on every call: look each pair up once
            children = (self.requests.labels(route=route, status=str(status)), self.latency.labels(route=route))
            self._request_children[(route, status)] = children
        children[0].inc()
        children[1].observe(seconds)
        if route == "/v1/predict":
            self._counts["predict_requests"] += 1
            if status < 300:
                self._counts["predictions"] += batch
        if status >= 500:
            self._counts["errors"] += 1

    def count_feature(self, family: str, feature: str, amount: int) -> None:
        """Add to the `feature` series of `lookups`, `unseen_ids` or `missing_features`."""
        child = self._feature_children.get((family, feature))
        if child is None:
            child = self._feature_children[(family, feature)] = getattr(self, family).labels(feature=feature)
        child.inc(amount)

    def counts(self) -> dict[str, float]:
        """This process's running totals (the status page turns them into rates)."""
        return dict(self._counts)

    def observe_forward(self, requests: int, events: int) -> None:
        self.forwards.inc()
        self.forward_events.observe(events)
        self.forward_requests.observe(requests)

    # -- model -----------------------------------------------------------------------------------
    def served(self, version: str, watermark_ms: int | None, features: Sequence[str] = ()) -> None:
        """Point the info and age series at a newly served model; create its per-feature series."""
        for name in features:
            for family in (self.lookups, self.unseen_ids, self.missing_features):
                family.labels(feature=name)
        if self._version is not None and self._version != version:
            if self.multiprocess:  # another worker may still serve it; livemax keeps the truth
                self.model_info.labels(version=self._version).set(0)
            else:
                self.model_info.remove(self._version)
        self.model_info.labels(version=version).set(1)
        self._version = version
        self._watermark_s = watermark_ms / 1000.0 if watermark_ms is not None else None
        self.refresh_age()

    def refresh_age(self, now: float | None = None) -> None:
        if self._watermark_s is not None:
            self.model_age.set(max(0.0, (time.time() if now is None else now) - self._watermark_s))

    # -- exposition ------------------------------------------------------------------------------
    def exposition(self) -> tuple[bytes, str]:
        """The text exposition for `/metrics` and its content type."""
        self.refresh_age()
        if self.multiprocess:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
