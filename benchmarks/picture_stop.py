"""How the 8-bit picture settles while the default schedule runs on: the study behind the picture
stopping rule (`Config.stop_change`, issue 29).

Runs the "fast" preset's schedule in process (the reference's network and loss weights, the images
as `benchmarks.cli_quality` writes them) with no early stop, the full size capped at
``--max-steps``, and records after every ``--every`` steps of each scale the 8-bit image
(round(255·x)), the wall time since the run began and, at the full size, the loss of that 8-bit
image. It then prints, per scale and per window W (a multiple of ``--every``), the picture's mean
absolute change in levels and the fraction of values that changed between step k and step k - W,
at each multiple k of W (what the rule sees), with the 8-bit loss there: a JSON line per scale
and window. The coarse scales run to their cap, so the full size starts a little further on than
in a run that stops its coarse scales early: the exact figures come from `benchmarks.cli_quality`.

  python -m benchmarks.picture_stop --weights vgg19.pth --size 256 --tv-weight 0
  python -m benchmarks.picture_stop --weights vgg19.pth --size 256 --style-loss w2
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.cli_quality import REFERENCE_WEIGHTS, read_image
from benchmarks.inputs import DEFAULT_CONTENT, DEFAULT_STYLE, find_shared


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--weights", required=True, help="the reference's --save-weights file")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--tv-weight", type=float, default=REFERENCE_WEIGHTS["tv_weight"])
    p.add_argument("--style-loss", default="gram")
    p.add_argument("--max-steps", type=int, default=200, help="full-size steps")
    p.add_argument("--every", type=int, default=10)
    p.add_argument("--windows", default="10,20,40")
    args = p.parse_args(argv)
    import jax.numpy as jnp
    from PIL import Image

    from jaxstyle import losses, stylize, vgg19
    from jaxstyle.config import from_preset

    cfg = from_preset("fast", **{**REFERENCE_WEIGHTS, "tv_weight": args.tv_weight},
                      image_size=args.size, style_loss=args.style_loss, stop_tolerance=0.0,
                      stop_change=0.0, num_iterations=args.max_steps)
    vgg = vgg19.load(args.weights, source="torchvision")
    with tempfile.TemporaryDirectory() as tmp:
        images = {}
        for name, rel in (("content", DEFAULT_CONTENT), ("style", DEFAULT_STYLE)):
            path = Path(tmp) / f"{name}.png"
            Image.open(find_shared(rel)).convert("RGB").resize(
                (args.size, args.size), Image.LANCZOS).save(path)
            images[name] = read_image(path)
    spec = losses.LossSpec.from_config(cfg)
    full_vgg = vgg19.truncate(vgg, spec.layers)
    targets = losses.targets(full_vgg, images["content"], [images["style"]], [1.0], spec)

    @functools.lru_cache(maxsize=None)
    def loss_at(index: int, step: int) -> float:
        u8 = {k: u8 for k, _, u8 in records[index]}[step]
        return float(losses.total_loss(full_vgg, jnp.asarray(u8[None], jnp.float32) / 255.0,
                                       targets, spec)[0])

    records: dict[int, list] = {}
    start = time.perf_counter()

    def seen(progress: stylize.Progress) -> None:
        u8 = np.round(np.clip(progress.images[0], 0, 1) * 255).astype(np.uint8)
        records.setdefault(progress.scale_index, []).append(
            (progress.iteration, time.perf_counter() - start, u8))

    stylize.stylize_batch(vgg, images["content"], [images["style"][0]], cfg, on_progress=seen,
                          every=(args.every,))
    last = len(cfg.schedule.all_scales) - 1
    for index, rows in sorted(records.items()):
        rows = [(0, 0.0, None)] + rows  # no image before the first chunk: changes start at W
        by_step = {k: (t, u8) for k, t, u8 in rows}
        for window in map(int, args.windows.split(",")):
            points = []
            for k, (t, u8) in sorted(by_step.items()):
                old = by_step.get(k - window, (None, None))[1]
                if k % window or old is None or u8 is None:
                    continue
                diff = np.abs(u8.astype(np.int32) - old.astype(np.int32))
                point = {"step": k, "seconds": round(t, 1),
                         "mean_levels": round(float(diff.mean()), 4),
                         "changed": round(float((diff > 0).mean()), 4)}
                if index == last:
                    point["loss_u8"] = round(loss_at(index, k), 4)
                points.append(point)
            print(json.dumps({"scale": cfg.schedule.all_scales[index], "window": window,
                              "tv_weight": args.tv_weight, "style_loss": args.style_loss,
                              "points": points}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
