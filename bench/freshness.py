"""Freshness: time from an event being produced to a served model whose watermark includes it.

    .venv/bin/python bench/freshness.py [--seconds 90]

Starts the whole `unirec up` stack with default settings on free ports (events stamped with the
wall clock at send time), polls the inference service's `/v1/model` every 0.2 s, and for produce
times t on a 0.1 s grid finds the first poll at which the served watermark reached t: that delay is
the event's freshness. Writes p50/p95 to bench/results/freshness.{json,md} (bench/report.py
`write_results`, `render`).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.report import machine_load, write_results
from core.net import free_port
from unirec.stack import Stack, StackSettings

NAME = "freshness"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=90.0)
    args = parser.parse_args()
    load_before = machine_load()
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
    data = {
        "seconds": args.seconds,
        "cores": os.cpu_count(),
        "load_before": load_before,
        "load_after": machine_load(),
        "rate": settings.rate,
        "ranks": settings.ranks,
        "delta_every_s": settings.delta_every_s,
        "export_every_s": settings.export_every_s,
        "polls": len(polls),
        "produce_times": int(delays.size),
        "p50_s": float(p50),
        "p95_s": float(p95),
        "max_s": float(delays.max()),
    }
    print(write_results(NAME, data, render).read_text())


def render(data: dict[str, Any]) -> str:
    lines = [
        "# Freshness: event produced -> served by the inference service",
        "",
        f"`unirec up` defaults (replay {data['rate']:g} events/s, {data['ranks']} trainer ranks, delta every "
        f"{data['delta_every_s']:g} s, full export every {data['export_every_s']:g} s), "
        f"{data['cores']} cores (load average {data['load_before']:.1f} before, {data['load_after']:.1f} after); "
        f"{data['polls']} polls of /v1/model over {data['seconds']:.0f} s; "
        f"{data['produce_times']} produce times on a 0.1 s grid.",
        "",
        "| p50 | p95 | max | target |",
        "|---:|---:|---:|---|",
        f"| {data['p50_s']:.1f} s | {data['p95_s']:.1f} s | {data['max_s']:.1f} s | p50 < 2 s |",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
