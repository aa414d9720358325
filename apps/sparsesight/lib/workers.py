"""Slow request work off the event loop: a bounded queue of worker threads for inference.

The pre-flight routes are `async def`; calling the stock (synchronous) endpoint functions there would run an
inference on the event loop and stall every other request. `InferQueue.run(fn)` runs `fn` on one of
`infer_workers` threads; up to `infer_queue` more requests wait for a thread, and any request beyond that is
answered 503 with Retry-After at once instead of piling up.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from fastapi import HTTPException

logger = logging.getLogger(__name__)


class InferQueue:
    def __init__(self, workers: int, queue: int, retry_after_s: int = 5):
        self.workers, self.queue, self.retry_after_s = workers, queue, retry_after_s
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sparsesight-infer")
        self._lock = threading.Lock()
        self._in_flight = 0
        self._running = 0

    def state(self) -> dict:
        with self._lock:
            return {"workers": self.workers, "queue": self.queue, "running": self._running,
                    "waiting": self._in_flight - self._running}

    async def run(self, fn):
        with self._lock:
            if self._in_flight >= self.workers + self.queue:
                full = True
            else:
                full, self._in_flight = False, self._in_flight + 1
        if full:
            logger.warning(f"infer queue full ({self.workers} running, {self.queue} waiting): 503")
            raise HTTPException(503, f"the server is busy: {self.workers} inferences running and {self.queue} "
                                     f"waiting; retry in {self.retry_after_s} s",
                                headers={"Retry-After": str(self.retry_after_s)})

        def counted():
            with self._lock:
                self._running += 1
            try:
                return fn()
            finally:
                with self._lock:
                    self._running -= 1

        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, counted)
        finally:
            with self._lock:
                self._in_flight -= 1
