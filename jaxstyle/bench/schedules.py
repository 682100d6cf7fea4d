"""Loss versus time of optimization schedules, in process: how the default schedule and L-BFGS
memory were chosen (docs/performance.md, issue 13).

Each run optimizes the content image on the given scales (fixed step counts on the coarse ones,
then the full size until the stopping rule or ``--max-steps``), on the PyTorch reference's own
network (``torch_reference.py --save-weights``) and loss weights, with every program compiled
before the clock starts. Prints one JSON line per run: the full-size loss every 10 steps with
the seconds so far, the final float loss and the loss of the image rounded to 8 bits (what a PNG
holds). The runs follow each other in one process, so their times compare; the loss at a given step count
does not depend on the machine.

  python -m jaxstyle.bench.schedules --weights vgg19.pth --schedule 64:150,128:150,256 \\
      --memories 100,50,20
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxstyle import losses, optimize, vgg19
from jaxstyle.bench.cli_quality import REFERENCE_WEIGHTS
from jaxstyle.bench.options import DEFAULT_CONTENT, DEFAULT_STYLE
from jaxstyle.bench.processes import REPOSITORY_ROOT
from jaxstyle.config import Config
from jaxstyle.imageops import resize

TRACE_EVERY = 10


def _read(path: str, size: int) -> jax.Array:
    """float32[size, size, 3] in [0, 1], resized as the reference resizes (Lanczos)."""
    from PIL import Image

    image = Image.open(path).convert("RGB").resize((size, size), Image.LANCZOS)
    return jnp.asarray(np.asarray(image, np.float32) / 255.0)


def parse_schedule(text: str) -> list[tuple[int, int | None]]:
    """"64:150,128:150,256" -> [(64, 150), (128, 150), (256, None)]: steps per coarse scale; the
    last scale runs to the stopping rule."""
    scales = []
    for part in text.split(","):
        size, _, steps = part.partition(":")
        scales.append((int(size), int(steps) if steps else None))
    return scales


def run(vgg, spec, content, style, schedule, memory: int, tolerance: float, window: int,
        max_steps: int, pyramid_levels: int = 1) -> dict:
    method = optimize.Method("lbfgs", 1.0, memory, pyramid_levels=pyramid_levels)
    problems = [optimize.problem_targets(
        losses.targets(vgg, resize(content, size, size), [resize(style, size, size)[None]],
                       jnp.ones(1), spec), 1) for size, _ in schedule]

    def optimized(steps: list[int], trace: list, t0: float) -> jax.Array:
        image = content
        for index, ((size, _), targets) in enumerate(zip(schedule, problems)):
            last = index == len(schedule) - 1
            state = optimize.init_state(resize(image, size, size), method)
            if last and tolerance:
                state = optimize.init_tracking(state, optimize.Rules(window), tolerance)
            done = 0
            while done < steps[index]:
                n = min(TRACE_EVERY, steps[index] - done)
                state = optimize.run_steps(state, n, vgg, targets, spec, method)
                done += n
                if last:
                    value = float(state.loss[0])  # waits for the steps: time after it
                    trace.append((done, round(time.perf_counter() - t0, 2), value))
                    if bool(optimize.finished(state)[0]):
                        break
            image = optimize.result_images(state)
        return jax.block_until_ready(image)

    # One step per scale first: every program (step counts are runtime values), resize and
    # stopping test compiled before the clock starts.
    optimized([1] * len(schedule), [], time.perf_counter())
    trace = []
    t0 = time.perf_counter()
    image = optimized([steps for _, steps in schedule[:-1]] + [max_steps], trace, t0)
    seconds = time.perf_counter() - t0
    full_targets = losses.targets(vgg, content, [style[None]], jnp.ones(1), spec)

    def loss(x):
        return float(losses.total_loss(vgg, x, full_targets, spec)[0])

    rounded = jnp.round(image * 255) / 255
    return {"schedule": schedule, "memory": memory, "pyramid_levels": pyramid_levels,
            "seconds": round(seconds, 2),
            "full_size_steps": trace[-1][0], "loss": loss(image), "loss_8bit": loss(rounded),
            "trace": trace}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--weights", required=True,
                   help="the reference's network (torch_reference.py --save-weights)")
    p.add_argument("--content", default=str(REPOSITORY_ROOT / DEFAULT_CONTENT))
    p.add_argument("--style", default=str(REPOSITORY_ROOT / DEFAULT_STYLE))
    p.add_argument("--schedule", action="append", default=[],
                   help="SIZE:STEPS,...,SIZE (repeatable; default 64:150,128:150,256)")
    p.add_argument("--memories", default="100", help="L-BFGS memories to try, comma-separated")
    p.add_argument("--pyramids", default="1",
                   help="L-BFGS pyramid levels to try, comma-separated (1: plain L-BFGS)")
    p.add_argument("--stop-tolerance", type=float, default=0.0025)
    p.add_argument("--stop-window", type=int, default=20)
    p.add_argument("--max-steps", type=int, default=400, help="cap on full-size steps")
    args = p.parse_args(argv)
    schedules = [parse_schedule(s) for s in args.schedule or ["64:150,128:150,256"]]
    full = {s[-1][0] for s in schedules}
    if len(full) != 1:
        p.error("every schedule must end at the same size")
    size = full.pop()
    cfg = Config(**REFERENCE_WEIGHTS, image_size=size)
    spec = losses.LossSpec.from_config(cfg)
    vgg = optimize.prepared(vgg19.load(args.weights, source="torchvision"), spec)
    content, style = _read(args.content, size)[None], _read(args.style, size)
    for schedule in schedules:
        for memory in (int(m) for m in args.memories.split(",")):
            for levels in (int(v) for v in args.pyramids.split(",")):
                record = run(vgg, spec, content, style, schedule, memory, args.stop_tolerance,
                             args.stop_window, args.max_steps, levels)
                print(json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
