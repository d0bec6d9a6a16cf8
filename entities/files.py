"""The one way Veil writes a file: atomically and durably, private where asked."""

from __future__ import annotations

import errno
import os
import stat
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


class NotRegular(OSError):
    """A path that is not a regular file (a FIFO, a device, a socket, a directory): never read."""


def read_regular(path: Path, limit: int | None = None) -> bytes:
    """The bytes of the regular file `path` (at most `limit` + 1 of them, so a caller can tell a file that
    is too large); NotRegular for anything else, refused on its stat before it is opened: reading a FIFO
    nobody writes to would wait forever. Opened non-blocking and checked again on the open descriptor, so a
    file swapped for a FIFO in between is refused too. Other OSErrors (missing, unreadable, a name too long)
    come through as they are."""
    path = Path(path)
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise NotRegular(errno.EINVAL, f"is not a regular file ({_kind(os.stat(path).st_mode)})", str(path))
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegular(errno.EINVAL, f"is not a regular file ({_kind(mode)})", str(path))
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return fh.read() if limit is None else fh.read(limit + 1)
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    )
    return next((name for test, name in kinds if test(mode)), "not a file")
