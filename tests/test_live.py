"""--web in a real headless browser (Debian's chromium through selenium): the page loads, the image
changes while the run goes on, and the numbers shown match the run's own log (metrics.jsonl). And
the server itself: where it binds, which Host headers it answers (no browser needed).

The browser tests (marked ``browser``) skip where chromium or chromedriver is missing, naming the
install command; with JAXSTYLE_REQUIRE_BROWSER=1 (as .ci/run sets) a missing browser fails them."""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import write_random_image
from jaxstyle.live import LiveServer

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
INSTALL = "apt-get install chromium chromium-driver"


def require_browser(programs=(CHROMIUM, CHROMEDRIVER)) -> None:
    """Skip (one line naming the install command) when the headless browser is missing; fail
    instead when JAXSTYLE_REQUIRE_BROWSER=1, so CI never passes without running these tests."""
    missing = [p for p in programs if not os.access(p, os.X_OK)]
    if not missing:
        return
    reason = f"needs {' and '.join(missing)}: {INSTALL}"
    if os.environ.get("JAXSTYLE_REQUIRE_BROWSER") == "1":
        pytest.fail(f"JAXSTYLE_REQUIRE_BROWSER=1 but {reason}", pytrace=False)
    pytest.skip(reason)


_image = write_random_image


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def browser(tmp_path):
    require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-dev-shm-usage", f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()


def test_the_server_binds_to_localhost_by_default():
    live = LiveServer(port=0)
    try:
        assert live.host == "127.0.0.1" and live.url.startswith("http://127.0.0.1:")
    finally:
        live.close()


def test_a_missing_browser_skips_naming_the_install_command(tmp_path, monkeypatch):
    monkeypatch.delenv("JAXSTYLE_REQUIRE_BROWSER", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install chromium chromium-driver"):
        require_browser((str(tmp_path / "chromium"),))


def test_a_missing_browser_fails_where_it_is_required(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXSTYLE_REQUIRE_BROWSER", "1")
    with pytest.raises(pytest.fail.Exception, match="apt-get install chromium chromium-driver"):
        require_browser((str(tmp_path / "chromium"),))


def _status(live: LiveServer, host_header: str, path: str = "/") -> int:
    connection = http.client.HTTPConnection("127.0.0.1", live.port, timeout=10)
    try:
        connection.putrequest("GET", path, skip_host=True)
        connection.putheader("Host", host_header)
        connection.endheaders()
        return connection.getresponse().status
    finally:
        connection.close()


def test_the_page_answers_only_the_host_it_is_bound_to():
    live = LiveServer(port=0)
    try:
        for host in (f"127.0.0.1:{live.port}", f"localhost:{live.port}", f"LOCALHOST:{live.port}"):
            assert _status(live, host) == 200, host
        # A DNS-rebinding page reaches 127.0.0.1 under its own name: refused, page and events.
        for host in (f"attacker.example:{live.port}", "attacker.example",
                     f"127.0.0.1:{live.port + 1}", ""):
            assert _status(live, host) in (403, 421), host
            assert _status(live, host, "/events") in (403, 421), host
    finally:
        live.close()


@pytest.mark.browser
def test_live_page_follows_a_sweep_and_matches_its_log(browser, tmp_path, keras_safetensors):
    content, style = _image(tmp_path / "c.png", (24, 32), 0), _image(tmp_path / "s.png", (30, 30), 1)
    port, logs, iters = _free_port(), tmp_path / "logs", 400
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu",
           "JAXSTYLE_COMPILE_CACHE": "0"}
    process = subprocess.Popen(
        [sys.executable, "-m", "jaxstyle.cli", "stylize", content, "--style", style, "--weights",
         keras_safetensors, "-o", tmp_path / "out" / "sheet.png", "--image-size", "32",
         "--num-iterations", str(iters), "--print-iter", "10", "--optimizer", "adam",
         # All the iterations (neither stopping rule): the page must count to the end.
         "--stop-tolerance", "0", "--stop-change", "0",
         "--style-layers", "relu1_1,relu2_1", "--content-layers", "relu2_1", "--quiet",
         "--sweep", "style-weight=10,1000", "--log-dir", logs, "--web", str(port), "--web-keep"],
        env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert "live view at http://127.0.0.1:" in process.stderr.readline()
        browser.get(f"http://127.0.0.1:{port}/")
        assert browser.title == "jaxstyle live"
        seen: dict[str, str] = {}  # image data URL -> iteration shown with it
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            state = browser.execute_script(
                "const i=document.querySelector('#cell-0 img');return [i?i.src:'',"
                "document.getElementById('iteration').textContent,"
                "document.getElementById('done').textContent];")
            if state[2] == "done":
                break
            if state[0]:
                seen.setdefault(state[0], state[1])
            time.sleep(0.02)
        assert state[2] == "done", "the page never said done"
        # The image changed while the run went on (several images, at different iterations).
        assert len(seen) >= 2 and len(set(seen.values())) >= 2, seen
        assert browser.find_element("id", "iteration").text == f"{iters} of {iters}"
        records = [json.loads(s) for s in (logs / "metrics.jsonl").read_text().splitlines()]
        for i, name in enumerate(["style-weight=10", "style-weight=1000"]):
            cell = browser.find_element("id", f"cell-{i}")
            assert cell.find_element("class name", "name").text == name
            last = [r for r in records if r["run"] == name][-1]
            assert last["step"] == iters
            for term in ("loss", "content", "style", "tv"):
                shown = float(cell.find_element("class name", term).text)
                assert shown == pytest.approx(last[term], rel=1e-5), (name, term)
        # The last image shown is the written result.
        src = browser.find_element("css selector", "#cell-1 img").get_attribute("src")
        shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))))
        assert np.array_equal(shown, np.asarray(Image.open(tmp_path / "out" / "sheet-2.png")))
        # It says how to end it (and is waiting for that) once "done" is sent.
        lines = iter(process.stderr.readline, "")
        assert any("until Ctrl-C" in line for line in lines), "--web-keep never said it waits"
    finally:
        process.send_signal(signal.SIGINT)  # --web-keep serves until Ctrl-C
        code = process.wait(timeout=30)
    assert code == 0
