"""End-to-end trainer runs against the real broker: dead letters, exact resume, export and serving.

The SIGKILL test runs on every device: on CPU in CI, on CUDA (1 rank; 2 ranks where 2 GPUs exist)
under the `gpu` marker, so the CPU run dry-runs the very code the GPU run takes; on CPU also with 2
ranks whose ingestion runs in child processes (`ingest_process`)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from kafka import KafkaConsumer, TopicPartition

from embedding.events import Event, Featurizer
from registry.loading import load_serving_model
from registry.store import open_store
from tests.trainer.conftest import create_topic, read_predictions, run_trainer, send, start_trainer, trainer_env
from trainer.checkpoint import latest_checkpoint, read_meta
from trainer.exporting import export_checkpoint
from trainer.settings import TrainerSettings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def synthetic_events(n: int, start: int = 0, seed: int = 0) -> list[Event]:
    rng = np.random.default_rng(seed + start)
    users = rng.zipf(1.3, n) % 500
    movies = rng.zipf(1.2, n) % 300
    clicks = (rng.random(n) < np.where(movies % 3 == 0, 0.8, 0.3)).astype(int)
    return [
        Event(
            event_id=f"e{start + i}",
            ts=1_700_000_000_000 + (start + i) * 100,
            label=int(clicks[i]),
            sparse={"user": int(users[i]), "movie": int(movies[i]), "gender": "MF"[i % 2], "zip": f"z{i % 40}"},
        )
        for i in range(n)
    ]


@pytest.mark.parametrize("ingest_process", [False, True], ids=["ingest-thread", "ingest-process"])
def test_malformed_events_go_to_the_dead_letter_topic(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path, ingest_process: bool
) -> None:
    create_topic(kafka_bootstrap, topic_name, 2)
    good = synthetic_events(2000)
    bad: list[bytes] = []
    for i in range(100):
        kind = i % 4
        if kind == 0:
            bad.append(b"{not json")
        elif kind == 1:
            bad.append(json.dumps({"event_id": f"b{i}", "ts": 1, "label": 3}).encode())  # label out of range
        elif kind == 2:
            bad.append(json.dumps({"event_id": f"b{i}", "ts": 1, "sparse": {"user": 1}}).encode())  # no label
        else:
            bad.append(json.dumps({"event_id": f"b{i}", "ts": 1, "label": 1, "sparse": {"user": "abc"}}).encode())
    mixed: list[bytes | Event] = []
    for i, event in enumerate(good):
        mixed.append(event)
        if i % 20 == 0 and bad:
            mixed.append(bad.pop())
    mixed.extend(bad)
    send(kafka_bootstrap, topic_name, mixed, partitions=2)

    env = trainer_env(tmp_path, kafka_bootstrap, topic_name, predictions_log=tmp_path / "pred",
                      ingest_process=ingest_process)  # fmt: skip
    run_trainer(env, log=tmp_path / "trainer.log")
    assert ('"ingest_process_ready"' in (tmp_path / "trainer.log").read_text()) == ingest_process

    trained = {event_id for _, event_id, _, _ in read_predictions(tmp_path / "pred")}
    assert trained == {e.event_id for e in good}

    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
    tps = [TopicPartition(f"{topic_name}.dlq", p) for p in consumer.partitions_for_topic(f"{topic_name}.dlq")]
    consumer.assign(tps)
    consumer.seek_to_beginning()
    dead = []
    deadline = time.monotonic() + 30
    while len(dead) < 100 and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            dead += records
    consumer.close()
    assert len(dead) == 100
    reasons = {dict(r.headers)["reason"].decode() for r in dead}
    assert reasons == {"invalid_event", "missing_label", "bad_feature_value"}
    for record in dead:
        headers = dict(record.headers)
        assert headers["detail"]
        assert int(headers["source_offset"].decode()) >= 0
        assert headers["source_topic"].decode() == topic_name

    # the final checkpoint exports on demand, from one process, into a verified artifact
    checkpoint = latest_checkpoint(tmp_path / "checkpoints")
    assert checkpoint is not None
    settings = TrainerSettings(home=tmp_path, redis_url="redis://127.0.0.1:1/0")  # unreachable: publish is logged
    manifest = export_checkpoint(checkpoint, "fp32", settings)
    assert manifest.offsets == {topic_name: read_meta(checkpoint).offsets}
    served = load_serving_model(open_store(tmp_path / "models"), manifest.version)
    probabilities = served.predict(Featurizer(served.schema)(good[:64]))
    assert probabilities.shape == (64,) and bool(((probabilities > 0) & (probabilities < 1)).all())


def test_a_rank_without_events_does_not_hold_back_the_one_training(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    """Partition 1 (rank 1's) stays empty. While rank 0 trains, rank 1 only takes a batch that is ready:
    waiting `max_wait_ms` for one would cost every step of rank 0 that wait (the step is collective)."""
    create_topic(kafka_bootstrap, topic_name, 2)
    send(kafka_bootstrap, topic_name, synthetic_events(640), partitions=1)  # all into partition 0
    max_wait_s = 3.0
    env = trainer_env(tmp_path, kafka_bootstrap, topic_name, batch_size=64, max_wait_ms=int(max_wait_s * 1000))
    run_trainer(env, nproc=2, log=tmp_path / "trainer.log")
    lines = (tmp_path / "trainer.log").read_text().splitlines()
    stops = {d["rank"]: d for d in (json.loads(x[x.index("{"):]) for x in lines if '"event":"stopped"' in x)}
    assert stops[0]["events"] == 640 and stops[1]["events"] == 0 and stops[0]["step"] == 10, stops
    assert stops[0]["agreements"] > stops[0]["step"], "rank 1 held no batch: every step needs an agreement"
    # the first step's wait comes before the clock starts; with a wait per step the 9 others take >= 27 s
    assert stops[0]["train_seconds"] < 3 * max_wait_s, stops[0]


def test_under_backlog_one_agreement_covers_several_steps(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    """Both ranks start with a backlog: each agreement covers the batches every rank holds (at most
    AGREE_EVERY_STEPS), and still every event is trained exactly once and the ranks stop together."""
    create_topic(kafka_bootstrap, topic_name, 2)
    events = synthetic_events(4000)
    send(kafka_bootstrap, topic_name, events, partitions=2)
    env = trainer_env(tmp_path, kafka_bootstrap, topic_name, batch_size=32, predictions_log=tmp_path / "pred")
    run_trainer(env, nproc=2, log=tmp_path / "trainer.log")
    lines = (tmp_path / "trainer.log").read_text().splitlines()
    stops = {d["rank"]: d for d in (json.loads(x[x.index("{") :]) for x in lines if '"event":"stopped"' in x)}
    trained = [e for _, e, _, _ in read_predictions(tmp_path / "pred")]
    assert sorted(trained) == sorted(e.event_id for e in events), "every event trained exactly once"
    assert stops[0]["step"] == stops[1]["step"] and stops[0]["agreements"] == stops[1]["agreements"], stops
    assert stops[0]["events"] + stops[1]["events"] == len(events)
    assert stops[0]["agreements"] < stops[0]["step"] / 2, stops  # one agreement per step without covering
    pinned = [set(json.loads(x[x.index("{") :])["cpus"]) for x in lines if '"event":"cpu affinity"' in x]
    if len(os.sched_getaffinity(0)) >= 2:  # each rank on its own share of the CPUs
        assert len(pinned) == 2 and not pinned[0] & pinned[1] and pinned[0] | pinned[1] == os.sched_getaffinity(0)


INT8_BOUND = 1e-2
"""Largest |served int8 probability - fp32 probability| (tests/registry/test_roundtrip.py)."""

DEVICES = [
    pytest.param("cpu", 1, False, id="cpu"),
    pytest.param("cpu", 2, True, id="cpu-2ranks-ingest-process"),
    pytest.param("cuda", 1, False, id="cuda-1rank", marks=pytest.mark.gpu),
    pytest.param("cuda", 1, True, id="cuda-1rank-ingest-process", marks=pytest.mark.gpu),
    pytest.param("cuda", 2, False, id="cuda-2ranks", marks=[pytest.mark.gpu, pytest.mark.skipif(
        torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")]),
]  # fmt: skip


@pytest.mark.parametrize(("device", "nproc", "ingest_process"), DEVICES)
def test_sigkill_then_resume_trains_every_event_once_after_the_checkpoint(
    kafka_bootstrap: str, redis_url: str, topic_name: str, tmp_path: Path, device: str, nproc: int,
    ingest_process: bool, no_rendezvous_env: None,
) -> None:  # fmt: skip
    create_topic(kafka_bootstrap, topic_name, 2)
    first = synthetic_events(4000)
    send(kafka_bootstrap, topic_name, first, partitions=2)
    env = trainer_env(tmp_path, kafka_bootstrap, topic_name, stop_at_end="false", checkpoint_every_events=1500,
                      batch_size=32, device=device, ingest_process=ingest_process)  # fmt: skip
    proc = start_trainer(env | {"UNIREC_TRAINER_PREDICTIONS_LOG": str(tmp_path / "run1")}, nproc,
                         log=tmp_path / "run1.log")  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            ckpt = latest_checkpoint(tmp_path / "checkpoints")
            if ckpt is not None and read_meta(ckpt).events >= 3000:
                break
            assert proc.poll() is None, (tmp_path / "run1.log").read_text()[-3000:]
            time.sleep(0.05)
        # keep the stream going, then kill mid-stream without any chance to checkpoint
        send(kafka_bootstrap, topic_name, synthetic_events(3000, start=4000), partitions=2)
        time.sleep(1.0)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    checkpoint = read_meta(latest_checkpoint(tmp_path / "checkpoints"))  # type: ignore[arg-type]
    assert ((tmp_path / "run1.log").read_text().count('"ingest_process_ready"') == nproc) == ingest_process

    run_trainer(env | {"UNIREC_TRAINER_PREDICTIONS_LOG": str(tmp_path / "run2"), "UNIREC_TRAINER_STOP_AT_END": "true"},
                nproc, log=tmp_path / "run2.log")  # fmt: skip

    run1 = read_predictions(tmp_path / "run1")
    run2 = read_predictions(tmp_path / "run2")
    before = {e for step, e, _, _ in run1 if step <= checkpoint.step}
    after_ckpt_run1 = {e for step, e, _, _ in run1 if step > checkpoint.step}
    resumed = [e for _, e, _, _ in run2]
    assert len(before) == checkpoint.events, "the checkpoint covers exactly the events trained up to its step"
    assert not before & set(resumed), "an event before the checkpoint was trained again"
    assert len(resumed) == len(set(resumed)), "an event was trained twice after resume"
    everything = {e.event_id for e in first} | {f"e{i}" for i in range(4000, 7000)}
    assert before | set(resumed) == everything, "an event after the checkpoint was skipped"
    assert after_ckpt_run1 <= set(resumed)
    assert min(step for step, _, _, _ in run2) == checkpoint.step + 1

    # export the final checkpoint in int8; the CPU inference model serves what the trainer's model
    # (restored on the trainer's device by the trainer's own code) predicts, within the int8 bound
    final = latest_checkpoint(tmp_path / "checkpoints")
    assert final is not None and read_meta(final).events == len(everything)
    probe = synthetic_events(256, start=7000)
    expected = trainer_probabilities(tmp_path, redis_url, device, final, probe)
    manifest = export_checkpoint(final, "int8", TrainerSettings(home=tmp_path, redis_url="redis://127.0.0.1:1/0"))
    served = load_serving_model(open_store(tmp_path / "models"), manifest.version)
    got = served.predict(Featurizer(served.schema)(probe))
    assert got.std() > 1e-3, "the trained model should not predict a constant"
    delta = (torch.as_tensor(got) - expected).abs().max().item()
    assert delta < INT8_BOUND, f"served int8 vs trainer on {device}: max |dp| = {delta}"


def trainer_probabilities(
    home: Path, redis_url: str, device: str, checkpoint: Path, events: list[Event]
) -> torch.Tensor:
    """The trainer's predictions (on CPU) for `events`: a one-rank `Trainer` on `device` restores
    `checkpoint` and scores them through its own prepare -> stage -> model path."""
    import torch.distributed as dist

    from trainer.loop import Trainer

    threads = torch.get_num_threads()
    settings = TrainerSettings(home=home / "probe", redis_url=redis_url, metrics_port=0, export_every_s=0,
                               delta_every_s=0, checkpoint_dir=checkpoint.parent, device=device)  # fmt: skip
    trainer = Trainer(settings)
    try:
        assert trainer.ctx.device.type == device
        assert trainer._resume() is not None
        prepared = trainer.prepare(trainer.featurizer(events))
        assert prepared is not None
        batch = trainer.h2d.ready(prepared.staged)
        trainer.model.eval()
        with torch.no_grad():
            return torch.sigmoid(trainer.model(batch.sparse, batch.dense)).cpu()
    finally:
        trainer.churn.close()
        dist.destroy_process_group()
        torch.set_num_threads(threads)
