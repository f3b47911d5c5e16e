"""One run id, one run: the run holds its folder with an exclusive lock for its whole life.
Imports no pytest.

``flock`` on a file in the run folder: the kernel drops the lock when the holder's process ends,
however it ends (SIGKILL, a crash), so a lock left by a dead run is no lock at all and needs no
clean-up. The file stays (removing it would let a third run lock a fresh file while the second
still holds the old one); it says who holds it, for the message of the run that is refused.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from pathlib import Path

from ..core.errors import UsageProblem
from ..core.results import now_iso

LOCK_NAME = ".evalchemy.lock"


class RunInUse(UsageProblem):
    """Another process holds the run folder."""


class RunLock:
    """The exclusive lock of a run folder, held from ``acquire`` to ``release`` (or the
    process's end)."""

    def __init__(self, root: Path, run_id: str) -> None:
        self.path = Path(root) / LOCK_NAME
        self.run_id = run_id
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise ``RunInUse`` without writing anything."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise UsageProblem(
                f"cannot lock the run folder {str(self.path.parent)!r} ({exc.strerror}); pass "
                "--evalchemy-output with a writable folder"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunInUse(
                f"run id {self.run_id!r} is in use by another run ({holder}): wait for it "
                f"to end, or pass another --evalchemy-run-id (lock: {self.path})"
            ) from None
        except OSError:
            os.close(fd)
            raise
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": now_iso()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Let the folder go (closing the file drops the lock)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None


def _read_holder(fd: int) -> str:
    """``pid 123 on host h since ...``, as far as the holder wrote it."""
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        data = {}
    if not isinstance(data, dict) or "pid" not in data:
        return "its pid is not recorded yet"
    return f"pid {data['pid']} on host {data.get('host', '?')} since {data.get('since', '?')}"
