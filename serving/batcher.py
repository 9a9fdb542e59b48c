"""Micro-batching: requests that arrive together share one forward pass.

Each request puts one item in a bounded queue and awaits its own future. One
worker task takes the first waiting item, gathers more for up to
``max_wait_ms`` (at most ``max_batch`` in all), and runs ``run_batch`` on
them on one worker thread of its own, so the event loop keeps accepting
requests meanwhile; while a batch runs, the next one fills. One thread, not
a pool: torch's OpenMP runtime gives every thread that calls it a team of
its own, and a rotating pool of callers left a two-core machine 12% idle. Nothing waits unboundedly: a full queue is
refused at once (``QueueFull``), and a request that gives up (its timeout)
is dropped from any batch not yet started.
"""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Sequence


class QueueFull(Exception):
    """``max_queue`` requests are already waiting."""


@dataclass
class _Job:
    item: Any
    future: asyncio.Future


class MicroBatcher:
    """``run_batch(items) -> results`` (one result per item, in order) fed
    from concurrent ``submit`` calls. ``on_batch(n)`` is told each batch's size."""

    def __init__(self, run_batch: Callable[[list], Sequence], max_batch: int = 8, max_wait_ms: float = 5.0,
                 max_queue: int = 64, on_batch: Callable[[int], None] = lambda n: None):
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError(f"need max_batch >= 1, max_queue >= 1, max_wait_ms >= 0; got "
                             f"{max_batch}, {max_queue}, {max_wait_ms}")
        self.run_batch, self.on_batch = run_batch, on_batch
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000
        self.max_queue = max_queue
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="batches")

    async def start(self) -> None:
        self._queue = asyncio.Queue(self.max_queue)
        self._task = asyncio.create_task(self._work())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._thread.shutdown(wait=False, cancel_futures=True)

    async def call(self, fn: Callable, *args):
        """``fn(*args)`` on the batch thread (e.g. a warm-up pass, so the first
        batch finds torch's threads already made)."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    @property
    def waiting(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def submit(self, item, timeout: float):
        """The result of ``item``'s batch. Raises QueueFull at once when the
        queue is full, asyncio.TimeoutError after ``timeout`` seconds, or what
        ``run_batch`` raised."""
        future = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Job(item, future))
        except asyncio.QueueFull:
            raise QueueFull(f"{self.max_queue} requests already waiting") from None
        return await asyncio.wait_for(future, timeout)  # cancels the future on timeout

    async def _work(self) -> None:
        while True:
            jobs = await self._gather()
            jobs = [job for job in jobs if not job.future.done()]  # requests that gave up are skipped
            if not jobs:
                continue
            self.on_batch(len(jobs))
            try:
                results = await self.call(self.run_batch, [job.item for job in jobs])
            except Exception as error:  # every request of the batch hears why
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(error)
                continue
            for job, result in zip(jobs, results):
                if not job.future.done():
                    job.future.set_result(result)

    async def _gather(self) -> list[_Job]:
        """The first waiting job and those that arrive within max_wait, up to max_batch."""
        jobs = [await self._queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        while len(jobs) < self.max_batch:
            if not self._queue.empty():
                jobs.append(self._queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                jobs.append(await asyncio.wait_for(self._queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return jobs
