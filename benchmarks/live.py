"""Does ``--web`` slow the optimization? ``python -m benchmarks.live`` prints JSON.

In one process (so that every timed run reuses the compiled program): one untimed run to compile,
then runs without and with ``--web`` alternately, the page's event stream read by a client thread
the whole time (every update encoded as PNG and sent). ``--print-iter 1`` by default: an update
after every step, the worst case. Reports each run's wall time and the ratio of the medians.

  python -m benchmarks.live --size 128 --iters 40 --repeats 3
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.inputs import DEFAULT_CONTENT, DEFAULT_STYLE, shared_file, write_random_weights


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _read_events(port: int, counts: list[int], stop: threading.Event) -> None:
    """Connects as soon as the server is up; counts the events until the stream ends."""
    while not stop.is_set():
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request("GET", "/events")
            response = conn.getresponse()
        except OSError:
            time.sleep(0.01)
            continue
        for line in response:
            if line.startswith(b"data: "):
                counts[0] += 1
        return


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.live", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--iters", type=int, default=40)
    p.add_argument("--print-iter", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--content", default=DEFAULT_CONTENT)
    p.add_argument("--style", default=DEFAULT_STYLE)
    args = p.parse_args(argv)
    os.environ["JAXSTYLE_COMPILE_CACHE"] = "0"
    from jaxstyle import cli

    with tempfile.TemporaryDirectory(prefix="jaxstyle-bench-live-") as tmp:
        tmp = Path(tmp)
        weights = write_random_weights(tmp / "w.safetensors")
        base = ["stylize", str(shared_file(args.content)), "--style", str(shared_file(args.style)),
                "--weights", str(weights), "-o", str(tmp / "out.png"), "--image-size",
                str(args.size), "--num-iterations", str(args.iters), "--optimizer", "adam",
                "--print-iter", str(args.print_iter), "--quiet"]

        def timed(web: bool) -> dict:
            argv = list(base)
            counts, stop, reader = [0], threading.Event(), None
            if web:
                port = _free_port()
                argv += ["--web", str(port)]
                reader = threading.Thread(target=_read_events, args=(port, counts, stop))
                reader.start()
            start = time.perf_counter()
            code = cli.main(argv)
            seconds = time.perf_counter() - start
            stop.set()
            if reader is not None:
                reader.join(timeout=30)
            if code != 0:
                raise SystemExit(f"bench: jaxstyle failed ({code})")
            row = {"web": web, "seconds": round(seconds, 3), "events_received": counts[0]}
            print(json.dumps(row), flush=True)
            return row

        timed(False)  # compiles
        rows = [timed(web) for _ in range(args.repeats) for web in (False, True)]
    plain = statistics.median(r["seconds"] for r in rows if not r["web"])
    web = statistics.median(r["seconds"] for r in rows if r["web"])
    print(json.dumps({"summary": {
        "size": args.size, "iters": args.iters, "print_iter": args.print_iter,
        "median_without_web_s": plain, "median_with_web_s": web, "ratio": round(web / plain, 3),
        "cpu_count": os.cpu_count(), "load_average_at_end": os.getloadavg()[0]}}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
