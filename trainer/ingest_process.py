"""Kafka ingestion in a child process per rank, off the training process's GIL.

kafka-python parses records in Python, so in one process the ingest thread and the training thread
take turns on the GIL. Here a spawned child runs the same `KafkaIngest` loop (poll, decode,
dead-letter, batch, featurize, the unified table's hashing and routing) and sends every batch to the
trainer as one msgpack frame over a pipe, its arrays as raw bytes; a receiver thread in the trainer
rebuilds the batch, stages it on the device and queues it for the loop, so the loop sees the same
interface (`get`, `drained`, `queue`, `positions`, `stop`) as with the thread.

A pipe, not a shared-memory ring: a batch of 1024 events is about 150 KB, which the pipe copies in
tens of microseconds, while a ring would add slot lifetimes (a slot may be reused only once the step
that reads it is done) for nothing measurable.

The protocol, in order. Trainer -> child: `Start` (rank, world size, where to start), then `Stop`.
Child -> trainer: `Ready` (the assignment and positions) or `Failed`; then `BatchFrame`, `LagFrame`
and `DeadLetterFrame` as they happen; `Failed` if the loop raises. Frames are processed in order, so
`drained` is only reported after every batch before it is queued. The child dies with the trainer
(`die_with_parent`) and stops when the trainer's end of the pipe closes.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import queue
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import msgspec
import numpy as np
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from core.logs import get_logger, log_event
from embedding.events import FeatureBatch
from embedding.methods.unified import Routed
from embedding.schema import FeatureSchema
from trainer.errors import TrainerError
from trainer.ingest import Batch, DeadLetterReport, KafkaIngest, LagReport, put_unless_stopped
from trainer.settings import TrainerSettings

log = get_logger("trainer.ingest")


class IngestSpec(msgspec.Struct, frozen=True):
    """Everything the child needs to build its featurizer, hashing and Kafka clients."""

    bootstrap: str
    topic: str
    dlq_topic: str
    schema_name: str
    model: dict[str, Any]
    """`ModelConfig` as JSON."""
    batch_size: int
    max_wait_ms: int
    fetch_max_wait_ms: int
    max_poll_records: int
    log_level: str
    topic_wait_s: float = 60.0


def ingest_spec(settings: TrainerSettings) -> IngestSpec:
    s = settings
    return IngestSpec(s.kafka_bootstrap, s.topic, s.dlq, s.schema_name, s.model.model_dump(mode="json"),
                      s.batch_size, s.max_wait_ms, s.fetch_max_wait_ms, s.max_poll_records, s.log_level)  # fmt: skip


class Start(msgspec.Struct, tag="start"):
    rank: int
    world_size: int
    start_offsets: dict[int, int] | None
    start_from: str


class Stop(msgspec.Struct, tag="stop"):
    pass


class Ready(msgspec.Struct, tag="ready"):
    partitions: list[int]
    n_partitions: int
    positions: dict[int, int]


class Failed(msgspec.Struct, tag="failed"):
    error: str


class Array(msgspec.Struct, array_like=True):
    dtype: str
    shape: list[int]
    data: bytearray
    """bytearray, not bytes: the decoded array is then writable without a copy."""

    @classmethod
    def of(cls, array: torch.Tensor | np.ndarray) -> Array:
        a = array.numpy() if isinstance(array, torch.Tensor) else array
        a = np.ascontiguousarray(a)
        return cls(a.dtype.str, list(a.shape), bytearray(a.data))

    def tensor(self) -> torch.Tensor:
        return torch.from_numpy(np.frombuffer(self.data, dtype=np.dtype(self.dtype)).reshape(self.shape))


class RoutedFrame(msgspec.Struct, array_like=True):
    keys: list[str]
    values: Array
    lengths: Array
    rows: Array
    row_lengths: Array


class BatchFrame(msgspec.Struct, tag="batch"):
    keys: list[str]
    values: Array
    lengths: Array
    dense: Array
    labels: Array | None
    missing: dict[str, int]
    unknown: list[str]
    event_ids: list[str]
    max_ts_ms: int
    offsets: dict[int, int]
    routed: RoutedFrame | None

    @classmethod
    def of(cls, batch: Batch) -> BatchFrame:
        f, routed = batch.features, batch.prepared
        frame = None
        if routed is not None:
            kjt = routed.kjt
            frame = RoutedFrame(kjt.keys(), Array.of(kjt.values()), Array.of(kjt.lengths()),
                                Array.of(routed.rows), Array.of(routed.lengths))  # fmt: skip
        labels = Array.of(f.labels) if f.labels is not None else None
        return cls(f.sparse.keys(), Array.of(f.sparse.values()), Array.of(f.sparse.lengths()), Array.of(f.dense),
                   labels, f.missing, sorted(f.unknown), batch.event_ids, batch.max_ts_ms, batch.offsets,
                   frame)  # fmt: skip

    def features(self) -> FeatureBatch:
        sparse = KeyedJaggedTensor(keys=self.keys, values=self.values.tensor(), lengths=self.lengths.tensor())
        labels = self.labels.tensor() if self.labels is not None else None
        return FeatureBatch(sparse, self.dense.tensor(), labels, self.missing, set(self.unknown))

    def routing(self) -> Routed | None:
        r = self.routed
        if r is None:
            return None
        kjt = KeyedJaggedTensor(keys=r.keys, values=r.values.tensor(), lengths=r.lengths.tensor())
        return Routed(kjt, r.rows.tensor(), r.row_lengths.tensor())


class LagFrame(msgspec.Struct, tag="lag"):
    lags: dict[int, int]
    drained: bool


class DeadLetterFrame(msgspec.Struct, tag="dead_letter"):
    reason: str


_to_child = msgspec.msgpack.Decoder(Start | Stop)
_to_trainer = msgspec.msgpack.Decoder(Ready | Failed | BatchFrame | LagFrame | DeadLetterFrame)
_encoder = msgspec.msgpack.Encoder()


class IngestProcess:
    """The trainer's end: spawn the child early (its imports overlap the trainer's start-up), `open`
    it once the starting offsets are known, then `start`, `get` and `stop` as `KafkaIngest`."""

    def __init__(self, spec: IngestSpec, boot_timeout_s: float = 120.0) -> None:
        self.spec = spec
        self.boot_timeout_s = boot_timeout_s
        context = multiprocessing.get_context("spawn")
        self._frames, frames_out = context.Pipe(duplex=False)
        control_in, self._control = context.Pipe(duplex=False)
        self.process = context.Process(target=_child, args=(_encoder.encode(spec), frames_out, control_in),
                                       name="unirec-ingest", daemon=True)  # fmt: skip
        self.process.start()
        frames_out.close()
        control_in.close()
        self.drained = threading.Event()
        self._error: BaseException | None = None
        self._stopping = threading.Event()
        self._receiver: threading.Thread | None = None

    def open(
        self,
        rank: int,
        world_size: int,
        start_offsets: dict[int, int] | None,
        start_from: str,
        prefetch_batches: int,
        stage: Callable[[FeatureBatch, Routed | None], Any],
        on_lag: LagReport,
        on_dead_letter: DeadLetterReport,
    ) -> IngestProcess:
        """Assign and seek in the child; returns once it is ready, else stops it and raises why.

        `stage(features, routed)` runs in the receiver thread for every batch: what it returns is
        the batch's `prepared`."""
        self.stage, self.on_lag, self.on_dead_letter = stage, on_lag, on_dead_letter
        self.queue: queue.Queue[Batch] = queue.Queue(maxsize=prefetch_batches)
        try:
            ready = self._handshake(Start(rank, world_size, start_offsets, start_from))
        except BaseException:
            self.stop()
            raise
        self.partitions, self.n_partitions, self._positions = ready.partitions, ready.n_partitions, ready.positions
        log_event(log, "ingest_process_ready", pid=self.process.pid, rank=rank, partitions=ready.partitions)
        self._receiver = threading.Thread(target=self._receive, name=f"ingest-receiver-{rank}", daemon=True)
        return self

    def _handshake(self, start: Start) -> Ready:
        try:
            self._control.send_bytes(_encoder.encode(start))
            timeout = self.boot_timeout_s + self.spec.topic_wait_s
            if not self._frames.poll(timeout):
                raise TrainerError(f"ingest process sent nothing in {timeout:.0f}s after start; expected it to "
                                   "assign partitions")  # fmt: skip
            first = self._recv()
        except (EOFError, OSError):
            self.process.join(timeout=5)
            raise TrainerError(f"ingest process exited (code {self.process.exitcode}) before it assigned "
                               "partitions; its log says why") from None  # fmt: skip
        if isinstance(first, Failed):
            raise TrainerError(f"ingest process failed to start: {first.error}")
        if not isinstance(first, Ready):
            raise TrainerError(f"ingest process sent a {type(first).__name__} frame first; expected Ready")
        return first

    def positions(self) -> dict[int, int]:
        return dict(self._positions)

    def start(self) -> None:
        assert self._receiver is not None, "open() first"
        self._receiver.start()

    def get(self, timeout: float) -> Batch | None:
        error = self._error
        if isinstance(error, TrainerError):
            raise error
        if error is not None:
            raise TrainerError(f"ingest receiver failed: {error!r}") from error
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def stop(self) -> None:
        """Ask the child to stop (it flushes its dead letters and closes its clients), read what it
        still sends so it is never blocked sending, wait for it; kill it after 15 s. Idempotent."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        with contextlib.suppress(OSError):  # the child may be gone already
            self._control.send_bytes(_encoder.encode(Stop()))
        deadline = time.monotonic() + 15
        while self.process.is_alive() and time.monotonic() < deadline:
            if self._receiver is None or not self._receiver.is_alive():
                self._drain(0.2)
            self.process.join(timeout=0.2)
        if self.process.is_alive():
            log_event(log, "ingest_process_killed", logging.WARNING, pid=self.process.pid)
            self.process.kill()
            self.process.join(timeout=5)
        if self._receiver is not None and self._receiver.is_alive():
            self._receiver.join(timeout=5)
        self._control.close()
        self._frames.close()

    # -- the receiver thread ------------------------------------------------------------------
    def _recv(self) -> Any:
        return _to_trainer.decode(self._frames.recv_bytes())

    def _drain(self, seconds: float) -> None:
        """Read and drop frames for up to `seconds` (or until the child's end closes)."""
        deadline = time.monotonic() + seconds
        try:
            while (left := deadline - time.monotonic()) > 0 and self._frames.poll(left):
                self._frames.recv_bytes()
        except (EOFError, OSError):
            pass

    def _receive(self) -> None:
        try:
            while True:
                try:
                    frame = self._recv()
                except EOFError:
                    if self._error is None and not self._stopping.is_set():  # a Failed frame said why already
                        self.process.join(timeout=5)
                        self._error = TrainerError(f"ingest process exited (code {self.process.exitcode}); "
                                                   "expected it to run until the trainer stops it")  # fmt: skip
                    return
                if self._stopping.is_set():
                    continue  # drain so the child is never blocked sending
                self._handle(frame)
        except BaseException as exc:  # surfaced to the loop by get()
            log.exception("ingest receiver failed")
            self._error = exc

    def _handle(self, frame: Any) -> None:
        if isinstance(frame, BatchFrame):
            self.drained.clear()
            features, routed = frame.features(), frame.routing()
            batch = Batch(features, frame.event_ids, frame.max_ts_ms, frame.offsets, self.stage(features, routed))
            put_unless_stopped(self.queue, batch, self._stopping)
        elif isinstance(frame, LagFrame):
            for partition, lag in frame.lags.items():
                self.on_lag(self.spec.topic, partition, lag)
            if frame.drained:
                self.drained.set()
            else:
                self.drained.clear()
        elif isinstance(frame, DeadLetterFrame):
            self.on_dead_letter(frame.reason)
        elif isinstance(frame, Failed):
            self._error = TrainerError(f"ingest process failed: {frame.error}")
        else:
            raise TrainerError(f"unexpected {type(frame).__name__} frame after Ready")


# -- the child --------------------------------------------------------------------------------
class _PipeIngest(KafkaIngest):
    """`KafkaIngest` whose batches, lags and dead letters go to the trainer as frames."""

    def __init__(self, frames: Connection, **kwargs: Any) -> None:
        self._frames = frames
        self._lags: dict[int, int] = {}
        # the base's queue and thread go unused: the child's main thread runs `_loop`, `_deliver` sends
        super().__init__(on_lag=self._lag, on_dead_letter=self._dead, prefetch_batches=1, **kwargs)

    def _send(self, frame: msgspec.Struct) -> None:
        self._frames.send_bytes(_encoder.encode(frame))

    def _lag(self, _topic: str, partition: int, lag: int) -> None:
        self._lags[partition] = lag

    def _dead(self, reason: str) -> None:
        self._send(DeadLetterFrame(reason))

    def _update_lag(self, pending_empty: bool) -> None:
        super()._update_lag(pending_empty)
        self._send(LagFrame(self._lags, self.drained.is_set()))

    def _deliver(self, batch: Batch) -> None:
        self._send(BatchFrame.of(batch))

    def watch(self, control: Connection) -> None:
        """Stop the loop on `Stop` or when the trainer's end closes (a thread of the child)."""
        try:
            while not isinstance(_to_child.decode(control.recv_bytes()), Stop):
                pass
        except (EOFError, OSError):
            pass
        self._stop.set()


def _child(spec_bytes: bytes, frames: Connection, control: Connection) -> None:
    from core.logs import configure_logging
    from trainer.lifetime import die_with_parent, exit_rank

    die_with_parent()
    # the rank's process group gets Ctrl-C and `unirec down`'s SIGTERM: the rank stops, then stops
    # this child (Stop, or its end of the pipe closing); a rank that dies takes it along (PDEATHSIG)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    spec = msgspec.msgpack.decode(spec_bytes, type=IngestSpec)
    configure_logging(spec.log_level, json_lines=True)
    torch.set_num_threads(1)
    code = 0
    try:
        _serve(spec, frames, control)
    except (EOFError, BrokenPipeError):
        pass  # the trainer is gone
    except BaseException as exc:
        log.exception("ingest process failed")
        with contextlib.suppress(OSError):
            frames.send_bytes(_encoder.encode(Failed(f"{type(exc).__name__}: {exc}")))
        code = 1
    frames.close()
    exit_rank(code)  # as a rank ends: no interpreter finalization, which only tears torch down for seconds


def _serve(spec: IngestSpec, frames: Connection, control: Connection) -> None:
    """Build, wait for `Start`, assign, report `Ready`, run the loop until `Stop`."""
    from embedding.events import Featurizer
    from embedding.schema import load_schema

    schema = load_schema(spec.schema_name)
    prepare = _hashing(spec, schema)
    featurizer = Featurizer(schema)
    start = _to_child.decode(control.recv_bytes())
    if isinstance(start, Stop):
        return
    ingest = _PipeIngest(
        frames, bootstrap=spec.bootstrap, topic=spec.topic, dlq_topic=spec.dlq_topic, featurizer=featurizer,
        rank=start.rank, world_size=start.world_size, batch_size=spec.batch_size,
        max_wait_ms=spec.max_wait_ms, start_offsets=start.start_offsets, start_from=start.start_from,
        topic_wait_s=spec.topic_wait_s, prepare=prepare, fetch_max_wait_ms=spec.fetch_max_wait_ms,
        max_poll_records=spec.max_poll_records,
    )  # fmt: skip
    try:
        ingest._send(Ready(ingest.partitions, ingest.n_partitions, ingest.positions()))
        threading.Thread(target=ingest.watch, args=(control,), name="ingest-control", daemon=True).start()
        ingest._loop()
    finally:
        ingest.close()


def _hashing(spec: IngestSpec, schema: FeatureSchema) -> Callable[[FeatureBatch], Routed] | None:
    """The unified table's hashing and routing without its parameters (built on the meta device),
    or None for the other methods (their model hashes the fingerprints itself)."""
    from embedding.methods import UnifiedEmbedding, build_method
    from embedding.model import ModelConfig

    config = ModelConfig.model_validate(spec.model)
    if config.method != "unified":
        return None
    args = {k: v for k, v in config.method_args.items() if k != "device"}
    method = build_method(config.method, schema, **args, device="meta")
    assert isinstance(method, UnifiedEmbedding)
    return lambda features: method.prepare(features.sparse)
