"""The lock a training holds on its run folder while it writes there (RUN/.lock).

An advisory fcntl.flock on RUN/.lock: the kernel drops it when the holder exits, however it dies (even
SIGKILL), so a lock left by a dead process never blocks. The file says who holds it (pid, host, start
time) so that a refused second writer can name the first. The holder removes the file on release; a
process that locked a file someone else has just removed sees it and starts over.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

LOCK = ".lock"


class RunInUse(ValueError):
    """Another process is training into this run folder."""


class RunLock:
    """`with RunLock(run_dir):` holds the run folder's lock; raises RunInUse (naming the holder) when
    another process holds it, OSError (naming the folder) when the folder cannot be written."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK
        self.fd: int | None = None

    def acquire(self) -> None:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _describe(fd)
                os.close(fd)
                raise RunInUse(f"{self.path.parent}: run folder in use by {holder}; wait for it to finish "
                               "or choose another --out") from None
            except BaseException:
                os.close(fd)
                raise
            try:  # locked; but the file may be one a releasing holder has just removed
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self.fd = fd
        # Writing who holds it is also the probe write: a read-only or full folder fails here, before
        # any training.
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}).encode()
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, info, 0)
            os.fsync(fd)
        except OSError:
            self.release()
            raise

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still locked: no one else can hold it yet
        finally:
            os.close(self.fd)  # drops the lock
            self.fd = None

    def __enter__(self) -> "RunLock":
        if self.fd is None:  # a lock already held (run.claim returns one) is entered as it is
            self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _describe(fd: int) -> str:
    """Who holds the lock, from the file's contents (which may be half written: then just say so)."""
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {int(info['pid'])} on host {info['host']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (it has not yet written its pid)"

