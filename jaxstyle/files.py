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
from typing import BinaryIO, Callable, Iterable, Mapping, TypeVar

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


# ----------------------------------------------------------------------------------------------
# Checking outputs before a long run.


def _identity(path: Path):
    """What makes two paths the same file: device and inode where it exists (through links),
    else the resolved path."""
    try:
        st = os.stat(path)
        return st.st_dev, st.st_ino
    except OSError:
        return path.resolve()


def check_outputs(targets: Mapping[object, str | os.PathLike],
                  inputs: Iterable[str | os.PathLike | None] = ()) -> None:
    """JaxstyleError unless every output is apart from every input and from every other output.

    ``targets`` maps what writes an output (an input it is made from, or a flag such as "--gif")
    to the output's path; the message names both writers of a clash. None inputs are skipped.
    """
    read = {}
    for inp in inputs:
        if inp is not None:
            read.setdefault(_identity(Path(inp)), inp)
    written: dict = {}
    for writer, target in targets.items():
        target = Path(target)
        key = _identity(target)
        if key in read:
            raise JaxstyleError(f"output '{target}' would overwrite input '{read[key]}'; choose "
                                "another output path")
        if key in written:
            raise JaxstyleError(f"{written[key]} and {writer} would both write '{target}'; give "
                                "them different paths (or rename one input)")
        written[key] = writer


def check_output_file(output: str | os.PathLike, inputs: Iterable[str | os.PathLike | None] = (),
                      example: str = "out.png") -> Path:
    """Validate one output file before a long run, creating its directory if missing.

    JaxstyleError if the output is a directory, is the same file as one of ``inputs``, or its
    directory cannot be created or written to. ``example`` is a file name the message suggests.
    """
    output = Path(output)
    if output.is_dir():
        raise JaxstyleError(f"output '{output}' is a directory; give a file name, e.g. {example}")
    check_outputs({"the output": output}, inputs)
    parent = output.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        why = ("a file is in the way" if isinstance(e, (FileExistsError, NotADirectoryError))
               else _one_line(e))
        raise JaxstyleError(
            f"cannot create output directory '{parent}' ({why}); choose another output path"
        ) from None
    try:  # os.access is unreliable (root, ACLs, read-only mounts): really create a file
        fd, probe = tempfile.mkstemp(dir=parent)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise JaxstyleError(f"output directory '{parent}' is not writable ({_one_line(e)}); "
                            "choose another output path") from None
    return output
