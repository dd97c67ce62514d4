"""Micro-batching: the texts of many concurrent requests classified together, off the event loop.

A request's texts wait in a queue; one task takes what is there and, until `max_batch` texts are
gathered, waits at most `max_wait` seconds more for the requests the server is still receiving, then
hands them all to a single inference thread and gives each request its own rows back. With no other
request on its way a batch goes at once: a lone request waits for nothing, and clients that each wait
for their answer before asking again (all of them already in the batch) lose no time either. Under
load the queue fills while the thread works, so batches form at once and approach the throughput of
`predict`'s batches. One thread runs the model, so one model sits in memory and its own intra-op threads
(torch's or onnxruntime's) are never oversubscribed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

SETTLE_TURNS = 3


@dataclass
class _Job:
    texts: list[str]
    future: asyncio.Future = field(repr=False)


class MicroBatcher:
    """classify(texts) -> (len(texts), C) rows, called in one worker thread on gathered requests."""

    def __init__(self, classify: Callable[[list[str]], np.ndarray], max_batch: int, max_wait: float):
        self.classify, self.max_batch, self.max_wait = classify, max_batch, max_wait
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="lstmcli-inference")
        self.task: asyncio.Task | None = None
        self.batches = self.texts = 0  # served so far (GET /metadata shows them)
        self.arriving = 0  # requests being received: their texts are about to join the queue
        self._changed = asyncio.Event()  # a job queued or an arriving request settled

    def start(self) -> None:
        """Start gathering (on the running event loop)."""
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop gathering; the requests still queued get an error (the server drains before this)."""
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        while not self.queue.empty():
            job = self.queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(RuntimeError("the server is stopping"))
        self.executor.shutdown(wait=True)

    @contextlib.contextmanager
    def receiving(self):
        """Around a request from its arrival to enqueue(): a batch being gathered waits for it."""
        self.arriving += 1
        try:
            yield
        finally:
            self.arriving -= 1
            self._changed.set()

    def enqueue(self, texts: list[str]) -> asyncio.Future:
        """Queue `texts`; the future gives their rows, classified in whatever batch they join."""
        job = _Job(texts, asyncio.get_running_loop().create_future())
        self.queue.put_nowait(job)
        self._changed.set()
        return job.future

    async def _gather(self) -> list[_Job]:
        """One batch: the first job waited for, then others until max_batch texts, or until no request
        is on its way, or max_wait."""
        jobs = [await self.queue.get()]
        count = len(jobs[0].texts)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        while count < self.max_batch:
            if self.queue.empty() and not self.arriving:
                # requests whose bytes are in but not yet parsed are not counted yet: a few turns of the
                # event loop let them be (one to read their sockets, one to start their handlers)
                for _ in range(SETTLE_TURNS):
                    await asyncio.sleep(0)
            if self.queue.empty():
                left = deadline - loop.time()
                if not self.arriving or left <= 0:
                    break
                self._changed.clear()
                try:
                    await asyncio.wait_for(self._changed.wait(), left)
                except TimeoutError:
                    break
                continue
            job = self.queue.get_nowait()
            jobs.append(job)
            count += len(job.texts)
        return jobs

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [job for job in await self._gather() if not job.future.done()]  # (a client gone)
            texts = [text for job in jobs for text in job.texts]
            if not texts:
                continue
            try:
                rows = await loop.run_in_executor(self.executor, self.classify, texts)
            except Exception as exc:  # a failure of this batch is each of its requests' answer
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            self.batches, self.texts = self.batches + 1, self.texts + len(texts)
            start = 0
            for job in jobs:
                if not job.future.done():
                    job.future.set_result(rows[start:start + len(job.texts)])
                start += len(job.texts)
