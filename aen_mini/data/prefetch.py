"""Harvesting overlapped with training: a producer thread draws batches from any ActivationSource ahead of time.

``PrefetchSource(source, depth)`` is itself an ActivationSource. A thread calls ``source.next_batch`` up to
``depth`` batches ahead into a bounded queue; with a CUDA ``device`` the thread works on its own CUDA stream
(a harvesting forward pass overlaps the training step) and CPU batches go through pinned memory with a
non-blocking copy.

Exact resume: the thread records the wrapped source's ``state_dict()`` right after producing each batch. What
``state_dict()`` returns is the record of the last batch the *consumer* took (before the first, the state the
wrapper started from), i.e. the wrapped source's state minus the batches still queued: loading it into the
wrapped source, or into a fresh wrapper around it, replays exactly the batches an uninterrupted run would see.
"""
from __future__ import annotations

import contextlib
import copy
import queue
import threading
from typing import Any

import torch

from aen_mini.data.source import ActivationSource
from aen_mini.validate import check_positive_int


class _Stop(Exception):
    """Raised inside the producer to end it when the consumer no longer wants batches."""


class PrefetchSource:
    """Wrap ``source``; batches come out on ``device`` (None: as the source yields them)."""

    def __init__(self, source: ActivationSource, depth: int = 4, device: str | torch.device | None = None,
                 pin_memory: bool = True) -> None:
        if not isinstance(source, ActivationSource):
            raise TypeError(f"source must be an ActivationSource (d_in, next_batch, state_dict, load_state_dict), "
                            f"got {type(source).__name__}")
        self.source = source
        self.d_in: int = source.d_in
        self.depth = check_positive_int("depth", depth)
        self.device = torch.device(device) if device is not None else None
        self.pin_memory = pin_memory and self.device is not None and self.device.type == "cuda"
        self._state = copy.deepcopy(source.state_dict())  # the state that yields the consumer's next batch
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()
        self._batch_size: int | None = None

    # --- the producer ------------------------------------------------------------------------------------
    def _produce(self, batch_size: int, out: queue.Queue, stop: threading.Event) -> None:
        stream = torch.cuda.Stream(self.device) if self.device is not None and self.device.type == "cuda" else None
        try:
            while not stop.is_set():
                with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
                    x = self.source.next_batch(batch_size)
                    state = copy.deepcopy(self.source.state_dict())
                    event = None
                    if stream is not None:
                        if x.device.type == "cpu" and self.pin_memory:
                            x = x.pin_memory()
                        x = x.to(self.device, non_blocking=True)
                        event = torch.cuda.Event()
                        event.record(stream)
                    elif self.device is not None:
                        x = x.to(self.device)
                self._put(out, stop, (x, state, event))
        except _Stop:
            return
        except BaseException as err:  # handed to the consumer, raised there
            self._put(out, stop, err)

    @staticmethod
    def _put(out: queue.Queue, stop: threading.Event, item: Any) -> None:
        while True:
            if stop.is_set():
                raise _Stop
            try:
                out.put(item, timeout=0.05)
                return
            except queue.Full:
                continue

    def _start(self, batch_size: int) -> None:
        self._stop = threading.Event()
        self._queue = queue.Queue(maxsize=self.depth)
        self._batch_size = batch_size
        self._thread = threading.Thread(target=self._produce, args=(batch_size, self._queue, self._stop),
                                        name="PrefetchSource", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the producer and drop what it queued; the wrapped source is then left *ahead* of ``state_dict()``
        (load that state to continue exactly)."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = self._queue = self._batch_size = None

    # --- the ActivationSource interface -----------------------------------------------------------------
    def next_batch(self, batch_size: int) -> torch.Tensor:
        check_positive_int("batch_size", batch_size)
        if self._thread is not None and batch_size != self._batch_size:
            # The queued batches have the old size: rewind the source to the consumer's position and restart.
            self.close()
            self.source.load_state_dict(copy.deepcopy(self._state))
        if self._thread is None:
            self._start(batch_size)
        item = self._queue.get()
        if isinstance(item, BaseException):
            self.close()
            raise item
        x, state, event = item
        if event is not None:  # the consumer's stream must not read x before the copy finished
            consumer = torch.cuda.current_stream(self.device)
            consumer.wait_event(event)
            x.record_stream(consumer)
        self._state = state
        return x

    def state_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self._state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.close()
        self.source.load_state_dict(copy.deepcopy(state))
        self._state = copy.deepcopy(state)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: the daemon thread dies with the process anyway
            pass


__all__ = ["PrefetchSource"]
