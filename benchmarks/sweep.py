"""A sweep of N settings against N separate runs: ``python -m benchmarks.sweep`` prints JSON.

Each measurement is the wall time of a whole ``jaxstyle stylize`` process (start-up, weights, image
loading, compile, the steps, writing), as a user would see it:

  * ``sweep``: one process, ``--sweep style-weight=A,B,C,D`` (one batched, compiled run);
  * ``separate``: N processes, one per setting, each compiling (``--no-compile-cache``);
  * ``separate_cached``: N processes sharing a fresh persistent compilation cache (the first
    compiles, the others load its program: the default behaviour of the ``jaxstyle`` command).

The weights are random (speed does not depend on their values) unless ``--weights`` is given:
a real-size VGG-19 file in the converted format is written to a temporary directory. Output: one
JSON line per process, then ``{"summary": {...}}`` with the ratios sweep / separate.

  python -m benchmarks.sweep --size 256 --iters 20 --values 10,100,1000,10000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


from benchmarks.inputs import DEFAULT_CONTENT, DEFAULT_STYLE, shared_file, write_random_weights
from benchmarks.processes import child_env

def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed(argv: list[str], env: dict) -> dict:
    """Wall seconds and CPU seconds (user + system, all threads) of one jaxstyle process. On a
    shared machine the CPU time moves less with the other users' load than the wall time."""
    cpu, start = _cpu_seconds(), time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "jaxstyle.cli", *argv], env=env,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    cpu = _cpu_seconds() - cpu
    if done.returncode != 0:
        raise SystemExit(f"bench: jaxstyle failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return {"seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--iters", type=int, default=20, help="steps per run (default 20)")
    p.add_argument("--values", default="10,100,1000,10000", help="the style weights swept")
    p.add_argument("--optimizer", default="adam", choices=("adam", "lbfgs"))
    p.add_argument("--content", default=DEFAULT_CONTENT)
    p.add_argument("--style", default=DEFAULT_STYLE)
    p.add_argument("--weights", help="a converted weights file (default: random, written here)")
    args = p.parse_args(argv)
    values = [v for v in args.values.split(",") if v]
    content, style = shared_file(args.content), shared_file(args.style)
    env = child_env()
    env.pop("JAXSTYLE_COMPILE_CACHE", None)
    with tempfile.TemporaryDirectory(prefix="jaxstyle-bench-sweep-") as tmp:
        tmp = Path(tmp)
        weights = Path(args.weights) if args.weights else write_random_weights(tmp / "w.safetensors")
        common = [str(content), "--style", str(style), "--weights", str(weights), "--image-size",
                  str(args.size), "--num-iterations", str(args.iters), "--optimizer",
                  args.optimizer, "--quiet"]
        rows = []

        def emit(row):
            rows.append(row)
            print(json.dumps(row), flush=True)

        emit({"run": "sweep", "settings": len(values), **_timed(
            ["stylize", *common[:1], "-o", str(tmp / "sweep.png"), *common[1:], "--no-compile-cache",
             "--sweep", f"style-weight={','.join(values)}", "--batch-size", str(len(values))], env)})
        for kind, extra in (("separate", ["--no-compile-cache"]),
                            ("separate_cached", ["--cache-dir", str(tmp / "cache")])):
            for i, v in enumerate(values):
                emit({"run": kind, "style_weight": float(v), **_timed(
                    ["stylize", *common[:1], "-o", str(tmp / f"{kind}-{i}.png"), *common[1:],
                     "--style-weight", v, *extra], env)})
        sweep = rows[0]["seconds"]
        sweep_cpu = rows[0]["cpu_seconds"]
        totals = {k: round(sum(r["seconds"] for r in rows if r["run"] == k), 2)
                  for k in ("separate", "separate_cached")}
        cpu = {k: round(sum(r["cpu_seconds"] for r in rows if r["run"] == k), 2)
               for k in ("separate", "separate_cached")}
        print(json.dumps({"summary": {
            "size": args.size, "iters": args.iters, "optimizer": args.optimizer,
            "settings": len(values), "sweep_s": sweep, **{f"{k}_s": t for k, t in totals.items()},
            "ratio_vs_separate": round(sweep / totals["separate"], 3),
            "ratio_vs_separate_cached": round(sweep / totals["separate_cached"], 3),
            "sweep_cpu_s": sweep_cpu, **{f"{k}_cpu_s": t for k, t in cpu.items()},
            "cpu_ratio_vs_separate": round(sweep_cpu / cpu["separate"], 3),
            "cpu_ratio_vs_separate_cached": round(sweep_cpu / cpu["separate_cached"], 3),
            "cpu_count": os.cpu_count(), "load_average_at_end": os.getloadavg()[0]}}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
