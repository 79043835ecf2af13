"""Files the SDK writes: one atomic writer, one inter-process lock, one hash.

- :func:`replace_atomically`: a file is written under a temporary name in its folder and
  renamed over its final name, so readers see the old file or the new one.
- :class:`FileLock`: an exclusive lock held across processes (``fcntl.flock``,
  ``msvcrt.locking`` on Windows) that the OS drops when the holder dies; the lock file
  names its holder (PID, host, command) so a second process can say who is busy.
- :func:`file_sha256`, and :func:`writing`, which names the file in a failed write.

The run bookkeeping (:mod:`micronet.runtime.runs.outputs`) and the engine cache
(:mod:`micronet.runtime.engine_cache`) both use them; neither writes files another way.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import InputError, MicronetError

__all__ = ["FileLock", "OutputWriteError", "file_sha256", "replace_atomically", "writing"]

log = logging.getLogger(__name__)


class OutputWriteError(MicronetError, OSError):
    """An output file that cannot be written (full disk, read-only folder …): one line
    naming the file."""


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turns an ``OSError`` raised while writing ``path`` into an :class:`OutputWriteError`
    that names the file (a write on a full disk says only "No space left on device")."""
    try:
        yield
    except OutputWriteError:
        raise
    except OSError as exc:
        error = OutputWriteError(f"cannot write {path}: {exc.strerror or exc}")
        error.errno = exc.errno
        raise error from exc


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def replace_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Calls ``write`` on a temporary name next to ``path``, then renames it over
    ``path``: readers see the old file or the new one, never half of one. A failed
    write leaves no temporary file behind."""
    # A unique name in the same folder (one rename away, and never shared by two
    # writers of the same file: two engine builds, two processes).
    fd, name = tempfile.mkstemp(prefix=".", suffix=f".{path.name}.tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        with writing(path):
            write(tmp)
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class FileLock:
    """An exclusive lock on ``path`` across processes, dropped by the OS when the holder
    dies however it dies. The file holds a note naming the holder.

    >>> with FileLock(Path("out/slide.lock"), busy="slide: being written"):  # doctest: +SKIP
    ...     ...

    Args:
        path: the lock file (its folder is made when missing).
        busy: the start of the error raised when another process holds the lock and
            ``wait`` is false; the holder is appended.
        wait: wait for the holder instead of refusing (logged at INFO with ``what``).
        what: what the lock guards, for that log line.
        remove: delete the lock file on release (outputs: nothing stays behind); the
            engine cache keeps its lock files.

    Raises:
        InputError: another process holds the lock and ``wait`` is false.
        OutputWriteError: the lock file cannot be made (read-only folder …).
    """

    def __init__(self, path: Path, busy: str = "", wait: bool = False, what: str = "", remove: bool = True) -> None:
        self.path = Path(path)
        self.busy = busy or f"{self.path.name}: held by another process"
        self.wait = wait
        self.what = what or self.path.name
        self.remove = remove
        self._fd: int | None = None

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def acquire(self) -> None:
        with writing(self.path.parent):
            self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = self._open_and_lock()
            # The holder before us deletes the file as it finishes: a lock on a file no
            # longer at this path guards nothing, so take the one that is there.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self._write_note(fd)
        self._fd = fd

    def _open_and_lock(self) -> int:
        with writing(self.path):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if not _lock(fd, blocking=False):
                holder = _holder(fd)
                if not self.wait:
                    raise InputError(f"{self.busy} ({holder})")
                log.info("waiting for another process that holds %s (%s)", self.what, holder)
                _lock(fd, blocking=True)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _write_note(self, fd: int) -> None:
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": _command()[:300], "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        try:
            with writing(self.path):
                os.ftruncate(fd, 0)
                os.write(fd, json.dumps(holder).encode())
        except BaseException:
            os.close(fd)
            raise

    def release(self) -> None:
        if self._fd is None:
            return
        if self.remove and sys.platform != "win32":  # Windows cannot delete an open file; the file stays
            self.path.unlink(missing_ok=True)
        os.close(self._fd)  # releases the lock
        self._fd = None


def _command() -> str:
    """This process's command line as typed: ``micronet detect a.svs --out o`` (also for
    ``python -m micronet``, whose ``argv[0]`` is ``…/micronet/__main__.py``)."""
    argv = list(sys.argv) or ["python"]
    program = Path(argv[0])
    argv[0] = program.parent.name if program.name == "__main__.py" else program.name
    return " ".join(argv)


_WINDOWS_LOCK_OFFSET = 1 << 20  # Windows locks byte ranges that others then cannot read: lock one past the holder's note


def _lock(fd: int, blocking: bool) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        while True:
            try:
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
                os.lseek(fd, 0, os.SEEK_SET)
                return True
            except OSError:
                if not blocking:
                    os.lseek(fd, 0, os.SEEK_SET)
                    return False
                time.sleep(0.5)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


def _holder(fd: int) -> str:
    """Who holds the lock, from its note: ``PID 123: micronet detect …``."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        note = json.loads(os.read(fd, 4096).decode() or "{}")
        where = "" if note.get("host") in (None, socket.gethostname()) else f" on {note['host']}"
        return f"PID {note['pid']}{where}: {note.get('command', '?')}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"
