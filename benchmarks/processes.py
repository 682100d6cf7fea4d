"""Child processes for the benchmark: each run to completion with its own peak RSS, a time limit,
and its JSON-line records; and the JSON-lines output of the whole run."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import tempfile
import threading
from pathlib import Path

from benchmarks.inputs import REPOSITORY_ROOT
from typing import Any, Sequence, TextIO

Record = dict[str, Any]
OUT_OF_MEMORY_MARKERS = ("RESOURCE_EXHAUSTED", "out of memory", "Out of memory", "MemoryError",
                         "OutOfMemoryError", "std::bad_alloc")


@dataclasses.dataclass(frozen=True)
class ChildResult:
    """A finished subprocess: exit status, output, peak RSS, whether it ran out of time."""

    returncode: int
    stdout: str
    stderr: str
    max_rss_bytes: int
    timed_out: bool

    def json_lines(self) -> list[Record]:
        """The stdout lines that are JSON objects."""
        records = []
        for line in self.stdout.splitlines():
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                records.append(value)
        return records

    def failure(self, max_seconds: float) -> str | None:
        """Why the run gave no result (None if it succeeded): time, memory or another error."""
        if self.timed_out:
            return f"exceeded --max-seconds {max_seconds:g}"
        if self.returncode == 0:
            return None
        last = next((line for line in reversed(self.stderr.splitlines()) if line.strip()), "")
        if any(marker in self.stderr for marker in OUT_OF_MEMORY_MARKERS):
            return f"out of memory: {last[:300]}"
        if self.returncode == -signal.SIGKILL:
            return "killed by SIGKILL (likely the kernel's out-of-memory killer)"
        return f"failed with exit status {self.returncode}: {last[:300]}"


def child_env(devices: int = 1) -> dict[str, str]:
    """This environment with the checkout first on PYTHONPATH (``benchmarks`` and the same jaxstyle);
    with ``devices`` > 1, that many host devices too (used only where JAX runs on the CPU)."""
    env = dict(os.environ)
    if devices > 1:
        flag = f"--xla_force_host_platform_device_count={devices}"
        env["XLA_FLAGS"] = " ".join(f for f in (env.get("XLA_FLAGS"), flag) if f)
    root = str(REPOSITORY_ROOT)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def run_child(command: Sequence[str], max_seconds: float, devices: int = 1,
              env: dict[str, str] | None = None) -> ChildResult:
    """Runs ``command`` to completion (killed after ``max_seconds``), keeping its own peak RSS.
    env: the child's environment (default: this one, with ``devices`` simulated CPU devices)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(list(command), stdout=out, stderr=err,
                                   env=env if env is not None else child_env(devices))
        expired = threading.Event()

        def kill() -> None:
            expired.set()
            process.kill()

        timer = threading.Timer(max_seconds, kill)
        timer.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)  # unlike wait(), gives this child's rusage
        finally:
            timer.cancel()
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return ChildResult(process.returncode, out.read(), err.read(), usage.ru_maxrss * 1024,
                           expired.is_set())


def run_for_record(command: Sequence[str], max_seconds: float, devices: int = 1
                   ) -> tuple[ChildResult, Record | None, str | None]:
    """(the finished child, its last JSON record with an "impl" key, why there is none)."""
    child = run_child(command, max_seconds, devices)
    failure = child.failure(max_seconds)
    records = [r for r in child.json_lines() if "impl" in r]
    if failure is None and not records:
        failure = "no JSON record in the output"
    return child, (None if failure else records[-1]), failure


class JsonLines:
    """Prints records as JSON lines to stdout and, if given a path, writes them to that file."""

    def __init__(self, path: Path | None) -> None:
        self._file: TextIO | None = open(path, "w") if path else None

    def __call__(self, record: Record) -> None:
        line = json.dumps(record)
        print(line, flush=True)
        if self._file:
            self._file.write(line + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file:
            self._file.close()
