"""What ``--log-dir`` and ``--web`` watch: after each compiled chunk of a stylize run (one image, a
batch or a sweep), the loss terms and images go to TensorBoard/metrics.jsonl (`jaxstyle.logs`) and to the live
page (`jaxstyle.live`). Both are opened before any work, so a bad directory or a port in use is a
one-line error at once."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Sequence

import numpy as np

from jaxstyle.cli.common import StopRequest
from jaxstyle.config import Config

TERMS = ("content", "style", "tv")


def web_address(text: str) -> tuple[str, int]:
    """A flag type: ``PORT`` or ``HOST:PORT`` -> (host, port); host defaults to 127.0.0.1."""
    host, _, port = text.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected [HOST:]PORT, got {text!r}") from None
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in 0..65535, got {number}")
    return (host.strip("[]") or "127.0.0.1"), number


class Watch:
    """Logs and/or the live page for one run of P named problems."""

    def __init__(self, cfg: Config, log_dir: str | None, web: tuple[str, int] | None,
                 web_keep: bool, print_iter: int, save_iter: int, quiet: bool):
        self.cfg, self.print_iter, self.save_iter, self.web_keep = cfg, print_iter, save_iter, web_keep
        self.quiet = quiet
        self.log = self.live = None
        if log_dir:
            from jaxstyle.logs import LogWriter

            self.log = LogWriter(log_dir)
        if web:
            from jaxstyle.live import LiveServer

            self.live = LiveServer(*web)
            print(f"jaxstyle: live view at {self.live.url}", file=sys.stderr, flush=True)
        self.names: list[str] = []
        self.rows: list[dict] = []
        self._clock: tuple[float, int] | None = None
        self._status: dict = {}

    def start(self, names: Sequence[str], extra: dict | None = None) -> None:
        self.names = list(names)
        self.rows = [{"name": n, "loss": None, "content": None, "style": None, "tv": None,
                      "step": None} for n in names]
        if self.log is not None:
            settings = self.cfg.flat()
            text = json.dumps({**settings, **(extra or {})}, indent=1, default=str)
            for name in self.names:
                self.log.text(name, "settings", "```\n" + text + "\n```")

    def progress(self, p, problems: Sequence[int], compile_s: float | None = None) -> None:
        """p: a `stylize.Progress`; problems: the run indices of its first rows (the others are
        padding); compile_s: seconds the process has spent making programs so far (logged apart
        from the steps' time)."""
        cfg = self.cfg
        step = cfg.schedule.iterations_before(p.scale_index) + p.iteration
        total = cfg.schedule.total_iterations
        # Overall position, counting earlier batches of a sweep as finished.
        batch_size = p.state.image.shape[0]
        done = (problems[0] // batch_size) * total + step if problems else step
        grand = total * -(-len(self.names) // batch_size) if self.names else total
        now = time.perf_counter()
        if self._clock is None:  # the first chunk includes the compile: time from its end
            self._clock = (now, done)
        speed = None
        if done > self._clock[1] and now > self._clock[0]:
            speed = (done - self._clock[1]) / (now - self._clock[0])
        loss = np.asarray(p.state.loss)
        terms = {k: np.asarray(v) for k, v in p.state.terms.items()}
        # The result so far (the average or best iterate where tracked), gathered across hosts.
        images = p.images if self.live is not None or self._save(p) else None
        for row, index in enumerate(problems):
            values = {"loss": float(loss[row]), **{k: float(terms[k][row]) for k in TERMS}}
            self.rows[index].update(values, step=step)
            if self.log is not None:
                if self.print_iter and (p.iteration % self.print_iter == 0
                                        or p.iteration == p.num_iterations):
                    extra = {"scale": p.scale_index, "iteration": p.iteration}
                    if compile_s is not None:
                        extra["compile_s"] = round(compile_s, 3)
                    self.log.scalars(self.names[index], step, values, extra)
                if self._save(p):
                    self.log.image(self.names[index], "image", images[row], step)
        self._status = {"scale_index": p.scale_index, "num_scales": p.num_scales,
                        "size": int(max(p.state.image.shape[1:3])), "iteration": step,
                        "num_iterations": total, "it_per_s": speed,
                        "eta_s": (grand - done) / speed if speed else None, "done": False}
        if self.live is not None:
            shown = [None] * len(self.names)
            for row, index in enumerate(problems):
                shown[index] = images[row]
            self.live.publish(self._status, self.rows, shown)

    def _save(self, p) -> bool:
        last = p.iteration == p.num_iterations and p.scale_index == p.num_scales - 1
        return last or (bool(self.save_iter) and p.iteration % self.save_iter == 0)

    def finish(self) -> None:
        """The run ended: "done" on the page; with --web-keep, serve until Ctrl-C."""
        if self.log is not None:
            self.log.flush()
        if self.live is None:
            return
        # Ctrl-C sets a flag here, never raises: a KeyboardInterrupt inside the page's lock (while
        # "done" is sent) could leave it held, and `close` then waited for it forever.
        stop = StopRequest()
        with stop.on_ctrl_c():
            self.live.publish({**self._status, "done": True, "eta_s": 0}, self.rows,
                              [None] * len(self.names))
            self.live.wait_sent()
            if self.web_keep and not stop.requested:
                print(f"jaxstyle: run done; the live view stays at {self.live.url} until Ctrl-C",
                      file=sys.stderr, flush=True)
                while not stop.requested:
                    time.sleep(0.1)

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
        if self.live is not None:
            self.live.close()


def open_watch(args: argparse.Namespace, cfg: Config) -> Watch:
    return Watch(cfg, args.log_dir, args.web, args.web_keep, args.print_iter, args.save_iter,
                 args.quiet)
