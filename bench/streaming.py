"""Online comparison of embedding methods on the churn simulator, through Kafka and the real trainer.

    unirec bench streaming [--events 30000] [--method unified --method hashing_trick ...]

For each churn setting the simulator (`services/simulate.py`, schema `simulated`) writes one stream
into a topic of a local broker; then `unirec train` runs once per method over that same topic
(`UNIREC_TRAINER_MODEL__METHOD` / `UNIREC_TRAINER_MODEL__METHOD_ARGS` from `embedding.budget` at one shared byte
budget, `STOP_AT_END`), and its progressive validation (every event scored before it is trained
on, `UNIREC_TRAINER_PREDICTIONS_LOG`) gives AUC and log loss overall and per window of event time.
A method that copes with a moving vocabulary keeps its late-window AUC close to its early one.
Writes bench/results/quality_streaming.{json,md} (bench/report.py `write_results`, `render`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.quality import BASELINE, MC_EVICTION_INTERVAL
from core.logs import get_logger, log_event
from core.net import free_port
from embedding.budget import FP32, budget_method_args
from embedding.schema import load_schema
from services.simulate import Simulator, SimulatorConfig
from trainer.progressive import log_loss, rank_auc
from unirec.infra import LocalServer

log = get_logger("bench.streaming")

NAME = "quality_streaming"
CHURN = {"low": 0.2, "high": 5.0}
"""Multipliers of the `simulated` schema's per-feature new-ID rates (user 1%, item 2% per window)."""


@dataclass
class StreamResult:
    churn: str
    label: str
    method: str
    budget_bytes: int
    full_bytes: int
    events: int
    auc: float
    logloss: float
    auc_windows: list[float]
    wall_s: float


def churn_config(multiplier: float, events_per_window: int, windows: int, seed: int = 0) -> SimulatorConfig:
    base = SimulatorConfig.from_schema(load_schema("simulated"))
    feats = tuple(f.model_copy(update={"new_id_rate": min(1.0, f.new_id_rate * multiplier)}) for f in base.features)
    return base.model_copy(
        update={"features": feats, "events_per_window": events_per_window, "windows": windows, "seed": seed}
    )


def produce(config: SimulatorConfig, bootstrap: str, topic: str) -> list[dict]:
    """Write the simulated stream to `topic` (2 partitions); returns the ground truth per window."""
    from services.producer import quiet_kafka_logs, replay

    quiet_kafka_logs()
    sim = Simulator(config)
    truth: list[dict] = []

    def stream():  # noqa: ANN202 - generator of events
        for window in sim.windows():
            truth.append(window.truth.as_dict())
            yield from window.events()

    replay(stream(), bootstrap, topic, key=config.message_key, partitions=2)
    return truth


def train_once(home: Path, bootstrap: str, topic: str, method: str, args: dict, batch_size: int) -> Path:
    """Run `unirec train` (one rank) to the end of the topic; returns the predictions-log prefix."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNIREC_")}
    predictions = home / "predictions"
    env.update(
        UNIREC_HOME=str(home),
        UNIREC_KAFKA_BOOTSTRAP=bootstrap,
        UNIREC_TRAINER_TOPIC=topic,
        UNIREC_TRAINER_SCHEMA="simulated",
        UNIREC_TRAINER_MODEL__METHOD=method,
        UNIREC_TRAINER_MODEL__METHOD_ARGS=json.dumps(args),
        UNIREC_TRAINER_BATCH_SIZE=str(batch_size),
        UNIREC_TRAINER_START_FROM="earliest",
        UNIREC_TRAINER_STOP_AT_END="true",
        UNIREC_TRAINER_IDLE_TIMEOUT_S="3",
        UNIREC_TRAINER_METRICS_PORT="0",
        UNIREC_TRAINER_EXPORT_EVERY_S="0",
        UNIREC_TRAINER_DELTA_EVERY_S="0",
        UNIREC_TRAINER_CHECKPOINT_EVERY_S="3600",
        UNIREC_TRAINER_THREADS="1",
        UNIREC_TRAINER_PREDICTIONS_LOG=str(predictions),
    )
    logfile = home / "trainer.log"
    with logfile.open("wb") as out:
        code = subprocess.call(
            [sys.executable, "-m", "unirec.cli", "train"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    if code != 0:
        raise RuntimeError(f"trainer for {method} exited with {code}:\n{logfile.read_text()[-3000:]}")
    return predictions


def read_predictions(prefix: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores, labels, stream position) of every progressively scored event, in stream order
    (simulated event ids are `sim<seed>-<position>`)."""
    rows = []
    for path in sorted(prefix.parent.glob(prefix.name + ".rank*")):
        for line in path.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) == 4 and parts[3] in ("0", "1"):
                rows.append((int(parts[1].rsplit("-", 1)[1]), float(parts[2]), int(parts[3])))
    rows.sort()
    return (
        np.array([r[1] for r in rows]),
        np.array([r[2] for r in rows], dtype=float),
        np.array([r[0] for r in rows], dtype=np.int64),
    )


def run_streaming(
    methods: Sequence[str],
    *,
    events_per_window: int,
    windows: int,
    budget_share: float,
    batch_size: int,
    churn: dict[str, float] = CHURN,
    on_result=None,  # noqa: ANN001 - callback(StreamResult)
) -> list[StreamResult]:
    schema = load_schema("simulated")
    results: list[StreamResult] = []
    with tempfile.TemporaryDirectory(prefix="unirec-bench-stream-") as tmp:
        root = Path(tmp)
        server = LocalServer("kafka", "127.0.0.1", free_port(), root / "infra")  # type: ignore[arg-type]
        server.start(timeout=60)
        try:
            for name, multiplier in churn.items():
                config = churn_config(multiplier, events_per_window, windows)
                topic = f"bench-stream-{name}"
                truth = produce(config, server.address, topic)
                # every ID of the stream: the first window's, then each window's new ones
                seen_total = {
                    f: truth[0]["features"][f]["distinct"] + sum(w["features"][f]["new"] for w in truth[1:])
                    for f in schema.sparse_names
                }
                full = sum(seen_total[f] * schema.width(f) * FP32 for f in seen_total)
                budget = int(full * budget_share)
                variants = budget_method_args(
                    schema, budget, vocab=seen_total, variants=[m for m in methods if m != BASELINE]
                )
                if BASELINE in methods:  # managed collisions, a row per ID of the stream and the unadmitted row
                    variants[BASELINE] = ("managed_collision", {"rows": {f: n + 1 for f, n in seen_total.items()}})
                for label in methods:
                    method, args = variants[label]
                    if method == "managed_collision":  # admit new IDs within a run of a few hundred steps
                        args = {**args, "eviction_interval": MC_EVICTION_INTERVAL}
                    home = root / f"{name}-{label}"
                    home.mkdir()
                    started = time.perf_counter()
                    prefix = train_once(home, server.address, topic, method, args, batch_size)
                    wall = time.perf_counter() - started
                    scores, labels, position = read_predictions(prefix)
                    window = position // events_per_window
                    result = StreamResult(
                        churn=name,
                        label=label,
                        method=method,
                        budget_bytes=full if label == BASELINE else budget,
                        full_bytes=full,
                        events=int(scores.size),
                        auc=rank_auc(scores, labels),
                        logloss=log_loss(scores, labels),
                        auc_windows=[rank_auc(scores[window == w], labels[window == w]) for w in range(windows)],
                        wall_s=wall,
                    )
                    log_event(log, "stream_run", **{k: v for k, v in asdict(result).items() if k != "auc_windows"})
                    results.append(result)
                    if on_result is not None:
                        on_result(result)
        finally:
            server.stop()
    return results


def document(results: Sequence[StreamResult], *, events_per_window: int, windows: int, batch_size: int) -> dict:
    """The JSON document of a streaming run: every (churn, method) result and the stream's settings."""
    return {
        "events_per_window": events_per_window,
        "windows": windows,
        "batch_size": batch_size,
        "churn_multipliers": dict(CHURN),
        "mc_eviction_interval": MC_EVICTION_INTERVAL,
        "runs": [asdict(r) for r in results],
    }


def runs_of(data: dict[str, Any]) -> list[StreamResult]:
    return [StreamResult(**row) for row in data.get("runs", [])]


def render(data: dict[str, Any]) -> str:
    results = runs_of(data)
    windows, multipliers = data["windows"], data["churn_multipliers"]
    churns = list(dict.fromkeys(r.churn for r in results))
    lines = [
        "# Streaming quality under vocabulary churn",
        "",
        f"Generated by `unirec bench streaming`. The churn simulator (`simulated` schema: user, item, category, "
        f"device; Zipf IDs, drifting per-ID effects) writes {windows} windows of {data['events_per_window']:,} events "
        "into "
        "a local broker; `unirec train` (one rank, the real Kafka trainer: DMP, fused row-wise Adagrad for "
        f"TorchRec tables, Adam for the rest, batch {data['batch_size']}) trains each method once over the stream, "
        "and its progressive validation scores every event before training on it. New-ID rate per window: "
        + ", ".join(f"{c} = {multipliers.get(c, 1.0):g} x the schema's (user 1%, item 2%)" for c in churns)
        + ". Every method gets the same bytes (`embedding.budget`), a share of what collisionless tables for "
        "every ID of the stream would take; `collisionless` is managed collisions with a row for every ID of "
        "the stream (1x, the reference; not bold); managed collisions admit new IDs every "
        f"{data['mc_eviction_interval']} steps. One seed: differences under about 0.005 AUC are noise. Trainer wall "
        "time includes start-up and depends on the load of the machine when the run happened.",
        "",
        "| churn | method | budget | progressive AUC | log loss | AUC first window | AUC last window | "
        "last - first | trainer wall s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for churn in churns:
        rows = [r for r in results if r.churn == churn]
        best = max(r.auc for r in rows if r.label != BASELINE)
        for r in rows:
            auc = f"**{r.auc:.4f}**" if r.auc == best else f"{r.auc:.4f}"
            first, last = r.auc_windows[0], r.auc_windows[-1]
            lines.append(
                f"| {churn} | {r.label} | {r.budget_bytes / 1024:.0f} KiB ({r.budget_bytes / r.full_bytes:.2g}) | "
                f"{auc} | {r.logloss:.4f} | {first:.4f} | {last:.4f} | {last - first:+.4f} | {r.wall_s:.0f} |"
            )
    lines += [
        "",
        "Progressive AUC per window:",
        "",
        "| churn | method | " + " | ".join(f"w{w}" for w in range(windows)) + " |",
        "|---|---|" + "---:|" * windows,
    ]
    for r in sorted(results, key=lambda r: churns.index(r.churn)):
        lines.append(f"| {r.churn} | {r.label} | " + " | ".join(f"{a:.4f}" for a in r.auc_windows) + " |")
    return "\n".join(lines) + "\n"
