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

from embedding import Event, Featurizer, load_schema
from embedding.export import ExportMeta, export_model
from embedding.model import ModelConfig, build_model
from embedding.serving import load_serving_model
from embedding.store import LocalModelStore
from unirec.infra import free_port

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


def in_process(store: LocalModelStore, batches: dict[int, list[list[Event]]], requests: dict[int, int]) -> dict:
    model = load_serving_model(store)
    featurizer = Featurizer(model.schema)
    out = {}
    for batch, pool in batches.items():
        for events in pool[:5]:  # warm-up
            model.predict(featurizer(events))
        latencies = []
        started = time.perf_counter()
        for i in range(requests[batch]):
            t0 = time.perf_counter()
            model.predict(featurizer(pool[i % len(pool)]))
            latencies.append(time.perf_counter() - t0)
        out[batch] = summarise(latencies, time.perf_counter() - started, batch)
    return out


def start_server(store_dir: Path, home: Path, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "UNIREC_HOME": str(home),
        "UNIREC_REDIS_URL": "redis://127.0.0.1:1/0",
        "UNIREC_SERVE_STORE": str(store_dir),
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


def over_http(url: str, bodies: dict[int, list[bytes]], requests: dict[int, int], concurrency: int) -> dict:
    return {batch: load(url, pool, requests[batch], concurrency, batch) for batch, pool in bodies.items()}


def load(url: str, pool: list[bytes], total: int, concurrency: int, batch: int) -> dict[str, float]:
    """`total` requests from `concurrency` keep-alive clients; latency per request, throughput overall."""
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

    with httpx.Client(timeout=60) as http:  # warm-up
        for body in pool[:5]:
            http.post(url, content=body, headers=headers)
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result = summarise(latencies, time.perf_counter() - started, batch)
    result["errors"] = errors
    return result


def main(
    batch: list[int] = typer.Option([1, 64, 512], help="Events per request."),
    concurrency: list[int] = typer.Option([1, 4], help="Requests in flight over HTTP."),
    requests_per_batch: int = typer.Option(200, help="Requests per batch size (fewer for large batches)."),
    torch_threads: int = typer.Option(1, help="torch threads, in-process and in the service alike."),
) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(torch_threads)
    os.environ["UNIREC_SERVE_TORCH_THREADS"] = str(torch_threads)
    schema = load_schema("movielens")
    requests = {b: max(20, min(requests_per_batch, requests_per_batch * 64 // max(b, 64))) for b in batch}
    with tempfile.TemporaryDirectory() as tmp, Progress() as progress:
        root = Path(tmp)
        store = LocalModelStore(root / "models")
        export_model(build_model(schema, CONFIG), store, "int8", ExportMeta(watermark_ms=int(time.time() * 1000)))
        pools = {b: [make_events(b, seed) for seed in range(8)] for b in batch}
        structs = {b: [[Event(**e) for e in events] for events in pool] for b, pool in pools.items()}
        bodies = {b: [orjson.dumps({"events": events}) for events in pool] for b, pool in pools.items()}
        task = progress.add_task("in-process", total=1 + len(concurrency))
        local = in_process(store, structs, requests)
        progress.advance(task)
        port = free_port()
        progress.update(task, description="starting the service")
        server = start_server(root / "models", root, port)
        try:
            remote = {}
            for c in concurrency:
                progress.update(task, description=f"HTTP, {c} in flight")
                remote[c] = over_http(f"http://127.0.0.1:{port}/v1/predict", bodies, requests, c)
                progress.advance(task)
        finally:
            server.terminate()
            server.wait(timeout=30)
    write_report(local, remote, requests)


def write_report(local: dict, remote: dict, requests: dict[int, int]) -> None:
    lines = [
        "# Inference service: HTTP vs in-process",
        "",
        "Generated by `bench/serving.py` (see its docstring for the method). "
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f} at the end of the run (other jobs share these cores), torch "
        f"{torch.__version__} with {torch.get_num_threads()} threads. Model: MovieLens schema (6 sparse "
        f"features), unified embedding {CONFIG.method_args['num_rows']:,} x 16 int8, DCN-v2 "
        f"(cross {CONFIG.cross_layers} x rank {CONFIG.cross_rank}, over {list(CONFIG.over_arch)}). "
        "One uvicorn worker.",
        "",
        "| batch | requests | path | in flight | predictions/s | p50 ms | p99 ms | HTTP / in-process | errors |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for b, base in local.items():
        lines.append(
            f"| {b} | {requests[b]} | in-process | 1 | {base['preds_per_s']:,.0f} | {base['p50_ms']:.2f} | "
            f"{base['p99_ms']:.2f} | 1.00 | - |"
        )
        for c, per_batch in remote.items():
            r = per_batch[b]
            ratio = r["preds_per_s"] / base["preds_per_s"]
            lines.append(
                f"| {b} | {requests[b]} | HTTP | {c} | {r['preds_per_s']:,.0f} | {r['p50_ms']:.2f} | "
                f"{r['p99_ms']:.2f} | {ratio:.2f} | {r['errors']} |"
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
