"""Freshness: time from an event being produced to a served model whose watermark includes it.

    .venv/bin/python bench/freshness.py [--seconds 90]

Starts the whole `unirec up` stack with default settings on free ports (events stamped with the
wall clock at send time), polls the inference service's `/v1/model` every 0.2 s, and for produce
times t on a 0.1 s grid finds the first poll at which the served watermark reached t: that delay is
the event's freshness. Writes p50/p95 to bench/results/freshness.md.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from core.net import free_port
from unirec.stack import Stack, StackSettings

RESULTS = Path(__file__).parent / "results" / "freshness.md"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=90.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = StackSettings(
            home=Path(tmp), kafka_bootstrap=f"127.0.0.1:{free_port()}", redis_url=f"redis://127.0.0.1:{free_port()}/0",
            serve_port=free_port(), trainer_metrics_port=free_port(),
        )  # fmt: skip
        stack = Stack(settings)
        stack.start()
        polls: list[tuple[float, int]] = []
        try:
            deadline = time.time() + 600
            while not stack.status().ready:
                stack.check_alive()
                if time.time() > deadline:
                    raise SystemExit("no model served within 600 s")
                time.sleep(1)
            ready_at = time.time()
            print(f"ready; polling /v1/model for {args.seconds:.0f} s", flush=True)
            with httpx.Client(base_url=stack.service_url, timeout=2) as client:
                while time.time() - ready_at < args.seconds:
                    doc = client.get("/v1/model").json()
                    if doc.get("watermark_ms"):
                        polls.append((time.time(), int(doc["watermark_ms"])))
                    time.sleep(0.2)
        finally:
            stack.stop()
    at = np.array([p[0] for p in polls])
    watermark = np.maximum.accumulate(np.array([p[1] for p in polls]) / 1000.0)
    grid = np.arange(at[0] + 10.0, watermark[-1], 0.1)  # skip the first seconds after ready
    first = np.searchsorted(watermark, grid, side="left")
    delays = at[first] - grid
    p50, p95 = np.percentile(delays, [50, 95])
    lines = [
        "# Freshness: event produced -> served by the inference service",
        "",
        f"`unirec up` defaults (replay 500 events/s, 2 trainer ranks, delta every "
        f"{StackSettings().delta_every_s:g} s, full export every {StackSettings().export_every_s:g} s), "
        f"{os.cpu_count()} cores; {len(polls)} polls of /v1/model over {args.seconds:.0f} s; "
        f"{delays.size} produce times on a 0.1 s grid.",
        "",
        "| p50 | p95 | max | target |",
        "|---:|---:|---:|---|",
        f"| {p50:.1f} s | {p95:.1f} s | {delays.max():.1f} s | p50 < 15 s |",
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
