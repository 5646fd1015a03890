"""The training loop: poll -> decode -> batch -> score (progressive validation) -> step ->
maybe checkpoint / export -> metrics. One loop, one file, no callback framework.

Run: `unirec train` (one rank) or `torchrun --nproc_per_node N -m trainer.main`.

Ranks step in lockstep (DistributedModelParallel's collectives need it): they agree, with one tiny
MAX all-gather, on the largest batch any rank holds, whether to stop, checkpoint or export. Every
rank pads its batch to that largest size with empty, zero-weight examples, so a rank without data
still takes part in the collective step without changing the model (one rank: no padding at all).
Under backlog one agreement covers several steps: when every rank holds more batches than the one
in hand, the ranks take the fewest held (at most `AGREE_EVERY_STEPS`) without agreeing again, each
padded to `batch_size`; every such step has data on every rank, and a stop, checkpoint or export
waits for the next agreement. With 2 CPU ranks a collective costs about a tenth of a step.

The unified table's hashing and routing (`UnifiedEmbedding.prepare`) run once per batch, in the
ingest thread (or the ingest process); the training thread gets the routed batch and the rows it
touches.

The loop looks one batch ahead: each iteration agrees on the next batch and starts its TorchRec
input distribution (`InputDistAhead`) before it trains the batch agreed on in the iteration before,
so the ids' all-to-alls travel while the other step computes. A stop trains the batch ahead first.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from core.logs import get_logger, log_event
from embedding.events import FeatureBatch, Featurizer
from embedding.export import ExportMeta
from embedding.methods import UnifiedEmbedding
from embedding.methods.unified import Routed
from embedding.model import build_model
from embedding.schema import FeatureSchema, load_schema
from trainer.affinity import wants_ingest_process
from trainer.checkpoint import CheckpointClock, CheckpointMeta, latest_checkpoint, load_checkpoint, save_checkpoint
from trainer.churn import ChurnSettings, ChurnTracker, fingerprints_of, rows_of
from trainer.device import DeviceBatch, HostToDevice
from trainer.distributed import DistContext, all_max, init_distributed, shard_model
from trainer.errors import TrainerError
from trainer.exporting import ExportScheduler
from trainer.ingest import Batch, KafkaIngest
from trainer.ingest_process import IngestProcess, ingest_spec
from trainer.input_dist import InputDistAhead, routed_module
from trainer.progressive import REDUCE_EVERY_STEPS, ProgressiveMetrics
from trainer.settings import TrainerSettings
from trainer.telemetry import TrainerMetrics

log = get_logger("trainer")

_READY_WAIT_S = 0.01
"""Right after a step, how long a rank whose ingest is not drained waits for its next batch (`_batch_wait_s`)."""
_GAUGE_EVERY_S = 0.5
"""Loss and progressive AUC/log-loss gauges are refreshed at most this often (and at every stop)."""
AGREE_EVERY_STEPS = 8
"""Most steps one agreement covers under backlog (see the module doc); at most `prefetch_batches` + 1."""


def pad_batch(
    features: FeatureBatch, size: int, sparse: KeyedJaggedTensor | None = None
) -> tuple[KeyedJaggedTensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pad to `size` examples with empty bags, zero dense features, label 0 and weight 0.

    `sparse`: the batch's KJT as the model consumes it (e.g. routed), default `features.sparse`;
    each of its keys holds `m` bags per example, example-major where m > 1 (a routed unified batch:
    one bag per (example, lookup)), so a key's bags are padded at its end to `size * m`."""
    n = len(features)
    if n > size:
        raise TrainerError(f"batch of {n} events exceeds batch_size {size}")
    kjt = features.sparse if sparse is None else sparse
    labels = torch.zeros(size)
    if features.labels is not None:
        labels[:n] = features.labels
    weights = torch.zeros(size)
    weights[:n] = 1.0
    if n == size:
        return kjt, features.dense, labels, weights
    keys = kjt.keys()
    per_example = kjt.lengths().numel() // (len(keys) * n) if n else 1
    lengths = kjt.lengths().view(len(keys), n * per_example)
    padded_lengths = torch.zeros(len(keys), size * per_example, dtype=lengths.dtype)
    padded_lengths[:, : n * per_example] = lengths
    padded = KeyedJaggedTensor(keys=keys, values=kjt.values(), lengths=padded_lengths.reshape(-1))
    dense = torch.zeros(size, features.dense.shape[1])
    dense[:n] = features.dense
    return padded, dense, labels, weights


@dataclass(frozen=True)
class Step:
    """A batch agreed on and padded to the agreed size, on the device, its input distribution started
    (`Trainer.begin_step`); `Trainer.take_step` trains it."""

    batch: Batch | None
    features: FeatureBatch
    routed: Routed | None
    labels: torch.Tensor
    on_device: DeviceBatch


@dataclass(frozen=True)
class Prepared:
    """What ingestion makes of a batch for the step (the ingest thread, or the ingest process and the
    receiver thread): the unified table's routing (None for other methods: the model hashes the
    fingerprints itself) and the batch staged on the device."""

    routed: Routed | None
    staged: DeviceBatch


class Trainer:
    def __init__(self, settings: TrainerSettings, ingest_child: IngestProcess | None = None) -> None:
        self.settings = settings
        self.ingest_child = ingest_child
        """An ingest process spawned before the trainer was built, opened by `run`."""
        if settings.device == "cuda" and not torch.cuda.is_available():
            raise TrainerError("UNIREC_TRAINER_DEVICE=cuda but torch sees no CUDA device; expected auto or cpu here")
        self.ctx: DistContext = init_distributed(prefer_cuda=settings.device != "cpu")
        self.h2d = HostToDevice(self.ctx.device)
        torch.set_num_threads(settings.threads or max(1, (torch.get_num_threads()) // self.ctx.world_size))
        self.schema: FeatureSchema = load_schema(settings.schema_name)
        self.config = settings.model
        self.featurizer = Featurizer(self.schema)
        self.model, self.dense_opt, self.plan = shard_model(
            build_model(self.schema, self.config), self.ctx, settings.sparse_lr, settings.dense_lr
        )
        self.metrics = TrainerMetrics(self.ctx.rank)
        sparse = getattr(self.model, "module", self.model).sparse
        self.unified: UnifiedEmbedding | None = sparse if isinstance(sparse, UnifiedEmbedding) else None
        self.input_dist = InputDistAhead(routed_module(self.unified))
        self.progressive = ProgressiveMetrics(settings.auc_window)
        self.exports = ExportScheduler(settings, self.ctx, self.schema, self.config, self.model, self.metrics)
        self.churn = ChurnTracker(
            self.schema,
            ChurnSettings(),
            table_rows=self.unified.num_rows if self.unified else 1,
            rank=self.ctx.rank,
            world_size=self.ctx.world_size,
            redis_url=settings.redis_url,
            registry=self.metrics.registry,
        )
        self.churn_enabled = True
        self.first_batch_at: float | None = None
        self.step = 0
        self.agreements = 0
        """Agreements between the ranks this run (under backlog one covers several steps)."""
        self.events = 0
        """Events this rank trained on since start; `events_base` is the global count of the checkpoint."""
        self.events_base = 0
        self.watermark_ms = 0
        self.offsets: dict[int, int] = {}
        self._stop_requested = False
        self._empty = self.featurizer([])
        self._predictions: Any = None
        self._gauges_at = 0.0
        self._last_loss: torch.Tensor | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    def run(self) -> int:
        s = self.settings
        log_event(log, "start", rank=self.ctx.rank, world=self.ctx.world_size, settings=s.model_dump(mode="json"))
        resumed = self._resume()
        if s.metrics_port:
            # local rank: every pod (node) serves ranks 0..nproc-1 on the same ports
            self.metrics.serve(s.metrics_port + int(os.environ.get("LOCAL_RANK", self.ctx.rank)))
        with contextlib.ExitStack() as stack:
            self.ingest = self._open_ingest(resumed.offsets if resumed else None)
            stack.callback(self.ingest.stop)
            self.offsets = self.ingest.positions()
            self.n_partitions = self.ingest.n_partitions
            if s.predictions_log:
                path = Path(f"{s.predictions_log}.rank{self.ctx.rank}")
                path.parent.mkdir(parents=True, exist_ok=True)
                self._predictions = stack.enter_context(open(path, "a", buffering=1))
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self._request_stop)
            stack.callback(self._close_churn)
            self.ingest.start()
            self._loop()
            self._refresh_gauges()
            self._checkpoint()  # a clean stop always leaves a final checkpoint
        self.progressive.reduce()
        seconds = time.monotonic() - self.first_batch_at if self.first_batch_at else 0.0
        rate = self.events / seconds if seconds else 0.0
        log_event(log, "stopped", rank=self.ctx.rank, step=self.step, events=self.events, agreements=self.agreements,
                  train_seconds=round(seconds, 3), events_per_s=round(rate, 1),
                  **self.progressive.snapshot())  # fmt: skip
        return 0

    def _open_ingest(self, start_offsets: dict[int, int] | None) -> KafkaIngest | IngestProcess:
        """The rank's Kafka ingestion, assigned and seeked: in a child process (the one `trainer.main`
        spawned early, else a new one) or, with `ingest_process` off, in a thread."""
        s, ctx, m = self.settings, self.ctx, self.metrics

        def on_lag(topic: str, partition: int, lag: int) -> None:
            m.lag.labels(topic=topic, partition=str(partition)).set(lag)

        def on_dead_letter(reason: str) -> None:
            m.dlq.labels(reason=reason).inc()

        if wants_ingest_process(s.ingest_process):
            child, self.ingest_child = self.ingest_child or IngestProcess(ingest_spec(s)), None
            return child.open(ctx.rank, ctx.world_size, start_offsets, s.start_from, s.prefetch_batches,
                              self.stage, on_lag, on_dead_letter)  # fmt: skip
        return KafkaIngest(
            bootstrap=s.kafka_bootstrap, topic=s.topic, dlq_topic=s.dlq, featurizer=self.featurizer,
            rank=ctx.rank, world_size=ctx.world_size, batch_size=s.batch_size, max_wait_ms=s.max_wait_ms,
            prefetch_batches=s.prefetch_batches, on_lag=on_lag, on_dead_letter=on_dead_letter,
            start_offsets=start_offsets, start_from=s.start_from, prepare=self.prepare,
            fetch_max_wait_ms=s.fetch_max_wait_ms, max_poll_records=s.max_poll_records,
        )  # fmt: skip

    def _request_stop(self, signum: int, _frame: object) -> None:
        log_event(log, "stop_requested", signal=signal.Signals(signum).name)
        self._stop_requested = True

    def _resume(self) -> CheckpointMeta | None:
        path = latest_checkpoint(self.settings.checkpoints)
        if path is None:
            log_event(log, "no_checkpoint", directory=str(self.settings.checkpoints), start=self.settings.start_from)
            return None
        meta = load_checkpoint(path, self.model, self.dense_opt)
        if meta.schema != self.schema.model_dict() or meta.model != self.config.model_dump(mode="json"):
            raise TrainerError(
                f"checkpoint {path} was written for another schema or model config; "
                "point UNIREC_TRAINER_CHECKPOINT_DIR elsewhere or delete it"
            )
        self.step, self.events_base, self.watermark_ms = meta.step, meta.events, meta.watermark_ms
        log_event(log, "resumed", checkpoint=str(path), step=meta.step, events=meta.events, offsets=meta.offsets)
        return meta

    # -- the loop -----------------------------------------------------------------------------
    def _loop(self) -> None:
        s = self.settings
        clock = CheckpointClock(s.checkpoint_every_s, s.checkpoint_every_events)
        idle_since: float | None = None
        ahead: Step | None = None
        covered = 0
        """Steps still covered by the last agreement: each rank holds a batch for each."""
        last_log = time.monotonic()
        while True:
            if covered:
                covered -= 1
                batch = self.ingest.get(timeout=0.0)
                if batch is None:
                    raise TrainerError("a batch counted at the agreement left the ingest queue")
                ahead = self._train_behind(ahead, self.begin_step(batch, size=s.batch_size))
                continue
            batch = self.ingest.get(timeout=self._batch_wait_s(busy=ahead is not None))
            drained = batch is None and self.ingest.drained.is_set() and self.ingest.queue.empty()
            n_local = len(batch) if batch is not None else 0
            # batches this rank can take without waiting (nobody else takes from its queue)
            held = 1 + self.ingest.queue.qsize() if batch is not None else 0
            # the leader's clock decides the idle timeout: ranks reading their own clocks could leave the
            # loop one iteration apart, and the one left would call collectives the others do not
            idle_over = idle_since is not None and time.monotonic() - idle_since >= s.idle_timeout_s
            leader_flags = [False] * 4
            if self.ctx.is_leader:
                leader_flags = [clock.due(self.events), *self.exports.decide(), idle_over]
            agreed = self._agree(n_local, held, stop=self._stop_requested, drained=drained, leader=leader_flags)
            n_max, held_min, stop, all_drained, (checkpoint_due, full_due, delta_due, idle_done) = agreed
            if self.ctx.world_size > 1 and not stop:  # from agreed figures only: every rank covers as many
                covered = max(min(held_min, AGREE_EVERY_STEPS) - 1, 0)
            begun = self.begin_step(batch, size=s.batch_size if covered else n_max) if n_max else None
            ahead = self._train_behind(ahead, begun)
            if n_max:
                idle_since = None
            elif s.stop_at_end and all_drained:  # nothing ahead, nothing in flight
                idle_since = idle_since or time.monotonic()
                if idle_done:
                    log_event(log, "drained", step=self.step, events=self.events)
                    return
            if stop:
                if ahead is not None:
                    self.take_step(ahead)
                return
            if full_due or delta_due:
                self._export(full=full_due)
            if checkpoint_due:
                self._checkpoint()
                clock.mark(self.events)
            self.metrics.checkpoint_age.set(clock.age)
            if time.monotonic() - last_log > 10:
                last_log = time.monotonic()
                log_event(log, "progress", rank=self.ctx.rank, step=self.step, events=self.events,
                          **{k: round(v, 4) for k, v in self.progressive.snapshot().items()})  # fmt: skip

    def _train_behind(self, current: Step | None, begun: Step | None) -> Step | None:
        """Train `current` (the step begun an iteration ago, if any) now that `begun` is on its way;
        `begun` is the step ahead."""
        if current is not None:
            self.take_step(current)
        return begun

    def _batch_wait_s(self, busy: bool) -> float:
        """How long to wait for this rank's next batch. The step is collective: when one is due (`busy`:
        a batch is ahead) a rank waiting `max_wait_ms` (its partitions drained or slow) would make every
        other rank's step wait as long, so a drained rank takes only a batch that is ready and one with
        records in flight waits `_READY_WAIT_S` at most. Idle ranks wait `max_wait_ms` together, no step
        between."""
        if not busy:
            return self.settings.max_wait_ms / 1000.0
        return 0.0 if self.ingest.drained.is_set() else min(_READY_WAIT_S, self.settings.max_wait_ms / 1000.0)

    def _agree(
        self, n_local: int, held: int, stop: bool, drained: bool, leader: list[bool]
    ) -> tuple[int, int, bool, bool, list[bool]]:
        """One MAX over the ranks (`all_max`): the largest batch in hand, the fewest batches held (as the
        MAX of their negatives), stop requested, drained everywhere (no rank not drained), the leader's
        decisions (the other ranks send zeros)."""
        if self.ctx.world_size == 1:
            return n_local, held, stop, drained, list(leader)
        self.agreements += 1
        flags = torch.tensor([n_local, -held, int(not drained), int(stop), *map(int, leader)], dtype=torch.int64)
        n_max, neg_held, not_drained, stop_any, *decisions = all_max(flags).tolist()
        return n_max, -neg_held, bool(stop_any), not not_drained, [bool(f) for f in decisions]

    def prepare(self, features: FeatureBatch) -> Prepared | None:
        """The model's input for a batch, computed once (in the ingest thread): the unified table's
        routed KJT and rows, and the unpadded batch's copy to the device launched (None: empty batch)."""
        if not len(features):
            return None
        return self.stage(features, self.unified.prepare(features.sparse) if self.unified is not None else None)

    def stage(self, features: FeatureBatch, routed: Routed | None) -> Prepared | None:
        """`prepare` for a batch already hashed and routed (by the ingest process)."""
        if not len(features):
            return None
        padded = pad_batch(features, len(features), routed.kjt if routed is not None else None)
        return Prepared(routed, self.h2d.stage(*padded))

    def train_batch(self, batch: Batch | None, size: int | None = None) -> None:
        """One collective step on this rank's batch (None: an all-padding batch), padded to `size`
        examples (default: the batch's own size, at least 1), with nothing ahead of it."""
        self.take_step(self.begin_step(batch, size))

    def begin_step(self, batch: Batch | None, size: int | None = None) -> Step:
        """Pad `batch` to `size`, have it on the device and start its input distribution."""
        if self.first_batch_at is None and batch is not None:
            self.first_batch_at = time.monotonic()
        features = batch.features if batch is not None else self._empty
        prepared = None
        if batch is not None and len(batch):
            prepared = batch.prepared if batch.prepared is not None else self.prepare(features)
        routed = prepared.routed if prepared is not None else None
        size = size or max(len(features), 1)
        padded = pad_batch(features, size, routed.kjt if routed is not None else None)
        if routed is None and self.unified is not None:  # all padding: routed too, its input dist starts here
            padded = (self.unified.prepare(padded[0]).kjt, *padded[1:])
        staged = prepared.staged if prepared is not None and prepared.staged.size == size else None
        on_device = self.h2d.ready(staged or self.h2d.stage(*padded))  # padded to another rank's size: copy now
        self.input_dist.start(on_device.sparse)
        return Step(batch, features, routed, padded[2], on_device)

    def take_step(self, step: Step) -> None:
        """Train one begun step (the oldest: input distributions are consumed in order)."""
        batch, features, on_device = step.batch, step.features, step.on_device
        self._track(batch, step.routed)
        logits = self.model(on_device.sparse, on_device.dense)
        losses = torch.nn.functional.binary_cross_entropy_with_logits(logits, on_device.labels, reduction="none")
        n = len(features)
        loss = (losses * on_device.weights).sum() / max(n, 1)
        self.dense_opt.zero_grad()
        loss.backward()
        self.input_dist.advance()  # the next batch's ids travel during the optimiser step and the next agreement
        self.dense_opt.step()
        self.step += 1
        if self.step % REDUCE_EVERY_STEPS == 0:  # every rank is at this step: figures over all ranks
            self.progressive.reduce()
        if batch is None or n == 0:
            return
        scores = torch.sigmoid(logits[:n].detach()).cpu().numpy()
        truth = step.labels[:n].numpy()
        self.progressive.update(scores, truth)
        self.events += n
        self.watermark_ms = max(self.watermark_ms, batch.max_ts_ms)
        self.offsets.update(batch.offsets)
        self._observe(loss.detach(), n)
        if self._predictions is not None:
            rows = zip(batch.event_ids, scores, truth, strict=True)
            self._predictions.write("".join(f"{self.step}\t{e}\t{p:.6f}\t{int(y)}\n" for e, p, y in rows))

    def _track(self, batch: Batch | None, routed: Routed | None) -> None:
        """Rows for the next delta export, and the vocabulary churn of the batch."""
        if batch is None or not len(batch):
            return
        sparse = batch.features.sparse
        rows = None
        if routed is not None:
            self.exports.mark(routed.rows)
            rows = rows_of(self.schema, routed.rows, routed.lengths)
        if self.churn_enabled:
            try:
                self.churn.observe(fingerprints_of(sparse), batch.max_ts_ms, rows, step=self.step)
            except Exception:  # observability must never stop training
                log.exception("churn tracking failed; disabled for the rest of this run")
                self.churn_enabled = False

    def _close_churn(self) -> None:
        try:
            self.churn.close()
        except Exception:
            log.exception("churn tracker failed to close")

    def _observe(self, loss: torch.Tensor, n: int) -> None:
        m = self.metrics
        m.events.inc(n)
        m.batches.inc()
        m.watermark.set(self.watermark_ms / 1000.0)
        self._last_loss = loss
        if time.monotonic() - self._gauges_at >= _GAUGE_EVERY_S:  # AUCs sort the recent window: not every batch
            self._refresh_gauges()

    def _refresh_gauges(self) -> None:
        m = self.metrics
        self._gauges_at = time.monotonic()
        if self._last_loss is not None:
            m.loss.set(self._last_loss.item())
        snap = self.progressive
        m.auc("cumulative").set(snap.cumulative_auc())
        m.auc("recent").set(snap.recent_auc())
        m.logloss("cumulative").set(snap.cumulative_logloss())
        m.logloss("recent").set(snap.recent_logloss())

    # -- checkpoints ----------------------------------------------------------------------------
    def _global_offsets(self) -> dict[int, int]:
        table = torch.full((max(self.n_partitions, 1),), -1, dtype=torch.int64)
        for partition, offset in self.offsets.items():
            table[partition] = offset
        dist.all_reduce(table, op=dist.ReduceOp.MAX)
        return {p: int(o) for p, o in enumerate(table.tolist()) if o >= 0}

    def _global_counters(self) -> tuple[int, int]:
        t = torch.tensor([self.events, self.watermark_ms], dtype=torch.int64)
        events = t[:1].clone()
        dist.all_reduce(events, op=dist.ReduceOp.SUM)
        watermark = t[1:].clone()
        dist.all_reduce(watermark, op=dist.ReduceOp.MAX)
        return self.events_base + int(events), int(watermark)

    def _export(self, full: bool) -> None:
        self.progressive.reduce()
        offsets = self._global_offsets()
        events, watermark = self._global_counters()
        snapshot = {k: v for k, v in self.progressive.snapshot().items() if v == v}  # drop NaN
        meta = ExportMeta(
            step=self.step,
            offsets={self.settings.topic: offsets},
            watermark_ms=watermark or None,
            metrics=snapshot | {"events": float(events)},
        )
        self.exports.export(full, meta)

    def _checkpoint(self) -> None:
        started = time.monotonic()
        offsets = self._global_offsets()
        events, watermark = self._global_counters()
        meta = CheckpointMeta(
            step=self.step,
            events=events,
            offsets=offsets,
            watermark_ms=watermark,
            topic=self.settings.topic,
            model=self.config.model_dump(mode="json"),
            schema=self.schema.model_dict(),
            created=time.time(),
        )
        s = self.settings
        path = save_checkpoint(s.checkpoints, meta, self.model, self.dense_opt, s.keep_checkpoints)
        took = time.monotonic() - started
        self.metrics.checkpoint_duration.observe(took)
        log_event(log, "checkpoint", path=str(path), step=self.step, events=events, seconds=round(took, 3))


def train(settings: TrainerSettings, child: IngestProcess | None = None) -> int:
    """Train until stopped; `child`: an ingest process spawned ahead (`trainer.main`), else the
    trainer makes its ingestion itself."""
    trainer = None
    try:
        trainer = Trainer(settings, child)
        return trainer.run()
    finally:
        if child is not None and (trainer is None or trainer.ingest_child is child):  # never opened
            child.stop()
        if dist.is_initialized():
            dist.destroy_process_group()

