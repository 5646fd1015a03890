"""Requests/s and latency of the inference service against a bare-FastAPI peer and the model in-process.

    flock /tmp/unirec-bench.lock .venv/bin/python bench/serving.py [--rounds 3] [--duration 3]

One MovieLens-schema DCN model (unified embedding, 100k rows, int8) is exported to a temporary
store. Three paths score the same request bodies (batch 1, 64 and 512 events):

- **service**: `uvicorn --factory services.inference.app:serve_app` (one worker, access log off,
  following the store by polling, the way `unirec serve` runs it);
- **peer**: `bench/peers/bare_fastapi.py`, FastAPI validating the same request model with pydantic
  and answering a constant (the floor of HTTP + FastAPI + validation on this machine);
- **in-process**: the service's own featurize (`ServingFeaturizer`, whose remembered fingerprints
  are warm after the first round of the 16 bodies, as they are in the service; the general
  `Featurizer` is timed beside it) + `ServingModel.predict` on this thread, next to two references
  on the same batch: a plain PyTorch forward of the same weights (fp32 `F.embedding_bag` over the
  unified table on rows hashed beforehand, then the dense layers as functional calls: what the
  arithmetic costs), and the trainer's TorchRec `DCNModel` (unquantised, eval mode).

The HTTP load client is `wrk` when it is on PATH (Debian package `wrk`: one thread, keep-alive
connections, a Lua script cycling through pre-encoded bodies), else a Python client (threads with
httpx keep-alive clients, one request in flight each; it costs far more CPU than wrk, so figures
measured with it are lower and say so in the results). Each (path, batch, connections) cell runs
`--rounds` times for `--duration` seconds, paths alternating so load from other jobs hits all
alike; the results are the medians over rounds.

The swap rows run batch 1 at 4 connections twice, back to back: once untouched, once while this
process exports a delta (1,000 changed rows) every second and the service follows it. Every
figure comes from this one run; the results name the load client, machine, versions and load.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import torch
import typer
from torch.nn import functional as F  # noqa: N812

from bench.report import machine_load, write_results
from core.net import free_port
from embedding import Event, FeatureBatch, Featurizer, load_schema
from embedding.export import ExportMeta
from embedding.methods.unified import lookup_keys
from embedding.model import DCNModel, ModelConfig, build_model
from embedding.serving import ServingFeaturizer
from embedding.serving.dense_head import DenseHead
from registry.exporter import Exporter
from registry.loading import load_serving_model
from registry.store import LocalModelStore

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ModelConfig(method="unified", method_args={"num_rows": 100_000})
BATCHES = (1, 64, 512)
CONNECTIONS = (1, 4)
DELTA_ROWS = 1000
LUA = """
local bodies = {}
for line in io.lines(os.getenv("BODIES")) do bodies[#bodies + 1] = line end
local i = 0
request = function()
  i = i % #bodies + 1
  return wrk.format("POST", "/v1/predict", {["Content-Type"] = "application/json"}, bodies[i])
end
"""


def make_events(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    users, movies = rng.integers(1, 944, n), rng.zipf(1.3, n) % 1682 + 1
    return [
        {
            "event_id": f"e{seed}-{i}",
            "ts": 881250949000 + i,
            "sparse": {
                "user": int(users[i]),
                "movie": int(movies[i]),
                "age": int(18 + users[i] % 50),
                "gender": "MF"[int(users[i]) % 2],
                "occupation": f"occ{int(users[i]) % 21}",
                "zip": f"{10000 + int(users[i]) % 795}",
            },
        }
        for i in range(n)
    ]


# -- HTTP load ---------------------------------------------------------------------------------------
@dataclass
class Load:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int


_UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNIT_MS[unit]


def run_wrk(port: int, bodies_file: Path, script: Path, connections: int, duration: float) -> Load:
    argv = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--latency",
        "--timeout",
        "10s",
        "-s",
        str(script),
    ]
    out = subprocess.run(
        [*argv, f"http://127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "BODIES": str(bodies_file)},
        timeout=duration + 60,
    ).stdout
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.MULTILINE))
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non_2xx = (int(bad.group(1)) if bad else 0) + (sum(map(int, errors.groups())) if errors else 0)
    return Load(
        float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        _ms(percentiles["50"]),
        _ms(percentiles["99"]),
        total,
        non_2xx,
    )


def run_python_client(port: int, bodies: list[bytes], connections: int, duration: float) -> Load:
    """The fallback client: `connections` threads, each one keep-alive httpx client, one request in flight."""
    url = f"http://127.0.0.1:{port}/v1/predict"
    latencies: list[float] = []
    non_2xx = 0
    lock = threading.Lock()
    deadline = time.perf_counter() + duration

    def client(offset: int) -> None:
        nonlocal non_2xx
        with httpx.Client(timeout=10, headers={"content-type": "application/json"}) as http:
            i = offset
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                status = http.post(url, content=bodies[i % len(bodies)]).status_code
                with lock:
                    latencies.append(time.perf_counter() - t0)
                    non_2xx += not 200 <= status < 300
                i += 1

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ms = np.asarray(latencies) * 1000
    wall = time.perf_counter() - started
    return Load(len(ms) / wall, float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), len(ms), non_2xx)


def start(argv: list[str], env: dict[str, str], log: Path, port: int) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{argv[3]} exited with {proc.returncode}; see {log}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.terminate()
    raise RuntimeError(f"{argv[3]} did not become ready within 300 s; see {log}")


def uvicorn(factory: str, port: int, workers: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        factory,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--no-access-log",
        "--log-level",
        "warning",
    ]


# -- in-process --------------------------------------------------------------------------------------
class PlainForward:
    """The trained model's arithmetic in plain PyTorch: rows hashed beforehand (`prepare`), one fp32
    `F.embedding_bag` over the unified table, the dense layers as functional calls (`DenseHead`)."""

    def __init__(self, model: DCNModel) -> None:
        method = model.sparse
        if method.num_blocks != 1 or any(spec.pooling != "sum" for spec in model.schema.sparse):
            raise ValueError("the plain reference covers one block of sum-pooled features")
        self.method = method
        self.weight = method.ebc.embedding_bags[method.table_name(0)].weight.detach()
        self.head = DenseHead(model)
        self.keys = len(lookup_keys(model.schema))

    def prepare(self, batch: FeatureBatch) -> tuple[torch.Tensor, torch.Tensor]:
        rows, lengths = self.method.rows(batch.sparse)
        return rows, torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)[:-1]])

    def __call__(self, rows: torch.Tensor, offsets: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        n = dense.shape[0]
        pooled = F.embedding_bag(rows, self.weight, offsets, mode="sum")  # [keys * n, d], key-major
        x = pooled.view(self.keys, n, -1).transpose(0, 1).reshape(n, -1)
        return torch.sigmoid(self.head(x, dense))


def in_process(model: Any, trained: DCNModel, pool: list[list[Event]], calls: int) -> dict[str, float]:
    """Median ms of the service's featurize, of `ServingModel.predict`, of both, of the general
    featurizer, and of the two reference forwards."""
    featurizer, general, plain = ServingFeaturizer(model.schema), Featurizer(model.schema), PlainForward(trained)
    times: dict[str, list[float]] = {k: [] for k in ("featurize", "forward", "total", "general", "plain", "torchrec")}
    with torch.inference_mode():
        for i in range(calls):
            events = pool[i % len(pool)]
            t0 = time.perf_counter()
            batch = featurizer(events)
            t1 = time.perf_counter()
            model.predict(batch)
            t2 = time.perf_counter()
            general(events)
            rows, offsets = plain.prepare(batch)
            t3 = time.perf_counter()
            plain(rows, offsets, batch.dense)
            t4 = time.perf_counter()
            torch.sigmoid(trained(batch.sparse, batch.dense))
            t5 = time.perf_counter()
            for key, seconds in zip(times, (t1 - t0, t2 - t1, t2 - t0, t3 - t2, t4 - t3, t5 - t4), strict=True):
                times[key].append(seconds)
    med = lambda xs: statistics.median(xs) * 1000  # noqa: E731
    return {
        "featurize_ms": med(times["featurize"]),
        "forward_ms": med(times["forward"]),
        "total_ms": med(times["total"]),
        "p99_total_ms": float(np.percentile(times["total"], 99) * 1000),
        "general_featurize_ms": med(times["general"]),
        "reference_forward_ms": med(times["plain"]),
        "torchrec_forward_ms": med(times["torchrec"]),
    }


def scrape(port: int) -> dict[str, float]:
    """The batching counters of the service's /metrics."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    out = {}
    for name in ("unirec_serve_forwards_total", "unirec_serve_forward_events_sum", "unirec_serve_forward_requests_sum"):
        match = re.search(rf"^{name} ([\d.e+]+)$", text, re.MULTILINE)
        out[name] = float(match.group(1)) if match else 0.0
    return out


def med_load(loads: list[Load]) -> dict[str, float]:
    return {
        "requests_per_s": statistics.median(x.requests_per_s for x in loads),
        "p50_ms": statistics.median(x.p50_ms for x in loads),
        "p99_ms": statistics.median(x.p99_ms for x in loads),
        "requests": sum(x.requests for x in loads),
        "non_2xx": sum(x.non_2xx for x in loads),
        "runs": len(loads),
    }


def main(
    rounds: int = typer.Option(3, help="Runs of every cell; results are medians."),
    duration: float = typer.Option(3.0, help="Seconds per HTTP run."),
    in_process_calls: int = typer.Option(2000, help="Calls per batch size in-process (fewer for large batches)."),
    swap_duration: float = typer.Option(10.0, help="Seconds of each swap row (deltas every second in one)."),
    python_client: bool = typer.Option(False, help="Use the Python client even when wrk is on PATH."),
    max_load: float = typer.Option(8.0, help="Refuse to start above this one-minute load average."),
    workers: int = typer.Option(1, min=1, help="uvicorn worker processes of the service and of the peer alike."),
) -> None:
    if machine_load() > max_load:
        raise SystemExit(f"load average {machine_load():.2f} > {max_load}: the machine is busy (--max-load)")
    client = "wrk" if shutil.which("wrk") and not python_client else "python"
    torch.manual_seed(0)
    torch.set_num_threads(1)
    schema = load_schema("movielens")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store = LocalModelStore(root / "models")
        trained = build_model(schema, CONFIG).eval()
        exporter = Exporter(store, "int8", retention=None)
        exporter.export_full(trained, ExportMeta(watermark_ms=int(time.time() * 1000)))
        model = load_serving_model(store)
        pools = {b: [make_events(b, seed) for seed in range(16)] for b in BATCHES}
        bodies = {b: [orjson.dumps({"events": events}) for events in pool] for b, pool in pools.items()}
        script = root / "post.lua"
        script.write_text(LUA)
        for b in BATCHES:
            (root / f"bodies-{b}.jsonl").write_bytes(b"\n".join(bodies[b]) + b"\n")

        inproc: dict[int, list[dict[str, float]]] = {b: [] for b in BATCHES}
        structs = {b: [[Event(**e) for e in events] for events in pool] for b, pool in pools.items()}
        ports = {"service": free_port(), "peer": free_port()}
        env = {
            "UNIREC_HOME": str(root),
            "UNIREC_REDIS_URL": "redis://127.0.0.1:1/0",
            "UNIREC_MODEL_STORE": str(root / "models"),
            "UNIREC_SERVE_FOLLOW": "true",
            "UNIREC_SERVE_POLL_INTERVAL_S": "0.25",
            "UNIREC_SERVE_ACCESS_LOG": "false",
            "UNIREC_SERVE_MAX_BATCH": "4096",
            "UNIREC_SERVE_REQUEST_TIMEOUT_S": "10",
            "UNIREC_SERVE_TORCH_THREADS": "1",
        }
        servers = [
            start(
                uvicorn("services.inference.app:serve_app", ports["service"], workers),
                env,
                root / "service.log",
                ports["service"],
            ),
            start(uvicorn("bench.peers.bare_fastapi:create_app", ports["peer"], workers), {}, root / "peer.log", ports["peer"]),
        ]

        def load(path: str, b: int, c: int, seconds: float) -> Load:
            if client == "wrk":
                return run_wrk(ports[path], root / f"bodies-{b}.jsonl", script, c, seconds)
            return run_python_client(ports[path], bodies[b], c, seconds)

        http: dict[tuple[str, int, int], list[Load]] = {}
        batching: dict[str, dict[str, float]] = {}
        swap: dict[str, list[Load]] = {"without_deltas": [], "with_deltas": []}
        deltas_applied = 0
        try:
            for b in BATCHES:  # warm every path
                in_process(model, trained, structs[b], 20)
                for path in ports:
                    load(path, b, 1, 1.0)
            for r in range(rounds):
                for b in BATCHES:
                    calls = max(50, in_process_calls * 64 // max(b, 64))
                    inproc[b].append(in_process(model, trained, structs[b], calls))
                    for c in CONNECTIONS:
                        for path in ports:
                            before = scrape(ports["service"]) if path == "service" else {}
                            http.setdefault((path, b, c), []).append(load(path, b, c, duration))
                            if path == "service" and r == rounds - 1:
                                after = scrape(ports["service"])
                                batching[f"{b}x{c}"] = {k: after[k] - before[k] for k in after}
                        print(
                            f"round {r + 1}/{rounds} batch {b} c={c}: "
                            + ", ".join(
                                f"{p} {http[(p, b, c)][-1].requests_per_s:,.0f}/s "
                            f"p50 {http[(p, b, c)][-1].p50_ms:.2f} ms"
                                for p in ports
                            ),
                            flush=True,
                        )
            version = httpx.get(f"http://127.0.0.1:{ports['service']}/v1/model").json()["version"]
            for _ in range(rounds):
                swap["without_deltas"].append(load("service", 1, 4, swap_duration))
                deltas_applied += with_deltas(
                    exporter,
                    trained,
                    swap_duration,
                    lambda: swap["with_deltas"].append(load("service", 1, 4, swap_duration)),
                )
            served = httpx.get(f"http://127.0.0.1:{ports['service']}/v1/model").json()["version"]
        finally:
            for server in servers:
                server.terminate()
                server.wait(timeout=30)

    data = {
        "machine": {
            "arch": platform.machine(),
            "cores": os.cpu_count(),
            "load_average_end": round(machine_load(), 2),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "method": {
            "client": client,
            "rounds": rounds,
            "duration_s": duration,
            "torch_threads": 1,
            "model": f"MovieLens schema, unified {CONFIG.method_args['num_rows']:,} x {schema.embedding_dim} int8, "
            f"DCN-v2 cross {CONFIG.cross_layers} x rank {CONFIG.cross_rank}, over {list(CONFIG.over_arch)}",
            "service": f"uvicorn, {workers} worker{'s' if workers > 1 else ''} (the peer too), access log off, "
            "following the store (polling 0.25 s)",
        },
        "http": [
            {
                "path": p,
                "batch": b,
                "connections": c,
                **med_load(loads),
                "predictions_per_s": statistics.median(x.requests_per_s for x in loads) * b,
            }
            for (p, b, c), loads in sorted(http.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0]))
        ],
        "in_process": [
            {"batch": b, **{k: statistics.median(run[k] for run in runs) for k in runs[0]}, "runs": len(runs)}
            for b, runs in inproc.items()
        ],
        "batching": batching,
        "swaps": {
            **{k: med_load(v) for k, v in swap.items()},
            "deltas_applied": deltas_applied,
            "delta_rows": DELTA_ROWS,
            "first_version": version,
            "last_version": served,
        },
    }
    print(write_results("serving", data, render).read_text())


def with_deltas(exporter: Exporter, model: torch.nn.Module, seconds: float, run: Any) -> int:
    """Run `run()` while a thread exports a delta of DELTA_ROWS changed rows every second; deltas exported."""
    stop = threading.Event()
    count = 0
    table = next(iter(exporter.base.tables)).key
    weights = model.state_dict()[table]
    generator = torch.Generator().manual_seed(1)

    def publish() -> None:
        nonlocal count
        while not stop.wait(1.0):
            rows = torch.randint(0, weights.shape[0], (DELTA_ROWS,), generator=generator).unique()
            with torch.no_grad():
                weights[rows] += 0.01
            exporter.export_delta({table: rows}, model)
            count += 1

    thread = threading.Thread(target=publish)
    thread.start()
    try:
        run()
    finally:
        stop.set()
        thread.join()
    return count


# -- rendering ---------------------------------------------------------------------------------------
def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "-"


def render(data: dict[str, Any]) -> str:
    m, how = data["machine"], data["method"]
    cells = {(r["path"], r["batch"], r["connections"]): r for r in data["http"]}
    lines = [
        "# Inference service: HTTP against a bare FastAPI peer and the model in-process",
        "",
        f"Generated by `bench/serving.py` (method in its docstring). Machine: {m['arch']}, {m['cores']} cores, "
        f"load average {m['load_average_end']} at the end, Python {m['python']}, torch {m['torch']} "
        f"({how['torch_threads']} thread). Model: {how['model']}. Service: {how['service']}. Load client: "
        f"`{how['client']}`; medians of {how['rounds']} runs of {how['duration_s']} s per cell.",
        "",
        "## Over HTTP",
        "",
        "| batch | conns | service req/s | peer req/s | service/peer req/s | service predictions/s "
        "| service p50 ms | peer p50 ms | p50 ratio | service p99 ms | peer p99 ms | p99 ratio | non-2xx |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for b, c in sorted({(k[1], k[2]) for k in cells}):
        s, p = cells[("service", b, c)], cells[("peer", b, c)]
        lines.append(
            f"| {b} | {c} | {s['requests_per_s']:,.0f} | {p['requests_per_s']:,.0f} | "
            f"{_ratio(s['requests_per_s'], p['requests_per_s'])} | {s['predictions_per_s']:,.0f} | "
            f"{s['p50_ms']:.2f} | {p['p50_ms']:.2f} | {_ratio(s['p50_ms'], p['p50_ms'])} | "
            f"{s['p99_ms']:.2f} | {p['p99_ms']:.2f} | {_ratio(s['p99_ms'], p['p99_ms'])} | "
            f"{s['non_2xx'] + p['non_2xx']} |"
        )
    lines += ["", "Throughput at 4 connections over 1 connection (batch 1 and 64):", ""]
    lines += ["| batch | service c4/c1 | peer c4/c1 |", "|---:|---:|---:|"]
    for b in sorted({k[1] for k in cells}):
        if ("service", b, 4) in cells and ("service", b, 1) in cells:
            ratios = [
                _ratio(cells[(p, b, 4)]["requests_per_s"], cells[(p, b, 1)]["requests_per_s"])
                for p in ("service", "peer")
            ]
            lines.append(f"| {b} | {ratios[0]} | {ratios[1]} |")
    lines += [
        "",
        "## Dynamic batching in the service (last round, from /metrics)",
        "",
        "| batch | conns | forwards | requests per forward | events per forward |",
        "|---:|---:|---:|---:|---:|",
    ]
    for key, v in data["batching"].items():
        b, c = key.split("x")
        forwards = v["unirec_serve_forwards_total"]
        per = lambda name, v=v, forwards=forwards: f"{v[name] / forwards:.2f}" if forwards else "-"  # noqa: E731
        lines.append(
            f"| {b} | {c} | {forwards:,.0f} | {per('unirec_serve_forward_requests_sum')} | "
            f"{per('unirec_serve_forward_events_sum')} |"
        )
    lines += [
        "",
        "## In-process (this thread, medians per call)",
        "",
        "Featurize: the service's `ServingFeaturizer` (fingerprints of the bodies' values remembered); "
        "the general `Featurizer` beside it. References on the same batch: plain PyTorch (fp32 "
        "`F.embedding_bag` on rows hashed beforehand + functional dense layers) and the trainer's TorchRec "
        "`DCNModel`.",
        "",
        "| batch | featurize ms | forward ms | featurize + forward ms | p99 ms | general featurize ms "
        "| plain PyTorch forward ms | TorchRec module forward ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in data["in_process"]:
        lines.append(
            f"| {r['batch']} | {r['featurize_ms']:.3f} | {r['forward_ms']:.3f} | {r['total_ms']:.3f} | "
            f"{r['p99_total_ms']:.3f} | {r['general_featurize_ms']:.3f} | {r['reference_forward_ms']:.3f} | "
            f"{r['torchrec_forward_ms']:.3f} |"
        )
    sw = data["swaps"]
    a, d = sw["without_deltas"], sw["with_deltas"]
    lines += [
        "",
        "## Swaps under load (batch 1, 4 connections)",
        "",
        f"{sw['deltas_applied']} deltas of up to {sw['delta_rows']:,} rows, one per second, served "
        f"{sw['first_version']} through {sw['last_version']}.",
        "",
        "| run | req/s | p50 ms | p99 ms | p99 / p99 without deltas | non-2xx |",
        "|---|---:|---:|---:|---:|---:|",
        f"| without deltas | {a['requests_per_s']:,.0f} | {a['p50_ms']:.2f} | {a['p99_ms']:.2f} | 1.00 | "
        f"{a['non_2xx']} |",
        f"| a delta every second | {d['requests_per_s']:,.0f} | {d['p50_ms']:.2f} | {d['p99_ms']:.2f} | "
        f"{_ratio(d['p99_ms'], a['p99_ms'])} | {d['non_2xx']} |",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    typer.run(main)
