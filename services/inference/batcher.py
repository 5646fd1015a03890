"""Dynamic batching: predict requests that arrive together are scored in one forward.

A request is queued on the event loop; a flush is scheduled for the loop's next turn, so every
request the loop has already read (they all arrive while the previous forward runs) joins the
same forward. A single client never waits: with nothing else in flight the flush runs at once.
When other predict requests are known to be on their way (received, body or dependencies not
done yet), the flush waits for them up to `window_s`.

Forwards of up to `inline_max_events` run inline on the event loop (the forward holds the GIL, so
a hop to a thread and back costs more than it overlaps on a busy 2-core machine); larger ones run
on the scoring threads, so the loop keeps reading requests meanwhile and they form the next batch.
Requests are grouped by the `Served` model they took at their start, so a swap never mixes two
versions in one forward or one answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from embedding.events import Event
from services.inference import predictor
from services.inference.codec import RequestInvalid
from services.inference.metrics import ServeMetrics
from services.inference.model_holder import Served


@dataclass(eq=False)
class _Pending:
    served: Served
    events: Sequence[Event]
    future: asyncio.Future[np.ndarray]
    queued_at: float = field(default_factory=time.perf_counter)


class Batcher:
    def __init__(
        self,
        metrics: ServeMetrics,
        executor: Executor,
        *,
        window_s: float,
        max_events: int,
        inline_max_events: int,
        max_forwards: int,
    ) -> None:
        self.metrics = metrics
        self.executor = executor
        self.window_s = window_s
        self.max_events = max_events
        """A forward takes requests until it holds this many events (a bigger request goes alone)."""
        self.inline_max_events = inline_max_events
        self.max_forwards = max_forwards
        """Forwards running on the scoring threads at once; the rest of the queue waits for one to end."""
        self._queue: list[_Pending] = []
        self._arriving = 0
        self._threaded = 0
        self._flush_scheduled = False
        self._timer: asyncio.TimerHandle | None = None

    def expect(self) -> None:
        """A predict request has arrived; `score` (or `abandon`) follows. Lets a flush wait for it."""
        self._arriving += 1

    def abandon(self) -> None:
        """The request announced by `expect` ends without scoring (bad body, 413, no model)."""
        self._arriving -= 1

    async def score(self, served: Served, events: Sequence[Event]) -> np.ndarray:
        """This request's probabilities, from a forward shared with the requests queued alongside it."""
        loop = asyncio.get_running_loop()
        self._arriving -= 1
        pending = _Pending(served, events, loop.create_future())
        self._queue.append(pending)
        self._schedule(loop)
        return await pending.future

    # -- the loop side -------------------------------------------------------------------------------
    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        loop = asyncio.get_running_loop()
        while self._queue:
            self._queue = [p for p in self._queue if not p.future.done()]  # timed out or cancelled
            if not self._queue:
                return
            wait = self.window_s - (time.perf_counter() - self._queue[0].queued_at)
            if self._arriving > 0 and wait > 0 and self._events_queued() < self.max_events:
                self._timer = loop.call_later(wait, self._flush)
                return
            group = self._take()
            events = sum(len(p.events) for p in group)
            if events <= self.inline_max_events:
                self._run(group, events)
                continue
            if self._threaded >= self.max_forwards:
                self._queue[:0] = group  # back at the front; a thread that ends flushes again
                return
            self._threaded += 1
            work = loop.run_in_executor(self.executor, self._score, group, events)
            work.add_done_callback(lambda done, group=group: self._threaded_done(done, group))

    def _events_queued(self) -> int:
        return sum(len(p.events) for p in self._queue)

    def _take(self) -> list[_Pending]:
        """The oldest request and the queued ones on the same model, up to `max_events` events."""
        first = self._queue[0]
        group, rest, events = [first], [], len(first.events)
        for pending in self._queue[1:]:
            if pending.served is first.served and events + len(pending.events) <= self.max_events:
                group.append(pending)
                events += len(pending.events)
            else:
                rest.append(pending)
        self._queue = rest
        return group

    def _score(self, group: list[_Pending], events: int) -> list[np.ndarray | RequestInvalid]:
        outcomes = predictor.score_requests(group[0].served, [p.events for p in group], self.metrics)
        self.metrics.observe_forward(len(group), events)
        return outcomes

    def _run(self, group: list[_Pending], events: int) -> None:
        try:
            outcomes = self._score(group, events)
        except Exception as exc:  # a bug or a broken model: every request of the forward gets it (500)
            outcomes = [exc] * len(group)
        _answer(group, outcomes)

    def _threaded_done(self, done: asyncio.Future, group: list[_Pending]) -> None:
        self._threaded -= 1
        exc = done.exception() if not done.cancelled() else asyncio.CancelledError()
        _answer(group, [exc] * len(group) if exc is not None else done.result())
        if self._queue:
            self._schedule(asyncio.get_running_loop())


def _answer(group: list[_Pending], outcomes: Sequence[np.ndarray | BaseException]) -> None:
    for pending, outcome in zip(group, outcomes, strict=True):
        if pending.future.done():
            continue
        if isinstance(outcome, BaseException):
            pending.future.set_exception(outcome)
        else:
            pending.future.set_result(outcome)
