"""Time to quality of the real ``jaxstyle stylize`` command with its default schedule, against the
PyTorch reference's L-BFGS, side by side in one invocation.

1. The reference runs ``--optimizer lbfgs --iters EVALS --trace 10`` on the content and style
   images at SIZE x SIZE and saves its network (``--save-weights``).
2. The images are written as the reference reads them (Pillow Lanczos to SIZE x SIZE, 8 bit), so
   that the command's own resize to ``--image-size SIZE`` keeps them as they are.
3. ``jaxstyle stylize`` runs as a user runs it, once with two steps per scale to fill a fresh
   compilation cache (not timed; ``programs_compiled_by_timed_run`` checks that it did) and then
   timed (whole-process wall time: start-up, loading, compile-cache reads, its stopping rule),
   with the reference's network and loss weights (content 1e4, style 1e9, TV 2/255², so the loss
   is the reference's) and no schedule flag, plus the variants given with ``--variant``.
4. The PNG it wrote is read back (8 or 16 bits, `image_io.load_image`) and its loss computed (jaxstyle's loss on the reference's
   network: the two agree to 7 digits, docs/performance.md); the reference's time to that loss is
   read off its trace (linear between trace points).

One JSON line per timed command, then a summary. The reference's loss is its ``loss_u8`` (its
image as an 8-bit file holds it: the same rounding as jaxstyle's PNG), or ``loss_clamped`` for a
trace without it, or with ``--float-reference``. The headline ``ratio_vs_reference_at_evals`` is
jaxstyle's wall time over the reference's time to its loss after EVALS evaluations, when the PNG's
loss is at most that loss (the issue's target: <= 0.25 at 256 px, 400 evaluations).

``--tv-weight`` sets TV on both sides (jaxstyle's units: 2/255² is the reference's default 1.0).
``--reference-trace FILE --reference-weights FILE`` reuse a reference run's stdout (its
``--trace`` lines, and its ``--save-weights`` file) instead of running it again: for several
variants measured one after another (the ratio then compares two invocations). A variant's token
``fast.FIELD=VALUE`` sets a field of the "fast" preset in the child process (for Config fields the
CLI has no flag for yet).

  python -m benchmarks.cli_quality --size 256 --evals 400
  python -m benchmarks.cli_quality --size 256 --evals 400 --variant="--stop-tolerance 0.005"
  python -m benchmarks.cli_quality --size 256 --evals 400 --variant="--bit-depth 16"
  python -m benchmarks.cli_quality --size 256 --tv-weight 0 --no-default \
      --variant="fast.stop_change=0.5 fast.stop_tolerance=0"
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.inputs import DEFAULT_CONTENT, DEFAULT_REFERENCE, DEFAULT_STYLE, find_shared
from benchmarks.processes import run_child

MAX_SECONDS = 6 * 3600  # a 1024 px reference run of 400 evaluations takes ~2 hours on 2 cores

# The reference's loss weights (torch_reference.py's defaults, on [0, 1] images), and as flags.
REFERENCE_WEIGHTS = dict(content_weight=1e4, style_weight=1e9, tv_weight=2 / 255**2)
REFERENCE_TV = 1.0  # torch_reference.py's --tv-weight that equals jaxstyle's 2/255²

# Runs the CLI with fields of the "fast" preset set from the JSON in argv[1] (a variant's
# ``fast.FIELD=VALUE`` tokens), for Config fields that have no flag yet.
_PRESET_LAUNCHER = ("import json, sys; from jaxstyle import config; "
                    "config.PRESETS['fast'].update(json.loads(sys.argv.pop(1))); "
                    "from jaxstyle.cli import main; sys.exit(main(sys.argv[1:]))")


def weight_flags(weights: dict) -> list[str]:
    return [a for k, v in weights.items() for a in ("--" + k.replace("_", "-"), repr(v))]


def split_variant(variant: str) -> tuple[dict, list[str]]:
    """(preset fields from ``fast.FIELD=VALUE`` tokens, the other tokens as flags)."""
    fields, flags = {}, []
    for token in shlex.split(variant):
        if token.startswith("fast.") and "=" in token:
            name, value = token[5:].split("=", 1)
            fields[name] = json.loads(value)
        else:
            flags.append(token)
    return fields, flags


def _run(command: list[str], env: dict | None = None) -> tuple[str, float, float]:
    """Runs ``command`` to completion: (stdout, wall seconds, the child's own peak RSS in GiB).
    A failure raises CalledProcessError with its stderr."""
    start = time.perf_counter()
    done = run_child(command, MAX_SECONDS, env=env if env is not None else dict(os.environ))
    wall = time.perf_counter() - start
    if done.returncode:
        raise subprocess.CalledProcessError(done.returncode, command, done.stdout, done.stderr)
    return done.stdout, wall, done.max_rss_bytes / 2**30


def reference_trace(reference: Path, size: int, evals: int, content: Path, style: Path,
                    weights: Path, tv: float = REFERENCE_TV) -> tuple[list[dict], float, float]:
    """The reference's loss trace, its process wall time and its peak RSS (GiB)."""
    command = [sys.executable, str(reference), "--size", str(size), "--optimizer", "lbfgs",
               "--iters", str(evals), "--content", str(content), "--style", str(style),
               "--save-weights", str(weights), "--trace", "10", "--tv-weight", repr(tv)]
    out, wall, rss = _run(command)
    return parse_trace(out), wall, rss


def parse_trace(out: str) -> list[dict]:
    """The ``--trace`` lines of the reference's stdout."""
    return [json.loads(line) for line in out.splitlines() if '"loss_clamped"' in line]


def reference_seconds_to(trace: list[dict], loss: float, key: str = "loss_clamped") -> float | None:
    """The reference's time to first reach ``loss`` by ``key`` (linear between trace points), or
    None."""
    previous = None
    for point in trace:
        if point[key] <= loss:
            if previous is None:
                return point["seconds"]
            span = previous[key] - point[key]
            t = (previous[key] - loss) / span if span > 0 else 1.0
            return previous["seconds"] + t * (point["seconds"] - previous["seconds"])
        previous = point
    return None


def read_image(path: Path):
    """float32[1, H, W, 3] in [0, 1]; a 16-bit PNG at all of its 16 bits."""
    import jax.numpy as jnp

    from jaxstyle import image_io

    return jnp.asarray(image_io.load_image(path))[None]


def reference_objective(content: Path, style: Path, weights: Path,
                        tv_weight: float = REFERENCE_WEIGHTS["tv_weight"]):
    """jaxstyle's loss with the reference's weights, on the reference's network: a function
    images float32[B, H, W, 3] in [0, 1] -> (loss float32[], {term: float32[B]})."""
    import functools

    from jaxstyle import losses, vgg19
    from jaxstyle.config import Config

    spec = losses.LossSpec.from_config(
        Config().replace(**{**REFERENCE_WEIGHTS, "tv_weight": tv_weight}))
    vgg = vgg19.load(weights, source="torchvision")
    targets = losses.targets(vgg, read_image(content), [read_image(style)], [1.0], spec)
    return functools.partial(losses.total_loss, vgg, targets=targets, spec=spec)


def png_loss(png: Path, content: Path, style: Path, weights: Path,
             tv_weight: float = REFERENCE_WEIGHTS["tv_weight"]) -> float:
    """jaxstyle's loss (the reference's weights) of the written PNG, on the reference's network."""
    return float(reference_objective(content, style, weights, tv_weight)(read_image(png))[0])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--evals", type=int, default=400)
    p.add_argument("--reference", default=None)
    p.add_argument("--content", default=None)
    p.add_argument("--style", default=None)
    p.add_argument("--variant", action="append", default=[],
                   help="extra stylize flags for another timed run (repeatable)")
    p.add_argument("--no-default", action="store_true", help="time only the --variant runs")
    p.add_argument("--tv-weight", type=float, default=REFERENCE_WEIGHTS["tv_weight"],
                   help="TV weight on both sides, in jaxstyle's units (default 2/255²)")
    p.add_argument("--reference-trace", help="a saved reference stdout to reuse (its --trace lines)")
    p.add_argument("--reference-weights", help="the --save-weights file of that reference run")
    p.add_argument("--float-reference", action="store_true",
                   help="compare with the reference's loss_clamped instead of its loss_u8")
    args = p.parse_args(argv)
    if bool(args.reference_trace) != bool(args.reference_weights):
        p.error("--reference-trace and --reference-weights go together")
    reference = Path(args.reference) if args.reference else find_shared(DEFAULT_REFERENCE)
    content = Path(args.content) if args.content else find_shared(DEFAULT_CONTENT)
    style = Path(args.style) if args.style else find_shared(DEFAULT_STYLE)
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        reference_tv = args.tv_weight / REFERENCE_WEIGHTS["tv_weight"] * REFERENCE_TV
        if args.reference_trace:
            weights = Path(args.reference_weights)
            trace, ref_wall, ref_rss = parse_trace(Path(args.reference_trace).read_text()), None, None
        else:
            weights = tmp / "vgg19.pth"
            trace, ref_wall, ref_rss = reference_trace(reference, args.size, args.evals, content,
                                                       style, weights, reference_tv)
        last = trace[-1]
        key = "loss_u8" if "loss_u8" in last and not args.float_reference else "loss_clamped"
        print(json.dumps({"impl": "torch-reference", "size": args.size, "evals": last["evals"],
                          "tv_weight": reference_tv, "reused_trace": args.reference_trace,
                          "seconds": last["seconds"], "loss_clamped": last["loss_clamped"],
                          "loss_u8": last.get("loss_u8"), "compared_by": key,
                          "process_wall_s": ref_wall and round(ref_wall, 2),
                          "process_peak_rss_gib": ref_rss and round(ref_rss, 3)}), flush=True)
        images = {}
        for name, path in (("content", content), ("style", style)):
            images[name] = tmp / f"{name}.png"
            Image.open(path).convert("RGB").resize((args.size, args.size), Image.LANCZOS).save(
                images[name])
        env = dict(os.environ, JAXSTYLE_CACHE=str(tmp / "cache"))
        env.pop("JAXSTYLE_COMPILE_CACHE", None)
        target = min(trace, key=lambda q: abs(q["evals"] - args.evals))
        runs = ([] if args.no_default else [""]) + args.variant
        results = []
        for i, variant in enumerate(runs):
            out = tmp / f"out{i}.png"
            fields, flags = split_variant(variant)
            launcher = (["-c", _PRESET_LAUNCHER, json.dumps(fields)] if fields else
                        ["-m", "jaxstyle.cli"])
            weights_flags = weight_flags({**REFERENCE_WEIGHTS, "tv_weight": args.tv_weight})
            command = [sys.executable, *launcher, "stylize", str(images["content"]),
                       "--style", str(images["style"]), "--weights", str(weights),
                       "--source", "torchvision", "--image-size", str(args.size), *weights_flags,
                       "-o", str(out), *flags]
            # Fills the cache: the iteration counts are runtime values, so two steps per scale
            # compile every program of the full run (checked below: the timed run adds none).
            subprocess.run([*command, "--num-iterations", "2", "--coarse-iterations", "2"],
                           env=env, capture_output=True, check=True)
            out.unlink()
            cached = _count_files(tmp / "cache")
            stdout, wall, rss = _run(command, env)
            loss = png_loss(out, images["content"], images["style"], weights, args.tv_weight)
            reached = reference_seconds_to(trace, loss, key)
            record = {"impl": "jaxstyle stylize", "flags": variant or "(default schedule)",
                      "size": args.size, "process_wall_s": round(wall, 2), "png_loss": loss,
                      "log": (stdout.strip().splitlines() or [""])[-1],
                      "process_peak_rss_gib": round(rss, 3),
                      "peak_rss_over_reference": ref_rss and round(rss / ref_rss, 3),
                      "reference_seconds_to_png_loss": reached,
                      "ratio_vs_reference_to_png_loss": reached and round(wall / reached, 3),
                      "reference_loss_at_evals": target[key],
                      "reference_seconds_at_evals": target["seconds"],
                      "reached_reference_loss_at_evals": loss <= target[key],
                      "ratio_vs_reference_at_evals": round(wall / target["seconds"], 3),
                      "programs_compiled_by_timed_run": _count_files(tmp / "cache") - cached}
            print(json.dumps(record), flush=True)
            results.append(record)
    print(json.dumps({"summary": {"size": args.size, "evals": args.evals, "runs": results}}))
    return 0


def _count_files(root: Path) -> int:
    return sum(1 for p in root.rglob("*") if p.is_file())


if __name__ == "__main__":
    sys.exit(main())
