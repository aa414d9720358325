"""Durable file writes: the pieces of temp file + fsync + os.replace + folder fsync (docs/ARCHITECTURE.md).

A reader never sees half a file (os.replace is atomic) and, after a power failure, the renamed file and its
content are on disk (fsync of the file before the rename, of the folder after it).
"""
from __future__ import annotations

import os


def write_durably(path, data: bytes) -> None:
    """`data` into the file `path`, fsync'd (the caller renames it into place)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def fsync_dir(folder) -> None:
    """Make a rename in `folder` durable (best effort where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace_atomically(path, data: bytes) -> None:
    """Write `data` to `path` as temp file + fsync + os.replace + folder fsync: readers see the old file or the
    new one, never half of one."""
    import tempfile
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write_durably(tmp, data)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
