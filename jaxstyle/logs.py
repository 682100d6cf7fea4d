"""Run logs: TensorBoard event files (through tensorboardX: neither TensorFlow nor PyTorch needed)
and ``metrics.jsonl``, one JSON object per logged step, for people who plot with their own tools.

Generic on purpose (`stylize` logs per image, a training loop per step): a `LogWriter` has
``scalars``, ``image`` and ``text`` methods, each for a named run (a subdirectory of the log
directory, which TensorBoard shows as one run).

    log = LogWriter("runs/")                  # JaxstyleError now if it cannot write there
    log.text("tubingen", "settings", "...")
    log.scalars("tubingen", 10, {"loss": 1.2e5, "content": 3e4})
    log.image("tubingen", "image", image, 10)  # float[H, W, 3] in [0, 1]
    log.close()
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from jaxstyle.errors import JaxstyleError

METRICS_FILE = "metrics.jsonl"


def run_name(text: str) -> str:
    """A directory-safe run name: runs of anything but letters, digits, ``.=_-`` become ``_``."""
    return re.sub(r"[^A-Za-z0-9.=_-]+", "_", text).strip("_") or "run"


def check_log_dir(path: str | os.PathLike) -> Path:
    """Creates ``path`` and really writes a file there; a one-line JaxstyleError if it cannot."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        why = "a file is in the way" if isinstance(e, (FileExistsError, NotADirectoryError)) \
            else (e.strerror or str(e).splitlines()[0])
        raise JaxstyleError(f"cannot write logs to '{path}' ({why}); choose another --log-dir") \
            from None
    return path


class LogWriter:
    """TensorBoard event files under ``log_dir/<run>/`` and ``log_dir/metrics.jsonl``."""

    def __init__(self, log_dir: str | os.PathLike, flush_secs: int = 10):
        self.log_dir = check_log_dir(log_dir)
        self._flush_secs = flush_secs
        self._writers: dict[str, Any] = {}
        self._metrics = open(self.log_dir / METRICS_FILE, "a", encoding="utf-8")

    def _writer(self, run: str):
        run = run_name(run)
        if run not in self._writers:
            from tensorboardX import SummaryWriter  # only when logging: it is a large import

            self._writers[run] = SummaryWriter(logdir=str(self.log_dir / run),
                                               flush_secs=self._flush_secs)
        return self._writers[run]

    def scalars(self, run: str, step: int, values: Mapping[str, float],
                extra: Mapping[str, Any] | None = None) -> None:
        """Each of ``values`` as a scalar ``loss/<name>`` of ``run`` at ``step``, and one line of
        metrics.jsonl: {"run", "step", "time", **values, **extra}."""
        writer = self._writer(run)
        for name, value in values.items():
            writer.add_scalar(f"loss/{name}", float(value), step)
        record = {"run": run_name(run), "step": int(step), "time": time.time(),
                  **{k: float(v) for k, v in values.items()}, **(extra or {})}
        self._metrics.write(json.dumps(record) + "\n")
        self._metrics.flush()

    def image(self, run: str, tag: str, image: np.ndarray, step: int) -> None:
        """image: float[H, W, 3] in [0, 1] (clipped; rounded to 8 bits as image files are)."""
        array = np.round(np.clip(np.nan_to_num(np.asarray(image, np.float32)), 0.0, 1.0) * 255)
        array = array.astype(np.uint8)
        self._writer(run).add_image(tag, array, step, dataformats="HWC")

    def text(self, run: str, tag: str, text: str, step: int = 0) -> None:
        self._writer(run).add_text(tag, text, step)

    def flush(self) -> None:
        for writer in self._writers.values():
            writer.flush()
        self._metrics.flush()

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()
        self._metrics.close()
