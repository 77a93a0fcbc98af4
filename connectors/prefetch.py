"""Fetch ahead in a background thread, so network waits overlap with mapping and writing."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from service.logging import carry_context

T = TypeVar("T")
_DONE = object()


class Prefetch(Generic[T]):
    """Runs `produce()` in a daemon thread, holding at most `depth` items ahead of the reader.

    Errors raised by the producer are raised again to the reader, in order.
    """

    def __init__(self, produce: Callable[[], Iterator[T]], depth: int = 4) -> None:
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        # The thread logs with the importing run's run_id (threads do not inherit contextvars).
        self._thread = threading.Thread(
            target=carry_context(self._run), args=(produce,), daemon=True
        )
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, produce: Callable[[], Iterator[T]]) -> None:
        try:
            for item in produce():
                if not self._put(item):
                    return
        except BaseException as exc:  # handed to the reader, who decides what it means
            self._put(exc)
            return
        self._put(_DONE)

    def __iter__(self) -> Iterator[T]:
        try:
            while True:
                item = self._queue.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item  # type: ignore[misc]
        finally:
            self.close()

    def close(self) -> None:
        self._stop.set()
