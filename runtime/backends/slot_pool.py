"""A pool of execution slots (a TensorRT context with its streams and buffers) that
callers borrow one at a time, created only when callers overlap, and closed safely while
other threads wait for a slot or run on one."""

from __future__ import annotations

import threading
from typing import Callable, Generic, TypeVar

from ..errors import InputError

__all__ = ["SlotPool"]

SlotT = TypeVar("SlotT")


class SlotPool(Generic[SlotT]):
    """Up to ``limit`` slots, each made on first need by ``make()`` and lent to one
    caller at a time; the thread-safety of :class:`TensorRTBackend`.

    A lent slot is *busy* from :meth:`acquire` until :meth:`detach` (a thread works with
    its execution context), then *in flight* until :meth:`release` (GPU work queued on its
    streams may still run, but no thread touches it). :meth:`close` refuses new callers,
    wakes those waiting for a slot (they raise ``RuntimeError("... closed")``), waits
    until no slot is busy, and hands every slot made to the owner, who synchronises their
    streams before freeing them: so running calls finish first, waiting ones never hang,
    and in-flight work does not hold up a close.

    Args:
        make: creates a slot (may be slow; runs outside the pool's lock).
        limit: the most slots there will ever be.
        owner: names the closed object in errors, e.g. ``"TensorRTBackend"``.
    """

    def __init__(self, make: Callable[[], SlotT], limit: int, owner: str = "TensorRTBackend") -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InputError(f"limit: expected an integer >= 1, got {limit!r}")
        self._make = make
        self._limit = limit
        self._owner = owner
        self._cond = threading.Condition()
        self._slots: list[SlotT] = []  # every slot made and not yet handed to close()
        self._idle: list[SlotT] = []
        self._busy: set[int] = set()  # id() of busy slots
        self._making = 0  # slots being made right now (count as busy for close)
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def size(self) -> int:
        """How many slots exist (idle, busy or in flight)."""
        with self._cond:
            return len(self._slots) + self._making

    def _closed_error(self) -> RuntimeError:
        return RuntimeError(f"{self._owner} is closed")

    def acquire(self, block: bool = True) -> SlotT | None:
        """A busy slot: an idle one, a new one while fewer than ``limit`` exist, else the
        next one released (``block``) or ``None`` at once (not ``block``).

        Raises:
            RuntimeError: the pool is closed, or was closed while waiting.
        """
        with self._cond:
            while True:
                if self._closed:
                    raise self._closed_error()
                if self._idle:
                    slot = self._idle.pop()
                    self._busy.add(id(slot))
                    return slot
                if len(self._slots) + self._making < self._limit:
                    self._making += 1
                    break
                if not block:
                    return None
                self._cond.wait()
        try:
            slot = self._make()
        except BaseException:
            with self._cond:
                self._making -= 1
                self._cond.notify_all()
            raise
        with self._cond:
            self._making -= 1
            self._slots.append(slot)  # close() frees it even if it closed meanwhile
            self._cond.notify_all()
            if self._closed:
                raise self._closed_error()
            self._busy.add(id(slot))
            return slot

    def detach(self, slot: SlotT) -> None:
        """Busy → in flight: the calling thread is done with the slot's context."""
        with self._cond:
            self._busy.discard(id(slot))
            self._cond.notify_all()

    def release(self, slot: SlotT) -> None:
        """Returns a slot whose work is complete; after :meth:`close` it is dropped."""
        with self._cond:
            self._busy.discard(id(slot))
            if not self._closed and any(s is slot for s in self._slots):
                self._idle.append(slot)
            self._cond.notify_all()

    def close(self) -> list[SlotT]:
        """Closes the pool (idempotent) and returns the slots made, for the owner to
        free; waits for busy slots first. A later caller gets an empty list."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            while self._busy or self._making:
                self._cond.wait()
            slots, self._slots, self._idle = self._slots, [], []
            return slots
