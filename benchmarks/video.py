"""Flicker of `jaxstyle video` against per-frame stylization, on a synthetic panning film.

    python -m benchmarks.video --weights vgg19.safetensors [--size 64] [--frames 8] [--iterations 30]

The film: windows sliding over a photo (``../shared/images/tubingen.jpg``) by ``--step`` pixels a
frame, so every frame pair has a known, whole-pixel motion. Both runs use the same settings and the
library path of the CLI (`jaxstyle.video.stylize_frames`); the flows are DIS on the input frames,
as `jaxstyle video` computes them. Prints one JSON object:

  warping_error: Lai et al. 2018's temporal warping error of each film (`jaxstyle.warp`), and
    their ratio per_frame / video (the issue's target: >= 3);
  style_distance: mean over frames and style layers of ‖G(frame) − G(style)‖² / ‖G(style)‖² (Gram
    matrices of the same VGG-19), and the ratio video / per_frame (target: within 1.1);
  iterations: first frame and mean of the later ones (target: later <= 0.3x the first);
  seconds_per_frame of each run (after a warm-up frame that compiles).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxstyle import flow, image_io, losses, video, vgg19, warp
from jaxstyle.config import RELATIVE_WEIGHTS, from_preset

ROOT = Path(__file__).resolve().parents[1]


def panning_film(photo: Path, frames: int, size: int, step: int) -> np.ndarray:
    """float32[T, h, w, 3]: a 3:4 window of the photo sliding right by ``step`` px a frame."""
    h, w = (3 * size) // 4 // 2 * 2, size
    image = image_io.load_image(photo, max(2 * size, w + step * frames + 8))
    y0 = (image.shape[0] - h) // 2
    return np.stack([image[y0:y0 + h, 4 + step * t:4 + step * t + w] for t in range(frames)])


def run(vgg, film, style, cfg, weight, independent):
    dis = flow.DISFlow("medium")
    out, steps, times = [], [], []
    for t, frame in enumerate(film):
        start = time.perf_counter()
        if t == 0 or independent:
            result = video.stylize_frames(vgg, frame[None], [style], cfg)
        else:
            s, warped, mask = video.warped_start(out[-1], frame, *dis.pair(film[t - 1], frame))
            result = video.stylize_frames(vgg, frame[None], [style], cfg,
                                          [video.Previous(s, warped, mask)], weight)
        out.append(video.quantize(result.images[0]))
        steps.append(int(result.steps[0]))
        times.append(time.perf_counter() - start)
    return np.stack(out), steps, times


def style_distance(vgg, frames, style, layers) -> float:
    spec_layers = tuple(layers)

    @jax.jit
    def grams(x):
        feats = vgg19.features(vgg, x, spec_layers)
        return [losses.gram_matrix(feats[n]) for n in spec_layers]

    target = grams(jnp.asarray(style)[None])
    got = grams(jnp.asarray(frames))
    return float(np.mean([np.mean([float(jnp.sum((g[i] - t[0]) ** 2) / jnp.sum(t[0] ** 2))
                                   for g, t in zip(got, target)]) for i in range(len(frames))]))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", required=True, help="a converted VGG-19 .safetensors file")
    p.add_argument("--content", default=str(ROOT.parent / "shared/images/tubingen.jpg"))
    p.add_argument("--style", default=str(ROOT.parent / "shared/images/starry_night.jpg"))
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--step", type=int, default=3)
    p.add_argument("--iterations", type=int, default=30)
    p.add_argument("--temporal-weight", type=float, action="append",
                   help="repeatable (default: jaxstyle's default)")
    args = p.parse_args(argv)
    vgg = vgg19.load(args.weights)
    cfg = from_preset("fast", image_size=args.size, num_iterations=args.iterations,
                      loss_scale="relative", **RELATIVE_WEIGHTS)
    film = panning_film(Path(args.content), args.frames, args.size, args.step)
    style = image_io.load_image(args.style, args.size)
    dis = flow.DISFlow("medium")
    pairs = [dis.pair(film[t - 1], film[t]) for t in range(1, len(film))]
    flows = np.stack([b for _, b in pairs])
    masks = np.stack([np.asarray(warp.occlusion_mask(f, b)) for f, b in pairs])
    video.stylize_frames(vgg, film[:1], [style], cfg)  # compile the first-frame program
    per_frame, steps_pf, times_pf = run(vgg, film, style, cfg, None, True)
    err_pf = float(warp.warping_error(per_frame, flows, masks))
    dist_pf = style_distance(vgg, per_frame, style, cfg.style_layers)
    report = dict(size=list(film.shape[1:3]), frames=len(film), step_px=args.step,
                  iterations_cap=args.iterations, device=str(jax.devices()[0]),
                  per_frame=dict(warping_error=err_pf, style_distance=dist_pf,
                                 iterations_mean=float(np.mean(steps_pf)),
                                 seconds_per_frame=float(np.mean(times_pf[1:]))),
                  input_warping_error=float(warp.warping_error(film, flows, masks)), video={})
    for weight in args.temporal_weight or [None]:
        out, steps, times = run(vgg, film, style, cfg, weight, False)
        err = float(warp.warping_error(out, flows, masks))
        dist = style_distance(vgg, out, style, cfg.style_layers)
        key = str(weight if weight is not None else video.default_temporal_weight(cfg))
        report["video"][key] = dict(
            warping_error=err, flicker_ratio=err_pf / max(err, 1e-30), style_distance=dist,
            style_ratio=dist / dist_pf, iterations_first=steps[0],
            iterations_later_mean=float(np.mean(steps[1:])),
            later_over_first=float(np.mean(steps[1:]) / steps[0]),
            seconds_first=times[0], seconds_per_later_frame=float(np.mean(times[2:] or times[1:])))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
