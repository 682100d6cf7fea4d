"""A live view of a run in the browser: a page at ``http://HOST:PORT/`` fed by server-sent events.

`LiveServer` serves from background threads (stdlib ``http.server``). The optimization only hands
over references (`publish`: a dict and the host arrays it already has); PNG encoding and sending
happen on the server's own threads, so a slow or absent browser never holds the run up. Only the
newest state is kept: a browser that falls behind skips to it.
"""

from __future__ import annotations

import base64
import errno
import io
import ipaddress
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Sequence

import numpy as np
from PIL import Image

from jaxstyle.errors import JaxstyleError

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>jaxstyle live</title>
<style>
body{font-family:system-ui,sans-serif;margin:1em;background:#fafafa}
#status span{margin-right:1.2em} .cells{display:flex;flex-wrap:wrap;gap:1em;margin-top:1em}
.cell{background:#fff;border:1px solid #ddd;padding:.5em} .cell img{display:block;max-width:512px;
image-rendering:auto} .name{font-weight:bold} .terms{font-family:monospace;font-size:90%}
#done{color:#080;font-weight:bold}
</style></head><body>
<h2>jaxstyle</h2>
<div id="status"><span>scale <b id="scale">-</b></span><span>iteration <b id="iteration">-</b></span>
<span><b id="speed">-</b> it/s</span><span>ETA <b id="eta">-</b></span><span id="done"></span></div>
<div class="cells" id="cells"></div>
<script>
function fmt(x){return (x===null||x===undefined)?"-":Number(x).toPrecision(6);}
function eta(s){if(s===null||s===undefined)return "-";s=Math.round(s);
  return Math.floor(s/60)+":"+String(s%60).padStart(2,"0");}
function cell(i){let c=document.getElementById("cell-"+i);
  if(!c){c=document.createElement("div");c.className="cell";c.id="cell-"+i;
    c.innerHTML='<div class="name"></div><img alt=""><div class="terms">loss <span class="loss">-</span>'+
    ' content <span class="content">-</span> style <span class="style">-</span>'+
    ' tv <span class="tv">-</span> <span class="at"></span></div>';
    document.getElementById("cells").appendChild(c);}
  return c;}
const source=new EventSource("/events");
source.onmessage=function(e){const m=JSON.parse(e.data);const s=m.status;
  document.getElementById("scale").textContent=(s.scale_index+1)+" of "+s.num_scales+" ("+s.size+" px)";
  document.getElementById("iteration").textContent=s.iteration+" of "+s.num_iterations;
  document.getElementById("speed").textContent=s.it_per_s===null?"-":s.it_per_s.toFixed(2);
  document.getElementById("eta").textContent=eta(s.eta_s);
  document.getElementById("done").textContent=s.done?"done":"";
  document.body.dataset.version=m.version;
  m.runs.forEach(function(r,i){const c=cell(i);c.querySelector(".name").textContent=r.name;
    if(r.image){c.querySelector("img").src=r.image;}
    ["loss","content","style","tv"].forEach(function(k){c.querySelector("."+k).textContent=fmt(r[k]);});
    c.querySelector(".at").textContent=r.step===null?"":"(iteration "+r.step+")";});
  if(s.done){source.close();}};
</script></body></html>
"""


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _data_url(image: np.ndarray) -> str:
    array = np.round(np.clip(np.nan_to_num(np.asarray(image, np.float32)), 0, 1) * 255)
    buffer = io.BytesIO()
    Image.fromarray(array.astype(np.uint8)).save(buffer, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class LiveServer:
    """The page and its event stream. ``publish`` is cheap and never blocks on a browser."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8000):
        self._lock = threading.Condition()
        self._pending: tuple[dict, list] | None = None
        self._message: bytes | None = None
        self._version = 0
        self._closed = False
        self._images: list[str | None] = []
        try:
            self._server = ThreadingHTTPServer((host, port), self._handler())
        except OSError as e:
            why = ("it is in use; choose another port" if e.errno == errno.EADDRINUSE
                   else (e.strerror or str(e)) + "; check the address")
            raise JaxstyleError(f"cannot serve the live view on {host}:{port} ({why})") from None
        self._server.daemon_threads = True
        self.host, self.port = self._server.server_address[:2]
        self._asked_host = host  # a name (e.g. localhost) that the address came from
        self._threads = [threading.Thread(target=self._server.serve_forever, daemon=True,
                                          name="jaxstyle-live-http"),
                         threading.Thread(target=self._encode_loop, daemon=True,
                                          name="jaxstyle-live-encode")]
        for t in self._threads:
            t.start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def publish(self, status: dict, runs: Sequence[dict], images: Sequence[np.ndarray | None]) -> None:
        """The newest state: ``status`` (scale_index, num_scales, size, iteration, num_iterations,
        it_per_s, eta_s, done), one dict per run (name, loss, content, style, tv, step) and its
        image float[H, W, 3] in [0, 1] (None: unchanged). Encoded and sent on another thread."""
        with self._lock:
            self._pending = (dict(status), [dict(r) for r in runs], list(images))
            self._lock.notify_all()

    def _encode_loop(self) -> None:
        while True:
            with self._lock:
                while self._pending is None and not self._closed:
                    self._lock.wait()
                if self._closed:
                    return
                status, runs, images = self._pending
                self._pending = None
            self._images += [None] * (len(runs) - len(self._images))
            for i, image in enumerate(images[:len(runs)]):
                if image is not None:
                    self._images[i] = _data_url(image)
            for run, image in zip(runs, self._images):
                run["image"] = image
            with self._lock:
                self._version += 1
                body = json.dumps({"version": self._version, "status": status, "runs": runs})
                self._message = f"data: {body}\n\n".encode()
                self._lock.notify_all()

    def wait_sent(self, timeout: float = 10.0) -> None:
        """Blocks until the last `publish` is encoded (for the final "done" state)."""
        with self._lock:
            self._lock.wait_for(lambda: self._pending is None or self._closed, timeout)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        self._server.shutdown()
        self._server.server_close()

    def _next_message(self, seen: int, timeout: float) -> tuple[int, bytes | None]:
        with self._lock:
            self._lock.wait_for(lambda: self._version > seen or self._closed, timeout)
            if self._closed:
                raise ConnectionAbortedError
            return self._version, (self._message if self._version > seen else None)

    def accepts_host(self, header: str | None) -> bool:
        """Whether a request's Host header names this server: its address with its port (and
        ``localhost`` for a loopback address). A page bound to localhost must not answer a DNS-
        rebinding site, whose requests name the attacker's host. Bound to every interface
        (0.0.0.0, ::), the page is open to the network on purpose: any name is accepted."""
        if self.host in ("0.0.0.0", "::", ""):
            return True
        names = {self.host.lower(), self._asked_host.lower()}
        if _is_ip(self.host) and ipaddress.ip_address(self.host).is_loopback:
            names.add("localhost")
        shown = {f"[{n}]" if ":" in n else n for n in names}
        allowed = {f"{n}:{self.port}" for n in shown} | (shown if self.port == 80 else set())
        return (header or "").strip().lower() in allowed

    def _handler(self):
        live = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # no request lines on the terminal
                pass

            def do_GET(self) -> None:
                if not live.accepts_host(self.headers.get("Host")):
                    self.send_error(403, "unexpected Host header")
                elif self.path in ("/", "/index.html"):
                    body = PAGE.encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html; charset=utf-8")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                elif self.path == "/events":
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Cache-Control", "no-cache")
                    self.end_headers()
                    seen = 0
                    try:
                        while True:
                            seen, message = live._next_message(seen, 15.0)
                            self.wfile.write(message if message else b": keep-alive\n\n")
                            self.wfile.flush()
                    except (ConnectionError, BrokenPipeError, OSError):
                        return
                else:
                    self.send_error(404)

        return Handler
