"""One owner per state directory: an OS lock on ``<state_dir>/junction.pid``.

``junction run`` takes the lock (:func:`acquire`) before it opens the outbox, binds its
operations endpoint or starts an adapter, and keeps it until it has stopped. The lock is
an exclusive ``flock`` on the pid file, which holds the owner's process id: the kernel
drops it when the process ends, however it ends, so a SIGKILL never leaves a stale lock
behind and the next ``run`` simply takes it. A second bridge on the same directory gets
:class:`StateDirBusy` (exit 2) naming the holder's pid, instead of adopting the first
one's outbox rows and delivering them a second time.

The operator commands (``junction reload``, ``junction dlq``) only ask who holds it
(:func:`holder`): a shared, non-blocking probe that never takes the directory over.

The file is never deleted, only emptied on release: deleting it would let a third process
lock a fresh file while a second still holds the old one, and both would believe they own
the directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

from broker._errors import JunctionError

PID_FILE = "junction.pid"


class StateDirBusy(JunctionError):
    """Another live process holds this state directory; exit code 2 (a setup mistake)."""

    exit_code = 2

    def __init__(self, state_dir: Path, pid: int | None) -> None:
        self.state_dir = state_dir
        self.pid = pid
        who = f"another junction (pid {pid})" if pid else "another junction"
        super().__init__(
            f"state_dir {str(state_dir)!r} is in use by {who}: two bridges on one state_dir "
            "would deliver its outbox twice; stop that one first, or give this bridge a "
            "state_dir of its own"
        )


class StateLock:
    """The held lock of one state directory; :meth:`release` (or process exit) frees it."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        """Empty the pid file and drop the lock; a no-op when already released."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):  # the lock goes with the descriptor anyway
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the last descriptor releases the flock


def pid_path(state_dir: str | os.PathLike[str]) -> Path:
    """Where the owner of ``state_dir`` keeps its lock and process id."""
    return Path(state_dir) / PID_FILE


def acquire(state_dir: str | os.PathLike[str]) -> StateLock:
    """Make ``state_dir`` this process's own, or raise :class:`StateDirBusy`.

    Creates the directory if needed; an OSError (no permission, a file in the way) is
    left to the caller, which names the config key.
    """
    path = pid_path(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        _lock_or_busy(fd, Path(state_dir))
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    return StateLock(path, fd)


def _lock_or_busy(fd: int, state_dir: Path) -> None:
    """Take the exclusive lock, or raise StateDirBusy naming the holder.

    A lock busy for an instant is an operator command's probe (:func:`holder` holds a
    shared lock that long), whatever pid the file names (a SIGKILLed owner leaves its own
    behind): only a lock still busy after half a second means another bridge owns it.
    """
    deadline = time.monotonic() + 0.5
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise StateDirBusy(state_dir, _read_pid(fd)) from None
            time.sleep(0.01)


def holder(state_dir: str | os.PathLike[str]) -> int | None:
    """The pid of the process holding ``state_dir``, or None when nobody does.

    Probes with a shared non-blocking lock that is dropped at once, so asking never
    takes the directory over (and works with read permission alone).
    """
    path = pid_path(state_dir)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise JunctionError(
            f"cannot read {path}: {err.strerror or err} (run this as the user running the bridge)"
        ) from None
    try:
        # The owner writes its pid just after locking, so a held lock with an empty file
        # is waited on a little; an owner that lets go meanwhile means nobody holds it.
        for _ in range(40):
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _read_pid(fd)
                if pid is not None:
                    return pid
                time.sleep(0.025)
                continue
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        raise JunctionError(
            f"state_dir {str(state_dir)!r} is held by a process that wrote no pid into {path}"
        )
    finally:
        os.close(fd)


def _read_pid(fd: int) -> int | None:
    """The pid written in the lock file (None when empty or garbled)."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None
