"""One writer at a time: an advisory lock on a file in the collection's folder.

Two `lookalike index` runs on one collection would both embed everything. The writer takes
an exclusive `flock` on `COLL/lock` for as long as it writes; a second writer waits for it
or stops with a message naming the holder. Readers take no lock: SQLite's WAL gives them a
consistent committed state. The kernel drops the lock when its process dies, so a killed
writer never leaves the collection locked.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType

from lookalike.errors import LookalikeError

try:
    import fcntl
except ImportError:  # Windows: msvcrt locks a byte range instead
    fcntl = None  # type: ignore[assignment]
    import msvcrt


class WriterLock:
    """`with WriterLock(folder, wait=False): ...`; re-entering an already held lock (a
    writer calling another writer's method) is a no-op."""

    def __init__(self, folder: Path, *, wait: bool = False) -> None:
        self.path = Path(folder) / "lock"
        self.wait = wait
        self._fd: int | None = None
        self._depth = 0

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        self._depth += 1
        if self._fd is not None:
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            self._depth -= 1
            raise LookalikeError(f"{self.path.parent}: cannot write to this collection "
                                 f"({exc.strerror})") from None
        try:
            if not _lock(fd, self.wait):
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                raise LookalikeError(
                    f"{self.path.parent}: another process (pid {holder}) is writing to this "
                    "collection; wait for it to finish, or pass --wait")
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            self._depth -= 1
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None

    def __enter__(self) -> WriterLock:
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def _lock(fd: int, wait: bool) -> bool:
    """Take the exclusive lock; False when another process holds it and `wait` is off."""
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            return False
        return True
    while True:  # pragma: no cover - Windows
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            if not wait:
                return False
            import time

            time.sleep(0.2)
