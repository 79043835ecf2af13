"""Files the SDK writes: one atomic writer, one way to open an output, one inter-process
lock, one hash, and what an input path must be.

- :func:`replace_atomically`: a file is written under a temporary name in its folder and
  renamed over its final name, so readers see the old file or the new one.
- :func:`open_output`: an output file opened for writing, appending or rewriting.
- :class:`FileLock`: an exclusive lock held across processes (``fcntl.flock``,
  ``msvcrt.locking`` on Windows) that the OS drops when the holder dies; the lock file
  names its holder (PID, host, command) so a second process can say who is busy.
- :func:`file_sha256`, and :func:`writing`, which names the file in a failed write.
- :func:`regular_file`: an input path as a regular file, or a one-line error saying
  what it is instead (missing, a FIFO, a symbolic-link loop, a name too long).

**Writes cannot be redirected.** Every file these functions create, truncate or append
to is opened without following a symbolic link (``O_NOFOLLOW``), temporary files are
created exclusively (``O_EXCL``) in the destination folder, and a final name is
renamed over only after checking what is there: a symbolic link, a folder, a FIFO or a
file with other hard links where an output, a record or a lock belongs is an
:class:`UnsafeOutputError` naming it, and nothing is written through it. Someone who
can plant a link in an output folder cannot make a run overwrite the file it points
to. Files get the permissions the umask gives (0644 under umask 022), as any program's.

The run bookkeeping (:mod:`micronet.runtime.runs`) and the engine cache
(:mod:`micronet.runtime.engine_cache`) both use them; neither writes files another way.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import secrets
import socket
import stat
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from .errors import InputError, MicronetError, MissingFileError

__all__ = [
    "BusyError",
    "FileLock",
    "OutputWriteError",
    "UnsafeOutputError",
    "check_target",
    "file_sha256",
    "make_folder",
    "name_max",
    "open_output",
    "regular_file",
    "replace_atomically",
    "write_new",
    "writing",
]

log = logging.getLogger(__name__)

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)  # not on Windows, where links need privileges to make
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_BINARY = getattr(os, "O_BINARY", 0)  # Windows: no newline translation
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # opening a FIFO to write would wait for a reader
_FLAGS = _NOFOLLOW | _CLOEXEC | _BINARY
_MODES = {  # open_output's modes → os.open flags; "w" creates a new file (the old name is unlinked first)
    "w": os.O_WRONLY | os.O_CREAT | os.O_EXCL,
    "a": os.O_WRONLY | os.O_APPEND,
    "r+": os.O_RDWR,
}


class OutputWriteError(MicronetError, OSError):
    """An output file that cannot be written (full disk, read-only folder …): one line
    naming the file."""


class UnsafeOutputError(OutputWriteError):
    """Where an output, record or lock belongs there is something a write must not go
    through: a symbolic link, a folder, a FIFO, a device, or a file with other hard
    links. Nothing is written; the message names the path and what it is."""


class BusyError(InputError):
    """Another process holds the lock (:class:`FileLock`, ``wait=False``); the message
    names it."""


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


# --- what may be written to -------------------------------------------------------------------


def _kind(mode: int) -> str:
    """What a non-regular file is, in words."""
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):  # fmt: skip
        if test(mode):
            return name
    return "not a regular file"


def _unsafe(path: Path, what: str) -> UnsafeOutputError:
    error = UnsafeOutputError(f"{path} is {what} where an output belongs; nothing is written through it: remove it, or choose another output folder")
    error.errno = errno.ELOOP if what == "a symbolic link" else errno.EEXIST
    return error


def _check_stat(path: Path, info: os.stat_result) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise _unsafe(path, _kind(info.st_mode))
    if info.st_nlink > 1:
        raise _unsafe(path, f"a file with {info.st_nlink - 1} other hard link{'s' * (info.st_nlink > 2)}")


def check_target(path: Path) -> bool:
    """Whether a file is at ``path`` (``False``: nothing), after checking that it is a
    regular file a write may replace.

    Raises:
        UnsafeOutputError: a symbolic link (dangling or not), a folder, a FIFO, a device
            or a hard-linked file is there.
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    _check_stat(path, info)
    return True


def make_folder(path: Path) -> Path:
    """Makes a folder the SDK keeps its own files in (its parents too), and checks that
    it is one: a symbolic link or a file where it belongs is an :class:`UnsafeOutputError`."""
    with writing(path):
        try:
            path.mkdir(parents=True)
        except FileExistsError:
            pass
        info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise _unsafe(path, "a file" if stat.S_ISREG(info.st_mode) else _kind(info.st_mode))
    return path


def _open_fd(path: Path, flags: int, mode: int = 0o666) -> int:
    """``os.open`` without following a link at ``path`` and without waiting on a FIFO
    (``O_NONBLOCK`` until it is known to be a regular file); an open file is checked to
    be a regular file with no other hard links."""
    try:
        fd = os.open(path, flags | _FLAGS | _NONBLOCK, mode)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK, errno.EISDIR, errno.ENXIO, errno.EEXIST):  # EMLINK: BSDs' O_NOFOLLOW
            check_target(path)  # names what is there
        raise
    try:
        _check_stat(path, os.fstat(fd))
        if _NONBLOCK:
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_output(path: Path, mode: str = "w") -> IO[bytes]:
    """An output file opened in binary ``mode`` without following links: ``"w"`` a new
    file (whatever regular file had the name is removed first: a new inode, never one
    shared with another name), ``"a"`` appending to an existing one, ``"r+"`` reading
    and rewriting one.

    Raises:
        UnsafeOutputError: a symbolic link, folder, FIFO … or hard-linked file at ``path``.
        OutputWriteError: any other failure, naming the file.
    """
    if mode not in _MODES:
        raise InputError(f"mode: expected one of {', '.join(_MODES)}, got {mode!r}")
    with writing(path):
        if mode == "w" and check_target(path):
            path.unlink()
        fd = _open_fd(path, _MODES[mode])
        return os.fdopen(fd, {"w": "wb", "a": "ab", "r+": "r+b"}[mode])


def _temporary(path: Path) -> tuple[int, Path]:
    """A new file next to ``path``, created exclusively (``O_EXCL``, never through a
    link), open for writing: ``(fd, its path)``. Its name is unique (two writers of the
    same file never share one) and short enough for any final name that fits."""
    while True:
        tmp = path.with_name(f".{secrets.token_hex(4)}.{path.name[-200:]}.tmp")
        try:
            return _open_fd(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL), tmp
        except FileExistsError:
            continue


def _same_file(fd: int, path: Path) -> None:
    """Refuses when the name ``path`` no longer is the file open as ``fd`` (someone
    replaced it while a writer opened it by name)."""
    if not os.path.samestat(os.fstat(fd), os.lstat(path)):
        raise _unsafe(path, "a file that replaced the one being written")


def write_new(path: Path, write: Callable[[Path], None]) -> None:
    """Calls ``write(path)`` on a new, empty file at ``path``, created exclusively
    (whatever regular file had the name is removed first; a link there is refused) and
    checked afterwards to be the file ``write`` wrote. For writers that take a path
    (Pillow, the detection writers) in a folder of the SDK's own.

    Raises:
        UnsafeOutputError, OutputWriteError: as :func:`open_output`.
    """
    with writing(path):
        if check_target(path):
            path.unlink()
        fd = _open_fd(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        with writing(path):
            write(path)
            _same_file(fd, path)
    finally:
        os.close(fd)


def replace_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Calls ``write`` on a temporary name next to ``path``, then renames it over
    ``path``: readers see the old file or the new one, never half of one. A failed
    write leaves no temporary file behind.

    The temporary file is made exclusively in ``path``'s folder before ``write`` opens
    it by name, and is checked to be the same file afterwards; ``path`` is checked
    before and just before the rename (:func:`check_target`).

    Raises:
        UnsafeOutputError: a symbolic link, folder … at ``path``, or the temporary file
            was replaced while being written.
        OutputWriteError: the write failed (full disk …), naming ``path``.
    """
    with writing(path):
        check_target(path)
        fd, tmp = _temporary(path)
    try:
        with writing(path):
            write(tmp)
            _same_file(fd, tmp)
            check_target(path)
            os.replace(tmp, path)
    except BaseException:
        try:
            if os.path.samestat(os.fstat(fd), os.lstat(tmp)):
                tmp.unlink()
        except OSError:
            pass
        raise
    finally:
        os.close(fd)


def name_max(folder: Path) -> int:
    """The longest file name (bytes) the file system of ``folder`` (or of the nearest
    existing folder above it) allows; 255 where it does not say."""
    for candidate in (folder, *folder.parents):
        try:
            return int(os.pathconf(candidate, "PC_NAME_MAX"))
        except (OSError, ValueError, AttributeError):  # missing, or no pathconf (Windows)
            if candidate.exists() or not hasattr(os, "pathconf"):
                break
    return 255


# --- inputs -------------------------------------------------------------------------------------


def regular_file(path: str | os.PathLike[str], what: str = "input", folder_ok: bool = False) -> Path:
    """``path`` as an existing regular file (or, with ``folder_ok``, a folder), never
    opened: a FIFO would block a reader forever.

    Raises:
        MissingFileError: nothing there (a dangling symbolic link says where it points).
        InputError: a symbolic-link loop, a name too long, no permission to look, a
            folder (unless ``folder_ok``), a FIFO, socket or device; one line naming it.
    """
    path = Path(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise MissingFileError(f"{what} not found: {path} (a symbolic link to {os.readlink(path)}, which does not exist)") from None
        raise MissingFileError(f"{what} not found: {path}") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputError(f"{path}: a symbolic link loop (it points back to itself); expected {_a(what)} file") from None
        if exc.errno == errno.ENAMETOOLONG:
            raise InputError(f"{str(path)[:60]}…: a name too long for this file system ({len(path.name)} characters)") from None
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not (stat.S_ISREG(info.st_mode) or (folder_ok and stat.S_ISDIR(info.st_mode))):
        raise InputError(f"{path}: {_kind(info.st_mode)}, not a regular file; expected {_a(what)} file")
    return path


def _a(noun: str) -> str:
    return f"{'an' if noun[:1] in 'aeiou' else 'a'} {noun}"


# --- the lock ------------------------------------------------------------------------------------


class FileLock:
    """An exclusive lock on ``path`` across processes, dropped by the OS when the holder
    dies however it dies. The file holds a note naming the holder.

    >>> with FileLock(Path("out/slide.lock"), busy="slide: being written"):  # doctest: +SKIP
    ...     ...

    Args:
        path: the lock file (its folder is made when missing). A symbolic link, folder
            or hard-linked file there is refused (:class:`UnsafeOutputError`): the note
            is never written through it.
        busy: the start of the error raised when another process holds the lock and
            ``wait`` is false; the holder is appended.
        wait: wait for the holder instead of refusing (logged at INFO with ``what``).
        what: what the lock guards, for that log line.
        remove: delete the lock file on release (outputs: nothing stays behind); the
            engine cache keeps its lock files.

    Raises:
        BusyError: another process holds the lock and ``wait`` is false.
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
        make_folder(self.path.parent)
        while True:
            fd = self._open_and_lock()
            # The holder before us deletes the file as it finishes: a lock on a file no
            # longer at this path guards nothing, so take the one that is there.
            try:
                same = os.path.samestat(os.fstat(fd), os.lstat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self._write_note(fd)
        self._fd = fd

    def _open_and_lock(self) -> int:
        with writing(self.path):
            fd = _open_fd(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if not _lock(fd, blocking=False):
                holder = _holder(fd)
                if not self.wait:
                    raise BusyError(f"{self.busy} ({holder})")
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
            try:
                if os.path.samestat(os.fstat(self._fd), os.lstat(self.path)):
                    self.path.unlink()  # ours: not whatever took the name since
            except FileNotFoundError:
                pass
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
