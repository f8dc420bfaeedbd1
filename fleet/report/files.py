"""Writing a rendered report to a file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from fleet.errors import UsageError


def write_atomically(path: Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` so that readers see the old file or the new one,
    never a part: a temporary file in the same directory, fsync, then `os.replace`.

    A new file is created private (mode 0600: reports hold host output); an existing
    file keeps its mode. Raises `UsageError` naming the path when it cannot be written;
    no temporary file is left behind.
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    data = text.encode("utf-8", "replace")  # encode first: fail before touching the disk
    tmp_name: str | None = None
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileNotFoundError):
            os.chmod(tmp_name, path.stat().st_mode & 0o7777)
        os.replace(tmp_name, path)
        tmp_name = None
        _fsync_dir(directory)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        if tmp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; some filesystems refuse, which costs nothing.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
