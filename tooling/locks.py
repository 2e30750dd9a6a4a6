"""One process at a time on a directory: an exclusive ``flock`` on its ``.lock`` file, released
when the block ends or the process dies (the kernel drops it with the file descriptor)."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def directory_lock(directory: Path, *, mode: int = 0o777) -> Iterator[None]:
    """Hold ``directory``'s lock (the directory made first, with ``mode``, if absent) for the
    block; another process asking for it waits."""
    directory.mkdir(mode=mode, parents=True, exist_ok=True)
    with (directory / ".lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
