"""Predictions/s and latency of the inference service over HTTP, against the same model in-process.

    .venv/bin/python bench/serving.py [--batch 1 --batch 64 --batch 512] [--concurrency 1 --concurrency 4]

One MovieLens-schema DCN model (unified embedding, 100k rows, int8) is exported to a temporary
store. The baseline calls that artifact's `ServingModel` in this process: featurize the batch's
`Event` structs, one forward (what the service does per request, minus HTTP). The service runs
as `uvicorn --factory services.inference.app:serve_app` (one worker, access log on, its lines
sent to a file) on loopback; the client posts pre-encoded JSON bodies over keep-alive
connections, `concurrency` requests in flight. Both sides run on this machine's cores (client
included), so ratios are measured in the same run, never across runs. Writes
bench/results/serving.md.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import orjson
import torch
import typer
from rich.progress import Progress

from core.net import free_port
from embedding import Event, Featurizer, load_schema
from embedding.export import ExportMeta
from embedding.model import ModelConfig, build_model
from embedding.serving import ServingModel
from registry.exporter import export_model
from registry.loading import load_serving_model
from registry.store import LocalModelStore

RESULTS = Path(__file__).parent / "results" / "serving.md"
ROOT = Path(__file__).resolve().parents[1]
CONFIG = ModelConfig(method="unified", method_args={"num_rows": 100_000})


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


def summarise(latencies: list[float], wall: float, batch: int) -> dict[str, float]:
    ms = np.asarray(latencies) * 1000
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "preds_per_s": len(latencies) * batch / wall,
    }


def in_process(model: ServingModel, pool: list[list[Event]], total: int) -> tuple[list[float], float]:
    """Latencies of `total` featurize + forward calls on this thread, and the wall time they took."""
    featurizer = Featurizer(model.schema)
    latencies = []
    started = time.perf_counter()
    for i in range(total):
        t0 = time.perf_counter()
        model.predict(featurizer(pool[i % len(pool)]))
        latencies.append(time.perf_counter() - t0)
    return latencies, time.perf_counter() - started


def start_server(store_dir: Path, home: Path, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "UNIREC_HOME": str(home),
        "UNIREC_REDIS_URL": "redis://127.0.0.1:1/0",
        "UNIREC_MODEL_STORE": str(store_dir),
        "UNIREC_SERVE_FOLLOW": "false",
        "UNIREC_SERVE_MAX_BATCH": "4096",
        "UNIREC_SERVE_REQUEST_TIMEOUT_S": "30",
    }
    argv = [sys.executable, "-m", "uvicorn", "--factory", "services.inference.app:serve_app"]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--no-access-log", "--log-level", "warning"]
    log = open(home / "serve.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the service exited with {proc.returncode}; see {home / 'serve.log'}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise RuntimeError("the service did not become ready within 300 s")


def over_http(url: str, pool: list[bytes], total: int, concurrency: int) -> tuple[list[float], float, int]:
    """`total` requests from `concurrency` keep-alive clients: latencies, wall time, non-200 answers."""
    headers = {"content-type": "application/json"}
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    counter = iter(range(total))

    def client() -> None:
        nonlocal errors
        with httpx.Client(timeout=60) as http:
            for i in counter:  # shared iterator: each request index is taken once
                t0 = time.perf_counter()
                response = http.post(url, content=pool[i % len(pool)], headers=headers)
                elapsed = time.perf_counter() - t0
                with lock:
                    latencies.append(elapsed)
                    errors += response.status_code != 200

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, time.perf_counter() - started, errors


def main(
    batch: list[int] = typer.Option([1, 64, 512], help="Events per request."),
    concurrency: list[int] = typer.Option([1, 4], help="Requests in flight over HTTP."),
    requests_per_batch: int = typer.Option(200, help="Requests per batch size and path (fewer for large batches)."),
    rounds: int = typer.Option(5, help="Rounds alternating the paths, so load from other jobs hits all alike."),
    torch_threads: int = typer.Option(1, help="torch threads, in-process and in the service alike."),
) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(torch_threads)
    os.environ["UNIREC_SERVE_TORCH_THREADS"] = str(torch_threads)
    schema = load_schema("movielens")
    requests = {b: max(20, min(requests_per_batch, requests_per_batch * 64 // max(b, 64))) for b in batch}
    paths = [("in-process", 1)] + [("HTTP", c) for c in concurrency]
    samples: dict[tuple[int, str, int], dict] = {
        (b, p, c): {"latencies": [], "wall": 0.0, "errors": 0} for b in batch for p, c in paths
    }
    with tempfile.TemporaryDirectory() as tmp, Progress() as progress:
        root = Path(tmp)
        store = LocalModelStore(root / "models")
        export_model(build_model(schema, CONFIG), store, "int8", ExportMeta(watermark_ms=int(time.time() * 1000)))
        model = load_serving_model(store)
        pools = {b: [make_events(b, seed) for seed in range(8)] for b in batch}
        structs = {b: [[Event(**e) for e in events] for events in pool] for b, pool in pools.items()}
        bodies = {b: [orjson.dumps({"events": events}) for events in pool] for b, pool in pools.items()}
        task = progress.add_task("starting the service", total=rounds * len(batch) * len(paths))
        port = free_port()
        url = f"http://127.0.0.1:{port}/v1/predict"
        server = start_server(root / "models", root, port)
        try:
            for b in batch:  # warm both sides
                in_process(model, structs[b], 5)
                over_http(url, bodies[b], 5, 1)
            for r in range(rounds):
                for b in batch:
                    per_round = max(1, requests[b] // rounds)
                    for p, c in paths:
                        progress.update(task, description=f"round {r + 1}/{rounds}: batch {b}, {p} x{c}")
                        if p == "in-process":
                            latencies, wall, errors = *in_process(model, structs[b], per_round), 0
                        else:
                            latencies, wall, errors = over_http(url, bodies[b], per_round, c)
                        sample = samples[(b, p, c)]
                        sample["latencies"] += latencies
                        sample["wall"] += wall
                        sample["errors"] += errors
                        progress.advance(task)
        finally:
            server.terminate()
            server.wait(timeout=30)
    results = {
        key: {**summarise(v["latencies"], v["wall"], key[0]), "errors": v["errors"], "n": len(v["latencies"])}
        for key, v in samples.items()
    }
    write_report(results, batch, paths, rounds, torch_threads)


def write_report(results: dict, batch: list[int], paths: list[tuple[str, int]], rounds: int, threads: int) -> None:
    lines = [
        "# Inference service: HTTP vs in-process",
        "",
        "Generated by `bench/serving.py` (see its docstring for the method). "
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f} at the end of the run (other jobs share these cores), torch "
        f"{torch.__version__} with {threads} thread(s) on both sides. Model: MovieLens schema (6 sparse "
        f"features), unified embedding {CONFIG.method_args['num_rows']:,} x 16 int8, DCN-v2 "
        f"(cross {CONFIG.cross_layers} x rank {CONFIG.cross_rank}, over {list(CONFIG.over_arch)}). "
        f"One uvicorn worker. {rounds} rounds alternating the paths; requests summed over rounds.",
        "",
        "| batch | path | in flight | requests | predictions/s | p50 ms | p99 ms | HTTP / in-process | errors |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for b in batch:
        base = results[(b, "in-process", 1)]["preds_per_s"]
        for p, c in paths:
            r = results[(b, p, c)]
            errors = "-" if p == "in-process" else str(r["errors"])
            lines.append(
                f"| {b} | {p} | {c} | {r['n']} | {r['preds_per_s']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                f"{r['preds_per_s'] / base:.2f} | {errors} |"
            )
    lines += [
        "",
        "Targets (2 cores): p99 < 25 ms at batch 64 over HTTP; HTTP / in-process throughput >= 0.5 at batch 512.",
        "",
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    typer.run(main)
