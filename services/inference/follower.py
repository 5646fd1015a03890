"""Follow the model registry: Redis pub/sub for prompt swaps, polling the store as the fallback.

One daemon thread per worker process. Each export is announced on the channel `unirec:models`
as JSON `{"version", "kind": "full"|"delta"|"pointer", "seq", ...}`; on each notice the follower
asks the store for its serving version (pointer or newest, plus contiguous deltas) and the holder
applies the deltas (or loads in full) and swaps. Every `poll_interval_s` it also asks the store
for its latest version, so a missed message, a Redis outage, or a store without Redis still
leads to the newest model, just later. A lost Redis connection is retried with backoff while
polling goes on.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

import orjson
import redis

from core.logs import get_logger, log_event
from registry.notify import DEFAULT_CHANNEL
from services.inference.metrics import ServeMetrics
from services.inference.model_holder import ModelHolder

logger = get_logger("serve.follower")

_REDIS_ERRORS = (redis.RedisError, OSError)


class Follower:
    def __init__(
        self,
        holder: ModelHolder,
        metrics: ServeMetrics,
        redis_url: str | None,
        poll_interval_s: float = 5.0,
        channel: str = DEFAULT_CHANNEL,
    ) -> None:
        self.holder = holder
        self.metrics = metrics
        self.redis_url = redis_url
        self.poll_interval_s = poll_interval_s
        self.channel = channel
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pubsub: Any = None
        self._client: redis.Redis | None = None
        self._next_connect = 0.0
        self._backoff = 0.5
        self.notifications = 0
        self.polls = 0
        self.last_poll: float | None = None
        self.last_message: dict[str, Any] | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="unirec-model-follower", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._disconnect()

    @property
    def mode(self) -> str:
        """`pubsub` while subscribed to Redis, else `polling`."""
        return "pubsub" if self._pubsub is not None else "polling"

    def state(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "channel": self.channel,
            "poll_interval_s": self.poll_interval_s,
            "notifications": self.notifications,
            "polls": self.polls,
            "last_poll": self.last_poll,
            "last_message": self.last_message,
            "pinned": self.holder.pinned,
        }

    # -- the loop --------------------------------------------------------------------------------
    def _run(self) -> None:
        next_poll = time.monotonic() + self.poll_interval_s
        while not self._stop.is_set():
            now = time.monotonic()
            if self._pubsub is None and self.redis_url and now >= self._next_connect:
                self._connect()
            wait = max(0.0, min(next_poll - now, 0.5))
            message = None
            if self._pubsub is not None:
                message = self._receive(wait)
            else:
                self._stop.wait(wait)
            if message is not None:
                self._handle(message)
            if time.monotonic() >= next_poll:
                self.poll()
                next_poll = time.monotonic() + self.poll_interval_s

    def poll(self) -> None:
        """Ask the store for its latest version and move there (what the fallback does)."""
        self.polls += 1
        self.last_poll = time.time()
        try:
            self.holder.follow(None, "auto")
        except Exception:  # never let the thread die: the next poll tries again
            logger.exception("poll failed")
        self.metrics.refresh_age()

    def _handle(self, raw: dict[str, Any]) -> None:
        try:
            message = orjson.loads(raw["data"])
            version = str(message["version"])
            kind = str(message.get("kind", "full"))
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            log_event(logger, "bad_notification", logging.WARNING, data=str(raw.get("data"))[:200], error=str(exc))
            return
        self.notifications += 1
        self.last_message = message
        log_event(logger, "model_notified", version=version, kind=kind, seq=message.get("seq"))
        try:
            # The store says where to go (its serving pointer plus contiguous deltas): a delta notice
            # names its base version, and notices may arrive out of order or for a pinned store.
            self.holder.follow(None, "auto")
        except Exception:
            logger.exception("applying a notified version failed")

    # -- Redis -----------------------------------------------------------------------------------
    def _connect(self) -> None:
        try:
            client = redis.Redis.from_url(self.redis_url, socket_connect_timeout=1.0, socket_timeout=None)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            pubsub.subscribe(self.channel)
        except _REDIS_ERRORS as exc:
            self._next_connect = time.monotonic() + self._backoff
            log_event(
                logger, "redis_unreachable", logging.WARNING, url=self.redis_url, error=str(exc),
                retry_in_s=self._backoff, mode="polling",
            )  # fmt: skip
            self._backoff = min(self._backoff * 2, 30.0)
            return
        self._client, self._pubsub, self._backoff = client, pubsub, 0.5
        log_event(logger, "subscribed", url=self.redis_url, channel=self.channel)
        # a notification may have been missed while not subscribed: catch up now
        self.poll()

    def _receive(self, timeout: float) -> dict[str, Any] | None:
        try:
            return self._pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout)
        except _REDIS_ERRORS as exc:
            log_event(logger, "redis_lost", logging.WARNING, url=self.redis_url, error=str(exc), mode="polling")
            self._disconnect()
            self._next_connect = time.monotonic() + self._backoff
            return None

    def _disconnect(self) -> None:
        pubsub, client = self._pubsub, self._client
        self._pubsub = self._client = None
        for closable in (pubsub, client):
            if closable is not None:
                with contextlib.suppress(_REDIS_ERRORS):
                    closable.close()
