"""Read the trainer's churn figures from Redis (`<UNIREC_CHURN_KEY_PREFIX>:*`) for the status page.

The trainer owns those keys; this reads whatever is there without assuming more than Redis
types: strings (JSON decoded when they are JSON), hashes (each field JSON decoded when it is),
anything else reported by its type. Bounded (at most `max_keys` keys) and cached briefly, so a
status page open in many browsers costs Redis one scan every few seconds.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import orjson
import redis


def _value(raw: bytes | str) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode(errors="replace") if isinstance(raw, bytes) else raw


class ChurnReader:
    def __init__(self, redis_url: str | None, key_prefix: str, ttl_s: float = 2.0, max_keys: int = 200) -> None:
        self.redis_url = redis_url
        self.pattern = f"{key_prefix}:*"
        self.ttl_s = ttl_s
        self.max_keys = max_keys
        self._cached: tuple[float, dict[str, Any]] | None = None
        self._lock = threading.Lock()

    def read(self) -> dict[str, Any]:
        """Values by key suffix (`<prefix>:user` -> `user`); `{}` when Redis has none or is unreachable."""
        with self._lock:
            if self._cached is not None and time.monotonic() - self._cached[0] < self.ttl_s:
                return self._cached[1]
            try:
                found = self._scan()
            except (redis.RedisError, OSError):
                found = {}
            self._cached = (time.monotonic(), found)
            return found

    def _scan(self) -> dict[str, Any]:
        if not self.redis_url:
            return {}
        client = redis.Redis.from_url(self.redis_url, socket_connect_timeout=0.3, socket_timeout=0.5)
        try:
            out: dict[str, Any] = {}
            for key in client.scan_iter(match=self.pattern, count=100):
                if len(out) >= self.max_keys:
                    break
                name = key.decode(errors="replace")[len(self.pattern) - 1 :]
                kind = client.type(key).decode()
                if kind == "string":
                    out[name] = _value(client.get(key) or b"")
                elif kind == "hash":
                    out[name] = {k.decode(errors="replace"): _value(v) for k, v in client.hgetall(key).items()}
                else:
                    out[name] = {"redis_type": kind}
            return dict(sorted(out.items()))
        finally:
            client.close()
