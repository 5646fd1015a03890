"""A synthetic event stream with known structure: Zipf IDs, vocabulary churn, concept drift, a known click model.

    unirec simulate --windows 10 --output events.jsonl --truth truth.jsonl
    unirec simulate --topic events --rate 5000                     # into Kafka, like `unirec produce`
    unirec simulate --windows 3 --events-per-window 2000000 --truth truth.jsonl    # churn ground truth only

Python API:

    sim = Simulator(SimulatorConfig.from_schema(load_schema("simulated")))
    for window in sim.windows():          # columnar numpy arrays + ground truth of one window of event time
        window.ids["user"], window.label, window.truth
    events = list(sim.events(10_000))     # the same stream as Event objects

The model. Every sparse feature has `vocab` popularity slots; slot r is drawn with probability about
proportional to (r + 1) ** -zipf (see `_zipf_slots`) and holds one ID at a time. IDs are integers, never
reused. At each window boundary, churn replaces IDs: each slot with probability `new_id_rate`, and every
ID older than `lifetime` windows; a replaced slot gets a fresh ID with a fresh hidden effect. Each ID
has a hidden effect e ~ N(0, effect_std) that drifts by N(0, drift_std) per window (concept drift), and
the global bias moves by `bias_drift` per window. The click model is logistic:

    p(click) = sigmoid(bias + sum over features of e[id] + sum over dense of weight * x),  x ~ N(0, 1)

and `label ~ Bernoulli(p)`; `Window.p` holds the true probabilities (the best any model can do).

Ground truth per window and feature, computed from the events themselves (what a churn tracker can see):
`distinct` IDs in the window, `new` IDs (never seen in an earlier window), `vanished` IDs (seen in the
previous window, absent from this one); plus the generator's view: `born`/`retired` IDs at this window's
boundary and `active` IDs (= vocab). Everything is vectorised numpy: millions of IDs per window in seconds.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import typer
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from rich.console import Console

from embedding.events import Event
from embedding.schema import FeatureSchema
from services.replay.errors import SourceError

console = Console(stderr=True)
_STRICT = ConfigDict(extra="forbid", frozen=True)


class SimFeature(BaseModel):
    """One sparse feature of the simulated stream."""

    model_config = _STRICT

    name: str
    vocab: int = Field(ge=1, le=200_000_000)
    """Active IDs at any time (popularity slots)."""
    zipf: float = Field(1.1, ge=0.0, le=5.0)
    """Popularity exponent: slot r has weight (r + 1) ** -zipf; 0 is uniform."""
    new_id_rate: float = Field(0.0, ge=0.0, le=1.0)
    """Fraction of slots that get a new ID at each window boundary."""
    lifetime: int | None = Field(None, ge=1)
    """An ID lives at most this many windows, then its slot gets a new ID; None: no limit."""
    effect_std: float = Field(0.5, ge=0.0)
    drift_std: float = Field(0.0, ge=0.0)
    """Std of the random-walk step of every hidden effect per window (concept drift)."""


class SimDense(BaseModel):
    model_config = _STRICT

    name: str
    weight: float = 0.5
    """Coefficient on the click logit; the value is N(0, 1)."""


class SimulatorConfig(BaseModel):
    """The `source.simulator` section of a feature YAML (see embedding/schemas/simulated.yaml)."""

    model_config = _STRICT

    features: tuple[SimFeature, ...]
    dense: tuple[SimDense, ...] = ()
    events_per_window: int = Field(10_000, ge=1)
    windows: int | None = Field(None, ge=1)
    """Windows to generate; None: without end."""
    window_ms: int = Field(60_000, ge=1)
    start_ms: int = Field(1_700_000_000_000, ge=0)
    bias: float = -1.0
    bias_drift: float = 0.0
    """Change of the global bias per window."""
    seed: int = 0
    key: str | None = None
    """Message key feature when produced to Kafka; default: the first feature."""

    @model_validator(mode="after")
    def _check(self) -> SimulatorConfig:
        names = [f.name for f in self.features] + [d.name for d in self.dense]
        if not self.features:
            raise ValueError("the simulator needs at least one sparse feature")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"simulator feature names must be unique; repeated: {dupes}")
        if self.key is not None and self.key not in names[: len(self.features)] and self.key != "event_id":
            raise ValueError(f"simulator key {self.key!r} is not one of its sparse features")
        return self

    @property
    def message_key(self) -> str:
        return self.key or self.features[0].name

    def with_churn(
        self, new_id_rate: float | None = None, lifetime: int | None = None, drift_std: float | None = None
    ) -> SimulatorConfig:
        """The same config with churn/drift knobs overridden for every feature."""
        changes: dict[str, Any] = {}
        if new_id_rate is not None:
            changes["new_id_rate"] = new_id_rate
        if lifetime is not None:
            changes["lifetime"] = lifetime
        if drift_std is not None:
            changes["drift_std"] = drift_std
        feats = tuple(SimFeature.model_validate(f.model_dump() | changes) for f in self.features)
        return self.model_copy(update={"features": feats})

    @classmethod
    def from_schema(cls, schema: FeatureSchema) -> SimulatorConfig:
        """Read `source.simulator` of a feature schema; its features must be exactly the schema's."""
        raw = (schema.source or {}).get("simulator")
        if raw is None:
            raise SourceError(f"feature schema {schema.name!r} has no `source.simulator` section")
        extra = sorted(set(schema.source or {}) - {"simulator"})
        if extra:
            raise SourceError(f"schema {schema.name!r}: source.simulator cannot be combined with {extra}")
        try:
            config = cls.model_validate(raw)
        except ValidationError as exc:
            raise SourceError(f"schema {schema.name!r}: invalid source.simulator: {exc}") from exc
        sparse = [f.name for f in config.features]
        dense = [d.name for d in config.dense]
        if sorted(sparse) != sorted(schema.sparse_names) or sorted(dense) != sorted(schema.dense_names):
            raise SourceError(
                f"schema {schema.name!r}: simulator features {sparse} + {dense} differ from the schema's "
                f"{schema.sparse_names} + {schema.dense_names}"
            )
        bad = [s.name for s in schema.sparse if s.dtype != "int"]
        if bad:
            raise SourceError(f"schema {schema.name!r}: simulated IDs are integers; set dtype: int for {bad}")
        return config


# ---------------------------------------------------------------------------------------------- state


@dataclass
class _FeatureState:
    spec: SimFeature
    ids: np.ndarray
    """int64 [vocab]: the ID in each popularity slot."""
    birth: np.ndarray
    """int64 [vocab]: the window each slot's ID was born in."""
    effect: np.ndarray
    next_id: int
    last_seen: np.ndarray = field(default_factory=lambda: np.full(0, -1, dtype=np.int64))
    """Per ID: the last window it appeared in (-1: never). Grows with the ID space."""
    prev_seen: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    """Distinct IDs of the previous window."""


@dataclass(frozen=True)
class FeatureTruth:
    distinct: int
    new: int
    vanished: int
    born: int
    retired: int
    active: int


@dataclass(frozen=True)
class WindowTruth:
    window: int
    start_ms: int
    end_ms: int
    events: int
    features: dict[str, FeatureTruth]

    def as_dict(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "events": self.events,
            "features": {name: t.__dict__ for name, t in self.features.items()},
        }


@dataclass
class Window:
    """One window of event time [start_ms, end_ms), columnar, events sorted by ts."""

    index: int
    start_ms: int
    end_ms: int
    ts: np.ndarray
    ids: dict[str, np.ndarray]
    dense: dict[str, np.ndarray]
    label: np.ndarray
    p: np.ndarray
    """True click probability of each event."""
    truth: WindowTruth
    seed: int
    offset: int
    """Index of the window's first event in the whole stream."""

    def __len__(self) -> int:
        return int(self.ts.shape[0])

    def events(self) -> Iterator[Event]:
        ts = self.ts.tolist()
        label = self.label.tolist()
        sparse_cols = [(name, col.tolist()) for name, col in self.ids.items()]
        dense_cols = [(name, col.tolist()) for name, col in self.dense.items()]
        prefix = f"sim{self.seed}-"
        for i in range(len(ts)):
            yield Event(
                event_id=f"{prefix}{self.offset + i}",
                ts=ts[i],
                label=label[i],
                dense={name: col[i] for name, col in dense_cols},
                sparse={name: col[i] for name, col in sparse_cols},
            )


class Simulator:
    """Generates the stream window by window; deterministic for a given config (seed included)."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self._rng = np.random.default_rng(config.seed)
        self._features: list[_FeatureState] = []
        for spec in config.features:
            self._features.append(
                _FeatureState(
                    spec=spec,
                    ids=np.arange(spec.vocab, dtype=np.int64),
                    # staggered ages, so that with a lifetime about vocab/lifetime IDs retire per window
                    birth=-self._rng.integers(0, spec.lifetime, spec.vocab, dtype=np.int64)
                    if spec.lifetime
                    else np.zeros(spec.vocab, dtype=np.int64),
                    effect=self._rng.normal(0.0, spec.effect_std, spec.vocab),
                    next_id=spec.vocab,
                )
            )
        self._bias = config.bias
        self._window = 0
        self._emitted = 0
        self._truth: list[WindowTruth] = []

    def ground_truth(self) -> list[WindowTruth]:
        """Ground truth of every window generated so far."""
        return list(self._truth)

    def windows(self, max_events: int | None = None) -> Iterator[Window]:
        """Windows until `config.windows` (or forever); with `max_events`, the last one is cut to fit."""
        while self.config.windows is None or self._window < self.config.windows:
            n = self.config.events_per_window
            if max_events is not None:
                n = min(n, max_events - self._emitted)
                if n <= 0:
                    return
            yield self._next_window(n)

    def events(self, n: int | None = None) -> Iterator[Event]:
        """The stream as events: `n` of them (None: all windows of the config)."""
        for window in self.windows(n):
            yield from window.events()

    # ------------------------------------------------------------------------------------------ internals

    def _churn(self, state: _FeatureState, w: int) -> tuple[int, int]:
        """Replace IDs at the boundary before window w; returns (born, retired)."""
        spec, rng = state.spec, self._rng
        if w == 0:
            return 0, 0
        replace = np.zeros(spec.vocab, dtype=bool)
        if spec.new_id_rate > 0:
            replace[rng.random(spec.vocab) < spec.new_id_rate] = True
        if spec.lifetime is not None:
            replace |= (w - state.birth) >= spec.lifetime
        slots = np.flatnonzero(replace)
        k = int(slots.size)
        if k:
            state.ids[slots] = np.arange(state.next_id, state.next_id + k, dtype=np.int64)
            state.next_id += k
            state.birth[slots] = w
            state.effect[slots] = rng.normal(0.0, spec.effect_std, k)
        if spec.drift_std > 0:
            state.effect += rng.normal(0.0, spec.drift_std, spec.vocab)
        return k, k

    def _next_window(self, n: int) -> Window:
        cfg, rng, w = self.config, self._rng, self._window
        if w > 0:
            self._bias += cfg.bias_drift
        start = cfg.start_ms + w * cfg.window_ms
        ts = np.sort(rng.integers(0, cfg.window_ms, n, dtype=np.int64)) + start
        logit = np.full(n, self._bias, dtype=np.float64)
        ids: dict[str, np.ndarray] = {}
        truths: dict[str, FeatureTruth] = {}
        for state in self._features:
            born, retired = self._churn(state, w)
            slots = _zipf_slots(rng.random(n), state.spec.vocab, state.spec.zipf)
            ids[state.spec.name] = state.ids[slots]
            logit += state.effect[slots]
            truths[state.spec.name] = self._observe(state, ids[state.spec.name], w, born, retired)
        dense: dict[str, np.ndarray] = {}
        for spec in cfg.dense:
            x = rng.standard_normal(n)
            dense[spec.name] = x
            logit += spec.weight * x
        p = 1.0 / (1.0 + np.exp(-logit))
        label = (rng.random(n) < p).astype(np.int64)
        truth = WindowTruth(w, start, start + cfg.window_ms, n, truths)
        self._truth.append(truth)
        window = Window(w, start, start + cfg.window_ms, ts, ids, dense, label, p, truth, cfg.seed, self._emitted)
        self._window += 1
        self._emitted += n
        return window

    @staticmethod
    def _observe(state: _FeatureState, values: np.ndarray, w: int, born: int, retired: int) -> FeatureTruth:
        if state.last_seen.size < state.next_id:
            grown = np.full(max(state.next_id, 2 * state.last_seen.size), -1, dtype=np.int64)
            grown[: state.last_seen.size] = state.last_seen
            state.last_seen = grown
        mark = np.zeros(state.next_id, dtype=bool)
        mark[values] = True
        distinct = np.flatnonzero(mark)
        new = int(np.count_nonzero(state.last_seen[distinct] < 0))
        state.last_seen[distinct] = w
        vanished = int(np.count_nonzero(state.last_seen[state.prev_seen] != w))
        state.prev_seen = distinct
        return FeatureTruth(int(distinct.size), new, vanished, born, retired, state.spec.vocab)


def _zipf_slots(u: np.ndarray, vocab: int, a: float) -> np.ndarray:
    """Popularity slots in [0, vocab) by inverse transform of the continuous power law x ** -a on
    [0.5, vocab + 0.5): slot r gets the mass of [r + 0.5, r + 1.5), close to (r + 1) ** -a (within about
    10% for the first ranks, exact in the tail). O(1) per draw, unlike a search over a CDF of `vocab` entries."""
    lo, hi = 0.5, vocab + 0.5
    if abs(a - 1.0) < 1e-9:
        x = lo * np.power(hi / lo, u)
    else:
        b = 1.0 - a
        x = np.power(lo**b + u * (hi**b - lo**b), 1.0 / b)
    slots = (x - 0.5).astype(np.int64)
    np.clip(slots, 0, vocab - 1, out=slots)
    return slots


def simulated_events(config: SimulatorConfig, n: int | None = None) -> Iterator[Event]:
    return Simulator(config).events(n)


# ---------------------------------------------------------------------------------------------- CLI


def simulate_command(
    schema: str = typer.Option("simulated", help="Feature YAML (or shipped name) with a `source.simulator` section."),
    windows: int = typer.Option(None, min=1, help="Windows of event time to generate (default: the YAML's)."),
    events_per_window: int = typer.Option(None, min=1, help="Events per window (default: the YAML's)."),
    events: int = typer.Option(None, min=1, help="Stop after this many events."),
    seed: int = typer.Option(None, help="Random seed (default: the YAML's)."),
    new_id_rate: float = typer.Option(None, min=0.0, max=1.0, help="Override: fraction of IDs replaced per window."),
    lifetime: int = typer.Option(None, min=1, help="Override: maximum ID lifetime in windows."),
    drift: float = typer.Option(None, min=0.0, help="Override: per-window drift std of the hidden effects."),
    output: str = typer.Option(None, help="Write events as JSON lines to this file ('-': stdout)."),
    truth: Path = typer.Option(None, help="Write the ground truth per window as JSON lines to this file."),
    topic: str = typer.Option(None, help="Produce the events to this Kafka topic (like `unirec produce`)."),
    bootstrap: str = typer.Option(None, help="Kafka bootstrap servers (default: $UNIREC_KAFKA_BOOTSTRAP)."),
    rate: float = typer.Option(None, min=0.001, help="Events per second into Kafka (token bucket)."),
    encoding: str = typer.Option("json", help="Event encoding on Kafka: json or msgpack."),
) -> None:
    """Generate a synthetic stream (Zipf IDs, churn, drift, known click model) with its ground truth."""
    from core.errors import UnirecError
    from embedding.schema import load_schema

    try:
        config = SimulatorConfig.from_schema(load_schema(schema))
        updates: dict[str, Any] = {}
        if windows is not None:
            updates["windows"] = windows
        if events_per_window is not None:
            updates["events_per_window"] = events_per_window
        if seed is not None:
            updates["seed"] = seed
        config = SimulatorConfig.model_validate(config.model_dump() | updates)
        config = config.with_churn(new_id_rate, lifetime, drift)
    except (UnirecError, ValidationError) as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    if config.windows is None and events is None and (output is not None or truth is not None) and topic is None:
        raise typer.BadParameter("writing files needs an end: give --windows or --events")
    if output is None and truth is None and topic is None:
        raise typer.BadParameter("say where the stream goes: --output, --truth and/or --topic")
    sim = Simulator(config)
    truth_fh = truth.open("wb") if truth else None
    try:
        if topic is not None:
            _to_kafka(sim, config, events, topic, bootstrap, rate, encoding, truth_fh)
        else:
            _to_files(sim, events, output, truth_fh)
    finally:
        if truth_fh:
            truth_fh.close()


def _to_files(sim: Simulator, events: int | None, output: str | None, truth_fh: Any) -> None:
    import msgspec

    encoder = msgspec.json.Encoder()
    out = None
    if output == "-":
        out = sys.stdout.buffer
    elif output is not None:
        out = open(output, "wb")  # noqa: SIM115 - closed below
    n = 0
    try:
        for window in sim.windows(events):
            if out is not None:
                buf = bytearray()
                for event in window.events():
                    encoder.encode_into(event, buf, len(buf))
                    buf += b"\n"
                out.write(buf)
            if truth_fh is not None:
                truth_fh.write(orjson.dumps(window.truth.as_dict()) + b"\n")
            n += len(window)
            counts = ", ".join(f"{k} {v.distinct:,}/{v.new:,}" for k, v in window.truth.features.items())
            console.print(f"window {window.index}: {len(window):,} events; distinct/new IDs: {counts}")
    finally:
        if out is not None and out is not sys.stdout.buffer:
            out.close()
    console.print(f"[green]{n:,} events[/]")


def _to_kafka(sim: Simulator, config: SimulatorConfig, events: int | None, topic: str, bootstrap: str | None,
              rate: float | None, encoding: str, truth_fh: Any) -> None:
    from services.producer import ProducerSettings, print_summary, quiet_kafka_logs, replay
    from services.replay.reader import BadRowReport

    quiet_kafka_logs()

    def stream() -> Iterator[Event]:
        for window in sim.windows(events):
            if truth_fh is not None:
                truth_fh.write(orjson.dumps(window.truth.as_dict()) + b"\n")
                truth_fh.flush()
            yield from window.events()

    settings = ProducerSettings()
    summary = replay(stream(), bootstrap or settings.kafka_bootstrap, topic, key=config.message_key,
                     encoding=encoding, rate=rate, progress=True, total=events)  # type: ignore[arg-type]
    print_summary(summary, BadRowReport())
    if summary.failed:
        raise typer.Exit(1)
