"""The trainer's Prometheus metrics (names in docs/metrics.md), on a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class TrainerMetrics:
    def __init__(self, rank: int, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        rank_label = {"rank": str(rank)}

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(name, doc, ("rank", *labels), registry=r)

        self.events = Counter("unirec_trainer_events", "Events trained on", ["rank"], registry=r).labels(**rank_label)
        self.batches = Counter("unirec_trainer_batches", "Optimiser steps", ["rank"], registry=r).labels(**rank_label)
        self.loss = gauge("unirec_trainer_loss", "Training log loss of the last batch").labels(**rank_label)
        self._auc = gauge("unirec_trainer_progressive_auc", "Progressive (score-before-train) AUC", ("window",))
        self._logloss = gauge("unirec_trainer_progressive_logloss", "Progressive log loss", ("window",))
        self._lag = gauge("unirec_trainer_consumer_lag", "End offset minus next offset", ("topic", "partition"))
        self.checkpoint_age = gauge("unirec_trainer_checkpoint_age_seconds", "Seconds since the last checkpoint")
        self.checkpoint_age = self.checkpoint_age.labels(**rank_label)
        self.checkpoint_duration = Histogram(
            "unirec_trainer_checkpoint_duration_seconds",
            "Time to write one checkpoint",
            ["rank"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
            registry=r,
        ).labels(**rank_label)
        self._dlq = Counter("unirec_trainer_dlq", "Malformed events dead-lettered", ["rank", "reason"], registry=r)
        self.watermark = gauge(
            "unirec_trainer_event_time_watermark_seconds", "Largest event time trained on (Unix seconds)"
        ).labels(**rank_label)
        self._exports = Counter("unirec_trainer_exports", "Artifacts published", ["rank", "kind"], registry=r)
        self._rank = str(rank)

    def auc(self, window: str) -> Gauge:
        return self._auc.labels(rank=self._rank, window=window)

    def logloss(self, window: str) -> Gauge:
        return self._logloss.labels(rank=self._rank, window=window)

    @property
    def lag(self) -> _RankBound:
        return _RankBound(self._lag, self._rank)

    @property
    def dlq(self) -> _RankBound:
        return _RankBound(self._dlq, self._rank)

    def exports(self, kind: str) -> Counter:
        return self._exports.labels(rank=self._rank, kind=kind)

    def serve(self, port: int) -> None:
        start_http_server(port, registry=self.registry)


class _RankBound:
    """A labelled metric with the rank label filled in."""

    def __init__(self, metric: Gauge | Counter, rank: str) -> None:
        self._metric = metric
        self._rank = rank

    def labels(self, **labels: str):  # type: ignore[no-untyped-def]
        return self._metric.labels(rank=self._rank, **labels)
