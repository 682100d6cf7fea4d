"""Downloading the default weights from a local HTTP server; offline errors; the cache directory."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
import time
from pathlib import Path

import pytest

from jaxstyle import download, sources, weights
from jaxstyle.errors import JaxstyleError

KERAS_NAME = download.DEFAULT_URL.rsplit("/", 1)[-1]
UNREACHABLE = "http://127.0.0.1:9/" + KERAS_NAME  # the discard port: nothing listens there


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory, keras_h5):
    """An HTTP server on 127.0.0.1 serving a directory with the synthetic Keras file; yields
    (base URL, served directory)."""
    root = tmp_path_factory.mktemp("served")
    (root / KERAS_NAME).symlink_to(keras_h5)
    handler = functools.partial(_QuietHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", root
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def keras_md5(keras_h5) -> str:
    return hashlib.md5(keras_h5.read_bytes()).hexdigest()


def files_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_download_checks_md5_and_reports_progress(tmp_path, server, keras_h5, keras_md5):
    url, _ = server
    calls = []
    dst = tmp_path / "dl" / "file.h5"
    assert download.download(url + KERAS_NAME, dst, keras_md5,
                             progress=lambda done, total: calls.append((done, total))) == dst
    assert dst.read_bytes() == keras_h5.read_bytes()
    size = keras_h5.stat().st_size
    assert calls[-1] == (size, size)
    assert [c[0] for c in calls] == sorted(c[0] for c in calls)
    assert files_in(dst.parent) == ["file.h5"]


def test_md5_mismatch_leaves_nothing(tmp_path, server, keras_md5):
    url, _ = server
    wrong = "0" * 32
    with pytest.raises(JaxstyleError) as err:
        download.download(url + KERAS_NAME, tmp_path / "file.h5", wrong)
    message = str(err.value)
    assert f"md5 {keras_md5}" in message and f"expected {wrong}" in message
    assert files_in(tmp_path) == []


def test_offline_fails_fast_with_manual_instructions(tmp_path):
    dst = tmp_path / KERAS_NAME
    start = time.monotonic()
    with pytest.raises(JaxstyleError) as err:
        download.download(UNREACHABLE, dst, "0" * 32, convert_to=tmp_path / "vgg19.safetensors")
    assert time.monotonic() - start < 5
    message = str(err.value)
    assert "\n" not in message
    assert UNREACHABLE in message and str(dst) in message
    assert f"jaxstyle convert FILE -o {tmp_path / 'vgg19.safetensors'}" in message
    assert files_in(tmp_path) == []


def test_http_error_is_reported(tmp_path, server):
    url, _ = server
    with pytest.raises(JaxstyleError, match="HTTP 404"):
        download.download(url + "nothing-here.h5", tmp_path / "x.h5", None)
    assert files_in(tmp_path) == []


def test_default_weights_downloads_and_converts(tmp_path, monkeypatch, server, keras_h5,
                                                keras_md5, keras_safetensors):
    url, _ = server
    monkeypatch.setattr(download, "DEFAULT_URL", url + KERAS_NAME)
    monkeypatch.setattr(download, "DEFAULT_MD5", keras_md5)
    cache = tmp_path / "cache"
    progress = []
    path = download.default_weights(cache, progress=lambda d, t: progress.append(d))
    assert path == cache / "vgg19.safetensors"
    assert files_in(cache) == ["vgg19.safetensors"]  # the download itself is removed
    assert progress[-1] == keras_h5.stat().st_size
    loaded = weights.read(path)
    assert loaded.source == "keras" and loaded.preprocessing == sources.KERAS
    assert path.read_bytes() == keras_safetensors.read_bytes()  # same source file name and bytes

    # Present now: no network needed.
    monkeypatch.setattr(download, "DEFAULT_URL", UNREACHABLE)
    assert download.default_weights(cache) == path


def test_default_weights_converts_a_hand_placed_file(tmp_path, monkeypatch, keras_h5):
    monkeypatch.setattr(download, "DEFAULT_URL", UNREACHABLE)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / KERAS_NAME).write_bytes(keras_h5.read_bytes())
    path = download.default_weights(cache)
    assert weights.read(path).source == "keras"
    assert files_in(cache) == sorted([KERAS_NAME, "vgg19.safetensors"])  # the user's file stays


def test_default_weights_offline(tmp_path, monkeypatch):
    monkeypatch.setattr(download, "DEFAULT_URL", UNREACHABLE)
    cache = tmp_path / "cache"
    with pytest.raises(JaxstyleError) as err:
        download.default_weights(cache)
    assert UNREACHABLE in str(err.value)
    assert f"jaxstyle convert FILE -o {cache / 'vgg19.safetensors'}" in str(err.value)
    assert files_in(cache) == []
    with pytest.raises(JaxstyleError, match="no VGG-19 weights at"):
        download.default_weights(cache, download_missing=False)


def test_cache_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("JAXSTYLE_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert download.cache_dir() == tmp_path / "home" / ".cache" / "jaxstyle"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert download.cache_dir() == tmp_path / "xdg" / "jaxstyle"
    monkeypatch.setenv("JAXSTYLE_CACHE", str(tmp_path / "env"))
    assert download.cache_dir() == tmp_path / "env"
    assert download.cache_dir(tmp_path / "flag") == tmp_path / "flag"
    assert download.cache_dir("~/c") == tmp_path / "home" / "c"
