"""Writing files atomically: the one helper every output of jaxstyle goes through.

A reader (or a crash) sees either the old file or the complete new one, never a half-written file:
data goes to a temporary file in the destination's directory, is flushed and fsynced, then renamed
over the destination. On any failure the temporary file is removed and the destination untouched.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, TypeVar

from jaxstyle.errors import JaxstyleError

T = TypeVar("T")


def _one_line(error: OSError) -> str:
    return " ".join(str(error.strerror or error).split())


def file_mode(path: Path) -> int:
    """The existing file's permissions, else the default for a new file (0666 minus umask)."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        umask = os.umask(0)  # reading the umask means setting it; put it straight back
        os.umask(umask)
        return 0o666 & ~umask


def _fsync_dir(directory: Path) -> None:
    """Makes the rename durable, where the platform lets a directory be opened."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], T]) -> T:
    """Calls ``write(f)`` on a temporary file beside ``path``, then renames it onto ``path``.

    Returns what ``write`` returns. OSErrors (disk full, permissions) become a one-line
    `JaxstyleError`; anything else (a bad input found mid-stream, Ctrl-C) propagates unchanged. The
    new file gets the old file's permissions, or those a plain ``open`` would give.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    except OSError as e:
        raise JaxstyleError(f"cannot write '{path}' ({_one_line(e)}); choose another path") from None
    try:
        with os.fdopen(fd, "wb") as f:
            result = write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode(path))  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(e, OSError):
            raise JaxstyleError(f"cannot write '{path}' ({_one_line(e)})") from None
        raise
    _fsync_dir(path.parent)
    return result
