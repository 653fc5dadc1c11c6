"""Group commit: deliveries that arrive together are written in one transaction.

A webhook request's transaction is short, but on SQLite every commit waits for
an fsync, and every writer takes the one write lock in turn; under load the
requests queue behind each other's fsyncs. Here the threads of one process
that want to write at the same moment hand their work to one of them (the
leader), which writes it all in one transaction: one lock turn, one fsync,
then each thread gets its own answer. A lone request is a batch of one and
waits for nobody.

Each piece of work stays all-or-nothing. When a batch fails on something that
is not an outage (a bug, a bad value), nothing of it is kept, and its pieces
are written again one transaction each, so one bad piece fails alone. An
outage fails the whole batch: none of it was committed, and each sender gets
its own "unavailable" and retries.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Callable, Generic, Sequence, TypeVar

from ..errors import StoreUnavailable

Work = TypeVar("Work")
Result = TypeVar("Result")

MAX_BATCH = 32


class Job(Generic[Work, Result]):
    __slots__ = ("work", "done", "result", "error")

    def __init__(self, work: Work):
        self.work = work
        self.done = False
        self.result: Result | None = None
        self.error: BaseException | None = None

    def finish(self, result: Result | None = None, error: BaseException | None = None) -> None:
        self.result, self.error, self.done = result, error, True


class GroupCommit(Generic[Work, Result]):
    def __init__(self, write: Callable[[Sequence[Work]], list[Result]], max_batch: int = MAX_BATCH):
        """`write(works)` writes them all in one transaction and returns their results in order,
        or raises and keeps none of them."""
        self._write = write
        self._max = max_batch
        self._queue: deque[Job] = deque()
        self._turn = threading.Condition()  # guards the queue and `_leading`
        self._leading = False  # a thread is writing a batch

    def submit(self, work: Work) -> Result:
        job: Job = Job(work)
        self._queue.append(job)  # atomic; the leader pops under `_turn`
        while True:
            with self._turn:
                # A sender whose work is written returns as soon as its batch is committed: it
                # never waits for the next leader's transaction to see its answer.
                while not job.done and self._leading:
                    self._turn.wait()
                if job.done:
                    break
                # This thread writes what is queued (more than one batch may be ahead of its
                # own work: hence the loop).
                batch = self._take()
                self._leading = True
            try:
                self._run(batch)
            except BaseException:
                # Interrupted while writing: take this thread's own work back, if it is still
                # queued, so that nobody writes it later for a sender who was told it failed.
                with self._turn:
                    if not job.done and job in self._queue:
                        self._queue.remove(job)
                        job.finish(error=StoreUnavailable("store unavailable: the write was interrupted"))
                raise
            finally:
                with self._turn:
                    self._leading = False
                    self._turn.notify_all()
        if job.error is not None:
            raise job.error
        return job.result

    def _take(self) -> list[Job]:
        batch: list[Job] = []
        try:
            while self._queue and len(batch) < self._max:
                batch.append(self._queue.popleft())
        except BaseException:  # interrupted mid-way: what was taken is answered, not dropped
            for job in batch:
                job.finish(error=StoreUnavailable("store unavailable: the write was interrupted"))
            self._turn.notify_all()
            raise
        return batch

    def _run(self, batch: list[Job]) -> None:
        try:
            if len(batch) > 1:
                try:
                    results = self._write([job.work for job in batch])
                except StoreUnavailable as exc:
                    for job in batch:  # nothing was committed; each sender retries
                        job.finish(error=StoreUnavailable(str(exc)))
                    return
                except Exception:  # noqa: BLE001 - one bad piece: write them one by one, below
                    pass
                else:
                    for job, result in zip(batch, results, strict=True):
                        job.finish(result)
                    return
            for job in batch:
                try:
                    job.finish(self._write([job.work])[0])
                except Exception as exc:  # noqa: BLE001 - it is raised in the sender's own thread
                    job.finish(error=exc)
        finally:
            for job in batch:  # interrupted (a BaseException): never leave a sender waiting forever
                if not job.done:
                    job.finish(error=StoreUnavailable("store unavailable: the write was interrupted"))
