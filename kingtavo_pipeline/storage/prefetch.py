"""Read ahead: produce the next batch in a thread while the caller writes the current one.

A step that reads batches (a file, a database cursor) and writes them to PostgreSQL spends most of
its time waiting on one side or the other; reading the next batch while the database works on the
current one keeps both busy. At most ``depth`` batches wait in the queue, so memory stays at
``depth + 2`` batches (the one being produced, the waiting ones, the one being written).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_DONE = object()


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def prefetch(batches: Iterable[T], depth: int = 1, name: str = "prefetch") -> Iterator[T]:
    """Iterate ``batches`` in a background thread, ``depth`` batches ahead of the caller.

    Lazy: nothing is read before the first ``next()``. The producer's exception is raised in the
    caller, unchanged, where the batch would have come. Closing the iterator early (an error while
    writing, ``break``) stops the producer at its next batch and closes ``batches``.
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        source = iter(batches)
        try:
            for batch in source:
                if not put(batch):
                    break
            else:
                put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer as is
            put(_Failed(exc))
        finally:
            close = getattr(source, "close", None)
            if close is not None and stop.is_set():
                close()

    worker = threading.Thread(target=produce, name=name, daemon=True)
    worker.start()
    try:
        while True:
            item = slots.get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.exc
            yield item
    finally:
        stop.set()
        worker.join()
