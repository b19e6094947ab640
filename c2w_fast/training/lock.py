"""One training per fold folder at a time.

The main process holds an advisory ``flock`` on ``FOLD/.lock`` for as long as it trains that fold,
so a second ``python -m c2w_fast.train`` of the same fold (a repeated command, a second ``--resume``)
is refused instead of both writing the same checkpoints. The operating system drops the lock when
the process ends, however it ends, so a killed run never leaves a stale lock behind. A forked child
(a data-loader worker) closes its copies of the lock files at once: they would otherwise keep a fold
locked after its run was killed, until the orphaned workers noticed. Folds of one run folder may
train at the same time in separate processes (one per GPU). Only the lock's holder writes in its fold
folder, so taking the lock also removes what a killed write left there (a checkpoint's staging folder,
:data:`c2w_fast.data.io.STAGING_PREFIX`, hundreds of MB at the seeds' size).

``flock`` is POSIX; where ``fcntl`` is missing (Windows) folds are not locked.
"""
from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path

from c2w_fast.data.io import STAGING_PREFIX

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

LOCK_NAME = ".lock"
_HELD = set()  # the open lock files of this process's FoldLocks


def _close_in_child() -> None:
    for handle in _HELD:
        handle.close()  # the child's copy: the lock stays with the parent's
    _HELD.clear()


if fcntl is not None:
    os.register_at_fork(after_in_child=_close_in_child)


class FoldInUseError(RuntimeError):
    """Another process is training this fold folder now."""


class FoldLocks:
    """The fold locks this process holds, released together (or by the OS when the process ends)."""

    def __init__(self) -> None:
        self._handles = []

    def acquire(self, folder: Path) -> None:
        """Lock ``folder`` (created when missing) and remove the staging folders of writes killed in it,
        or a FoldInUseError naming the process that has it."""
        folder.mkdir(parents=True, exist_ok=True)
        if fcntl is None:
            return
        handle = open(folder / LOCK_NAME, "a+")
        if not _locked(handle):
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise FoldInUseError(f"{folder} is being trained now by {holder}: wait for that run to end (or stop it), "
                                 "or train another fold or --out")
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        self._handles.append(handle)
        _HELD.add(handle)
        for leftover in folder.glob(f"{STAGING_PREFIX}*"):
            shutil.rmtree(leftover, ignore_errors=True)

    def release(self) -> None:
        for handle in self._handles:
            _HELD.discard(handle)
            handle.close()  # closing the last descriptor of the open file drops its flock
        self._handles.clear()


def _locked(handle, patience_s: float = 1.0) -> bool:
    """Whether this process took the exclusive lock of the open ``handle``, trying for ``patience_s``: an
    :func:`in_use` check by another process holds the lock for an instant (a training holds it for hours)."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)


def in_use(folder: Path) -> bool:
    """Whether a process holds ``folder``'s lock now: a training is running in it."""
    path = folder / LOCK_NAME
    if fcntl is None or not path.is_file():
        return False
    with open(path) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
    return False
