"""One writer per workspace: a lock held for a whole ingest, not only for DVC's own steps.

DVC releases its repo lock while a stage command runs, so two ingests could interleave their
stages. incrml takes an flock on .dvc/tmp/incrml.lock for the whole command; the kernel drops
it when the holder dies, even by SIGKILL, so a stale lock never blocks anyone.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from incrml.errors import BusyError

LOCK_FILE = ".dvc/tmp/incrml.lock"


_held: set[Path] = set()


@contextmanager
def workspace_lock(root: Path, command: str, wait: float) -> Iterator[None]:
    """Hold the workspace for `command`, waiting up to `wait` seconds for another holder.

    Re-entrant within a process: a step that locks inside a command holding the lock goes on.
    """
    path = (root / LOCK_FILE).resolve()
    if path in _held:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        deadline = time.monotonic() + max(wait, 0)
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise BusyError(_busy_message(handle, wait)) from None
                time.sleep(0.1)
        _held.add(path)
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps({"pid": os.getpid(), "command": command, "since": time.time()}))
            handle.flush()
            yield
        finally:
            _held.discard(path)
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)


def _busy_message(handle, wait: float) -> str:
    handle.seek(0)
    try:
        holder = json.loads(handle.read())
        who = f"`incrml {holder['command']}` (pid {holder['pid']}, since {time.strftime('%H:%M:%S', time.localtime(holder['since']))})"
    except (ValueError, KeyError):
        who = "another incrml command"
    return f"workspace busy: {who} is using it; waited {wait:g}s (try again, or pass --wait SECONDS)"
