"""Where the first run's time goes: ``python -m benchmarks.startup`` prints JSON.

Runs the real ``jaxstyle stylize`` command in fresh processes, each with its own persistent
compilation cache in a temporary ``--cache-dir``:

  * ``cold``: an empty cache (a user's very first run);
  * ``warm``: the same command again (the cache holds every program);
  * ``new_shape``: a content photo of another aspect ratio (3:4, a portrait, where the content
    is a 4:3 landscape), the cache filled by ``cold`` and ``warm`` (the first photo of a new
    shape; it runs transposed on the landscape's programs, see `jaxstyle.buckets`);
  * ``new_shape_warm``: the same portrait again (a warm run of its own shape);
  * ``folder`` (``--folder N``): N photos in 4 aspect ratios into a directory, in one process.

Each process is broken down from inside (a small wrapper around the CLI, ``child`` below): the
imports (jax, jaxstyle), the device start, loading the weights, every program's tracing, lowering
to MLIR and XLA compile (JAX's ``jax.monitoring`` events ``/jax/core/compile/*``, with the
function's name) and whether it came from the persistent cache, the compiled steps
(``optimize.run_steps`` calls, their compiles subtracted) and writing the image. It counts every
program compiled by name; ``step_programs`` counts the ``run_steps`` programs (one per shape).

The weights are random (speed and compilation do not depend on their values) unless
``--weights`` is given. Output: one JSON line per process, then ``{"summary": ...}``.

  python -m benchmarks.startup --size 128 --iters 5
  python -m benchmarks.startup --size 512 --iters 2 --folder 10
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The benchmark's own helpers import jaxstyle (and so jax): imported only in the parent, so that
# the child measures the imports itself.

TRACE = "/jax/core/compile/jaxpr_trace_duration"
LOWER = "/jax/core/compile/jaxpr_to_mlir_module_duration"
COMPILE = "/jax/core/compile/backend_compile_duration"
HIT, MISS = "/jax/compilation_cache/cache_hits", "/jax/compilation_cache/cache_misses"


def child(argv: list[str]) -> int:
    """Runs ``jaxstyle`` with ``argv`` in this process and prints its breakdown as one JSON line
    (prefixed ``STARTUP``)."""
    start = time.perf_counter()
    import jax
    from jax import monitoring

    imported_jax = time.perf_counter()
    log: list = []  # (kind, name, seconds) in the order JAX reports them
    compile_total = [0.0]

    def on_duration(event, seconds, fun_name="?", **_):
        if event in (TRACE, LOWER, COMPILE):
            log.append((event, fun_name, seconds))
            compile_total[0] += seconds

    def on_event(event, **_):
        if event in (HIT, MISS):
            log.append((event, None, 0.0))

    monitoring.register_event_duration_secs_listener(on_duration)
    monitoring.register_event_listener(on_event)
    from jaxstyle import cli, image_io, optimize, vgg19

    imported = time.perf_counter()
    jax.devices()
    device = time.perf_counter()
    timed = collections.defaultdict(float)

    def timing(module, name, block=False):
        original = getattr(module, name)

        def wrapper(*args, **kwargs):
            t, c = time.perf_counter(), compile_total[0]
            out = original(*args, **kwargs)
            if block:
                jax.block_until_ready(out)
            timed[name] += time.perf_counter() - t - (compile_total[0] - c)
            timed[name + "_calls"] += 1
            return out

        setattr(module, name, wrapper)

    timing(vgg19, "load")
    timing(image_io, "save_image")
    timing(optimize, "run_steps", block=True)
    code = cli.main(argv)
    end = time.perf_counter()

    programs, pending = [], None
    for kind, name, seconds in log:
        if kind in (HIT, MISS):
            pending = "hit" if kind == HIT else "miss"
        elif kind == COMPILE:
            programs.append({"name": name, "compile_s": round(seconds, 4),
                             "cache": pending or "off"})
            pending = None
    by_stage = collections.defaultdict(float)
    for kind, _, seconds in log:
        by_stage[kind] += seconds
    compiled = collections.Counter(p["name"] for p in programs if p["cache"] != "hit")
    print("STARTUP " + json.dumps({
        "exit": code,
        "import_jax_s": round(imported_jax - start, 3),
        "import_jaxstyle_s": round(imported - imported_jax, 3),
        "device_start_s": round(device - imported, 3),
        "weights_s": round(timed["load"], 3),
        "trace_s": round(by_stage[TRACE], 3),
        "lower_s": round(by_stage[LOWER], 3),
        "backend_compile_s": round(by_stage[COMPILE], 3),
        "compile_total_s": round(compile_total[0], 3),
        "steps_s": round(timed["run_steps"], 3),
        "run_steps_calls": int(timed["run_steps_calls"]),
        "write_s": round(timed["save_image"], 3),
        "in_process_s": round(end - start, 3),
        "programs_seen": len(programs),
        "programs_compiled": sum(compiled.values()),
        "programs_loaded_from_cache": sum(p["cache"] == "hit" for p in programs),
        "step_programs_compiled": compiled.get("jit(run_steps)", 0),
        "compiled_by_name": dict(compiled.most_common()),
        "slowest": sorted(programs, key=lambda p: -p["compile_s"])[:8],
    }), flush=True)
    return code


def run_process(argv: list[str], cache: Path) -> dict:
    from benchmarks.processes import child_env

    env = child_env()
    for k in ("JAX_COMPILATION_CACHE_DIR", "JAXSTYLE_COMPILE_CACHE"):
        env.pop(k, None)
    env.setdefault("JAX_PLATFORMS", "cpu")
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "benchmarks.startup", "--child", "--",
                           *map(str, argv), "--cache-dir", str(cache)],
                          env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("STARTUP ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"bench: jaxstyle failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    return {"wall_s": round(wall, 2), **json.loads(lines[-1][len("STARTUP "):])}


def crops(source: Path, folder: Path, count: int) -> list[Path]:
    """``count`` crops of ``source`` in 4 aspect ratios (4:3, 3:4, 16:9, 1:1), sizes varied."""
    from PIL import Image

    image = Image.open(source).convert("RGB")
    w, h = image.size
    ratios = [(4, 3), (3, 4), (16, 9), (1, 1)]
    paths = []
    for i in range(count):
        rw, rh = ratios[i % len(ratios)]
        scale = min(w / rw, h / rh) * (1.0 - 0.05 * (i // len(ratios)))
        cw, ch = int(rw * scale), int(rh * scale)
        box = (i * 7 % max(1, w - cw), i * 5 % max(1, h - ch))
        path = folder / f"photo{i:02d}_{rw}x{rh}.png"
        image.crop((*box, box[0] + cw, box[1] + ch)).save(path)
        paths.append(path)
    return paths


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        return child(argv[2:] if argv[1:2] == ["--"] else argv[1:])
    p = argparse.ArgumentParser(prog="python -m benchmarks.startup", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=128, help="--image-size (default 128)")
    p.add_argument("--iters", type=int, default=5,
                   help="--num-iterations, the cap per scale (default 5; 0: the preset's)")
    p.add_argument("--folder", type=int, default=0, metavar="N",
                   help="also a folder of N photos in 4 aspect ratios, in one process")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--content", default="../shared/images/tubingen.jpg")
    p.add_argument("--style", default="../shared/images/starry_night.jpg")
    p.add_argument("--weights", help="a weights file (default: random, real-size)")
    p.add_argument("--extra", default="", help="more stylize flags, one string")
    p.add_argument("--skip", default="",
                   help="comma-separated runs to skip: cold,warm,new_shape,new_shape_warm")
    args = p.parse_args(argv)
    from benchmarks.inputs import shared_file, write_random_weights

    content, style = shared_file(args.content), shared_file(args.style)
    skip = set(filter(None, args.skip.split(",")))
    with tempfile.TemporaryDirectory(prefix="jaxstyle-startup-") as tmp:
        tmp = Path(tmp)
        weights = Path(args.weights) if args.weights else write_random_weights(tmp / "w.safetensors")
        common = ["--style", style, "--weights", weights, "--image-size", args.size,
                  *(["--num-iterations", args.iters] if args.iters else []), "-q",
                  *args.extra.split()]
        cache = tmp / "cache"
        other = crops(content, tmp, 2)[1]  # 3:4, where the content is 4:3
        runs = {"cold": [content], "warm": [content], "new_shape": [other],
                "new_shape_warm": [other]}
        results = {}
        for name, inputs in runs.items():
            if name in skip:
                continue
            r = run_process(["stylize", *inputs, "-o", tmp / f"{name}.png", *common], cache)
            results[name] = r
            print(json.dumps({"run": name, **r}), flush=True)
        if args.folder:
            folder = tmp / "photos"
            folder.mkdir()
            crops(content, folder, args.folder)
            r = run_process(["stylize", folder, "-o", tmp / "out/", "--batch-size",
                             args.batch_size, *common], tmp / "folder-cache")
            results["folder"] = r
            print(json.dumps({"run": "folder", **r}), flush=True)
        summary = {"size": args.size, "iters": args.iters,
                   **{f"{k}_wall_s": v["wall_s"] for k, v in results.items()},
                   **{f"{k}_programs_compiled": v["programs_compiled"]
                      for k, v in results.items()}}
        if "cold" in results and "warm" in results:
            summary["cold_over_warm"] = round(results["cold"]["wall_s"] / results["warm"]["wall_s"], 2)
        if "new_shape" in results and "warm" in results:
            summary["new_shape_over_warm"] = round(
                results["new_shape"]["wall_s"] / results["warm"]["wall_s"], 2)
        if "new_shape" in results and "new_shape_warm" in results:
            summary["new_shape_over_its_warm"] = round(
                results["new_shape"]["wall_s"] / results["new_shape_warm"]["wall_s"], 2)
        for name, r in results.items():  # per-step speed: compiles subtracted
            if r["run_steps_calls"]:
                summary[f"{name}_steps_s"] = r["steps_s"]
        if "new_shape" in results:
            summary["new_shape_compiled"] = results["new_shape"]["compiled_by_name"]
        if "folder" in results:
            summary["folder_step_programs"] = results["folder"]["step_programs_compiled"]
        print(json.dumps({"summary": summary}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
