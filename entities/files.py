"""The one way Veil writes a file: atomically and durably, private where asked."""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_private_dir(path: Path) -> Path:
    """`path` and its missing parents, the last one 0700 whatever the umask."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, PRIVATE_DIR_MODE)
    return path


def write_atomic(path: Path, data: bytes | str, *, private: bool = False) -> Path:
    """Write `path` so that a crash leaves the old content or the new one, never half of one.

    The temporary file sits beside the target (same file system), is fsynced, renamed over the target,
    and the directory is fsynced, so the new name survives a power cut; a failed write removes it.
    private: the file is 0600 and its directory 0700 whatever the umask, at every moment.
    """
    path = Path(path)
    if private:
        make_private_dir(path.parent)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE if private else 0o644)
    try:
        if private:
            os.fchmod(fd, PRIVATE_FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path
