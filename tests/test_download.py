"""Downloading the default weights from a local HTTP server; offline errors; the cache directory."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
import time
import warnings
from pathlib import Path

import pytest

from jaxstyle import download, sources, weights
from jaxstyle.errors import JaxstyleError, JaxstyleWarning

KERAS_NAME = download.DEFAULT_URL.rsplit("/", 1)[-1]
UNREACHABLE = "http://127.0.0.1:9/" + KERAS_NAME  # the discard port: nothing listens there


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the directory; also ``/truncated.h5`` (announces 1000 bytes, sends 500, closes) and
    ``/unsized/NAME`` (the file NAME without a Content-Length, ended by closing)."""

    def do_GET(self):
        if self.path == "/truncated.h5":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"x" * 500)
            self.close_connection = True
        elif self.path.startswith("/unsized/"):
            data = (Path(self.directory) / self.path.rsplit("/", 1)[-1]).read_bytes()
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
            self.close_connection = True
        else:
            super().do_GET()

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


def test_progress_counts_increase_to_the_total(tmp_path, server, keras_h5, keras_md5):
    url, _ = server
    size = keras_h5.stat().st_size
    calls = []
    download.download(url + KERAS_NAME, tmp_path / "file.h5", keras_md5,
                      progress=lambda done, total: calls.append((done, total)))
    counts = [done for done, _ in calls]
    assert len(calls) > 2 and counts == sorted(set(counts))  # strictly increasing, chunk by chunk
    assert {total for _, total in calls} == {size} and counts[-1] == size


def test_progress_without_content_length(tmp_path, server, keras_h5, keras_md5):
    """No total to report (None), and still no count going backwards."""
    url, _ = server
    calls = []
    dst = download.download(url + "unsized/" + KERAS_NAME, tmp_path / "file.h5", keras_md5,
                            progress=lambda done, total: calls.append((done, total)))
    assert dst.read_bytes() == keras_h5.read_bytes()
    counts = [done for done, _ in calls]
    assert {total for _, total in calls} == {None} and counts == sorted(set(counts))
    assert counts[-1] >= keras_h5.stat().st_size


def test_md5_mismatch_leaves_nothing(tmp_path, server, keras_md5):
    url, _ = server
    wrong = "0" * 32
    with pytest.raises(JaxstyleError) as err:
        download.download(url + KERAS_NAME, tmp_path / "file.h5", wrong)
    message = str(err.value)
    assert f"md5 {keras_md5}" in message and f"expected {wrong}" in message
    assert "damaged or the file changed" in message and "\n" not in message
    assert files_in(tmp_path) == []


def test_md5_mismatch_keeps_an_existing_file(tmp_path, server):
    url, _ = server
    dst = tmp_path / "file.h5"
    dst.write_bytes(b"old")
    with pytest.raises(JaxstyleError, match="damaged"):
        download.download(url + KERAS_NAME, dst, "0" * 32)
    assert files_in(tmp_path) == ["file.h5"] and dst.read_bytes() == b"old"


def test_truncated_download_leaves_nothing(tmp_path, server):
    url, _ = server
    with pytest.raises(JaxstyleError) as err:
        download.download(url + "truncated.h5", tmp_path / "file.h5", None)
    assert url + "truncated.h5" in str(err.value) and "\n" not in str(err.value)
    assert files_in(tmp_path) == []


def test_unwritable_cache_dir(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the cache directory should be")
    with pytest.raises(JaxstyleError, match=f"cannot write to {blocker}") as err:
        download.download(UNREACHABLE, blocker / "cache" / KERAS_NAME, None)
    assert "\n" not in str(err.value)
    assert files_in(tmp_path) == ["blocker"]


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


def test_default_weights_converts_a_hand_placed_file(tmp_path, monkeypatch, keras_h5, keras_md5):
    """Not the known file (the synthetic one's md5 is not DEFAULT_MD5): one warning, converted."""
    monkeypatch.setattr(download, "DEFAULT_URL", UNREACHABLE)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / KERAS_NAME).write_bytes(keras_h5.read_bytes())
    with pytest.warns(JaxstyleWarning) as record:
        path = download.default_weights(cache)
    assert len(record) == 1
    message = str(record[0].message)
    assert str(cache / KERAS_NAME) in message and "not the known Keras file" in message
    assert f"md5 {keras_md5}, expected {download.DEFAULT_MD5}" in message
    assert "converting it anyway" in message and "\n" not in message
    assert record[0].filename == __file__  # points at the caller
    assert weights.read(path).source == "keras"
    assert files_in(cache) == sorted([KERAS_NAME, "vgg19.safetensors"])  # the user's file stays


def test_hand_placed_known_file_converts_silently(tmp_path, monkeypatch, keras_h5, keras_md5):
    monkeypatch.setattr(download, "DEFAULT_URL", UNREACHABLE)
    monkeypatch.setattr(download, "DEFAULT_MD5", keras_md5)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / KERAS_NAME).write_bytes(keras_h5.read_bytes())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path = download.default_weights(cache)
    assert weights.read(path).source == "keras"


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
