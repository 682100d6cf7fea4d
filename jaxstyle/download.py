"""Fetching the default weights (Keras's VGG-19) into a cache directory, and converting them.

The library prints nothing: callers pass ``progress(bytes_done, bytes_total)`` to show progress,
and a hand-placed file that is not the known one is a `JaxstyleWarning`.

Written by hand rather than on pooch (tried: see `download`'s docstring for why).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import Callable

from jaxstyle import sources, weights
from jaxstyle.errors import JaxstyleError, JaxstyleWarning
from jaxstyle.files import atomic_write

DEFAULT_URL = ("https://storage.googleapis.com/tensorflow/keras-applications/vgg19/"
               "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5")
DEFAULT_MD5 = "253f8cb515780f3b799900260a226db6"
CONVERTED_NAME = "vgg19.safetensors"

Progress = Callable[[int, "int | None"], None]
_CHUNK = 1 << 20


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """Where converted weights live: ``override``, else ``$JAXSTYLE_CACHE``, else
    ``$XDG_CACHE_HOME/jaxstyle``, else ``~/.cache/jaxstyle``. Not created here."""
    if override:
        return Path(override).expanduser()
    if os.environ.get("JAXSTYLE_CACHE"):
        return Path(os.environ["JAXSTYLE_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "jaxstyle"
    return Path.home() / ".cache" / "jaxstyle"


def download(url: str, dst: str | os.PathLike, md5: str | None, progress: Progress | None = None,
             timeout: float = 30, *, convert_to: str | os.PathLike | None = None) -> Path:
    """Downloads ``url`` to ``dst`` atomically (temporary file beside ``dst``, then rename), checking
    its md5 (skipped when ``md5`` is None). ``progress(bytes_done, bytes_total or None)`` is called
    after each chunk. ``convert_to`` only improves the error message's hint.

    Raises JaxstyleError (leaving nothing behind) when offline or the server fails, naming the URL
    to fetch by hand and the command that converts it, or when the md5 does not match.

    Why not pooch, which does this: tried, its version of this module was 204 lines against 122
    (a progress adapter for its tqdm-style interface, silencing its logger, trimming requests'
    multi-line errors), it adds six dependencies (requests, urllib3, certifi, idna,
    charset-normalizer, platformdirs), does not fsync before its rename, and leaves an anonymous
    temporary file in the cache when killed. The fetch loop it would replace is 20 lines.
    """
    dst = Path(dst)
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise JaxstyleError(f"cannot write to {dst.parent}: {e.strerror or e}") from None

    def fetch_checked(f) -> None:
        found = _fetch(url, f, progress, timeout, dst, convert_to)
        if md5 is not None and found != md5.lower():  # raising here discards the temporary file
            raise JaxstyleError(f"download of {url} has md5 {found}, expected {md5}: the download "
                                f"was damaged or the file changed; try again or fetch it by hand")

    atomic_write(dst, fetch_checked)
    return dst


def _fetch(url: str, f, progress: Progress | None, timeout: float, dst: Path,
           convert_to: str | os.PathLike | None) -> str:
    """Streams ``url`` into ``f``; returns the md5 of what was written."""
    digest = hashlib.md5()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            total = response.headers.get("Content-Length")
            total = int(total) if total and total.isdigit() else None
            done = 0
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                f.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
            if total is not None and done != total:
                raise ConnectionError(f"connection closed after {done} of {total} bytes")
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as e:
        raise JaxstyleError(_offline_message(url, e, dst, convert_to)) from None
    return digest.hexdigest()


def _offline_message(url: str, error: BaseException, dst: Path,
                     convert_to: str | os.PathLike | None) -> str:
    reason = getattr(error, "reason", None) or error
    if isinstance(error, urllib.error.HTTPError):
        reason = f"HTTP {error.code} {error.reason}"
    target = convert_to or "WEIGHTS.safetensors"
    return (f"cannot download {url} ({reason}): fetch that file by hand, put it at {dst} "
            f"(or anywhere), then run `jaxstyle convert FILE -o {target}`")


def default_weights(cache: str | os.PathLike | None = None, download_missing: bool = True,
                    progress: Progress | None = None) -> Path:
    """The converted default weights, ``<cache_dir>/vgg19.safetensors``.

    When absent: converts the Keras .h5 if it already lies in the cache directory (put there by
    hand; a `JaxstyleWarning` when its md5 is not `DEFAULT_MD5`, and it is converted anyway), else
    downloads it from `DEFAULT_URL` (md5 `DEFAULT_MD5`), converts it and deletes the
    download. With ``download_missing=False`` a missing file is an error instead.
    """
    directory = cache_dir(cache)
    converted = directory / CONVERTED_NAME
    if converted.is_file():
        return converted
    h5 = directory / DEFAULT_URL.rsplit("/", 1)[-1]
    if h5.is_file():
        found = sources.file_digest(h5, "md5")
        if found != DEFAULT_MD5.lower():
            warnings.warn(f"{h5} is not the known Keras file (md5 {found}, expected {DEFAULT_MD5}); "
                          "converting it anyway", JaxstyleWarning, stacklevel=2)
        weights.convert(h5, converted, source="keras")
        return converted
    if not download_missing:
        raise JaxstyleError(f"no VGG-19 weights at {converted}: allow the download, or fetch "
                            f"{DEFAULT_URL} by hand and run `jaxstyle convert FILE -o {converted}`")
    download(DEFAULT_URL, h5, DEFAULT_MD5, progress=progress, convert_to=converted)
    try:
        weights.convert(h5, converted, source="keras")
    finally:
        h5.unlink(missing_ok=True)
    return converted
