"""A queue that one thread takes in batches: the group commit of the submit and task writers."""

from __future__ import annotations

import queue
from typing import Generic, TypeVar, cast

T = TypeVar("T")

_CLOSED = object()


class BatchQueue(Generic[T]):
    """Items put from any thread; one consumer takes the first it waits for and whatever else waits
    at that moment, up to ``most``."""

    def __init__(self, most: int) -> None:
        self._most = most
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._closed = False

    def put(self, item: T) -> None:
        self._queue.put(item)

    def close(self) -> None:
        """The consumer gets what was put before, then None."""
        self._queue.put(_CLOSED)

    def take(self) -> list[T] | None:
        """The next batch (waits for its first item); None once closed."""
        if self._closed:
            return None
        first = self._queue.get()
        if first is _CLOSED:
            self._closed = True
            return None
        batch = [cast(T, first)]
        while len(batch) < self._most:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _CLOSED:
                self._closed = True
                break
            batch.append(cast(T, item))
        return batch
