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

With ``--segments N`` it measures parallel segments instead (run it with N simulated devices,
``XLA_FLAGS=--xla_force_host_platform_device_count=N``): the film in one segment, then in N
segments as one batch split over the devices (`jaxstyle.video.plan_segments`, overlaps
cross-faded), the same frames of work in each; prints seconds per frame of work and per output
frame of both, their ratio, and every seam's warping error against the film's median pair.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxstyle import flow, image_io, losses, video, vgg19, warp
from jaxstyle.config import RELATIVE_WEIGHTS, from_preset

ROOT = Path(__file__).resolve().parents[1]


def panning_film(photo: Path, frames: int, size: int, step: int,
                 aspect: float = 0.75) -> np.ndarray:
    """float32[T, h, w, 3]: a window (height ``aspect`` x its width) of the photo sliding right by
    ``step`` px a frame."""
    h, w = round(aspect * size) // 2 * 2, size
    image = image_io.load_image(photo, max(2 * size, w + step * frames + 8))
    y0 = (image.shape[0] - h) // 2
    return np.stack([image[y0:y0 + h, 4 + step * t:4 + step * t + w] for t in range(frames)])


def run(vgg, film, style, cfg, weight, independent):
    """Frame by frame as `jaxstyle video` does; steps: per frame, over every scale it ran."""
    dis = flow.DISFlow("medium")
    out, steps, times = [], [], []
    for t, frame in enumerate(film):
        start = time.perf_counter()
        per_scale = {}

        def count(p, per_scale=per_scale):
            per_scale[p.scale_index] = int(np.max(np.asarray(p.state.step)))

        if t == 0 or independent:
            result = video.stylize_frames(vgg, frame[None], [style], cfg, on_progress=count)
        else:
            s, warped, mask = video.warped_start(out[-1], frame, *dis.pair(film[t - 1], frame))
            result = video.stylize_frames(vgg, frame[None], [style], cfg,
                                          [video.Previous(s, warped, mask)], weight,
                                          on_progress=count)
        out.append(video.quantize(result.images[0]))
        per_scale[len(cfg.schedule.all_scales) - 1] = int(result.steps[0])
        steps.append(sum(per_scale.values()))
        times.append(time.perf_counter() - start)
    return np.stack(out), steps, times


def run_segments(vgg, film, style, cfg, weight, plan, mesh, problems, vmap=False):
    """The film in ``plan``'s segments as one batch of ``problems`` (padded) per step, as
    `jaxstyle video --segments` does; returns {"linear", "paced": the film cross-faded linearly
    or by `video.fade`} and seconds per step."""
    dis = flow.DISFlow("medium")
    outs = [[] for _ in plan]
    times = []
    for i in range(max(len(s) for s in plan)):
        start = time.perf_counter()
        active = [k for k, s in enumerate(plan) if i < len(s)]
        rows = active + [active[0]] * (problems - len(active))
        contents = np.stack([film[plan[k].first + i] for k in rows])
        if i == 0:
            result = video.stylize_frames(vgg, contents, [style], cfg, mesh=mesh, vmap=vmap)
        else:
            prev = {k: video.Previous(*video.warped_start(
                outs[k][-1], film[plan[k].first + i],
                *dis.pair(film[plan[k].first + i - 1], film[plan[k].first + i]))) for k in active}
            result = video.stylize_frames(vgg, contents, [style], cfg, [prev[k] for k in rows],
                                          weight, mesh=mesh, vmap=vmap)
        for row, k in enumerate(active):
            outs[k].append(video.quantize(result.images[row]))
        times.append(time.perf_counter() - start)
    frame = lambda k, t: outs[k][t - plan[k].first]  # noqa: E731
    films = {}
    for name, fades in (("linear", None), ("paced", video.segment_fades(plan, frame))):
        films[name] = np.stack([sum(w * frame(k, t) for k, w in
                                    video.frame_sources(t, plan, fades))
                                for t in range(len(film))])
    return films, times


def segments_report(vgg, film, style, cfg, flows, masks, n, overlap, vmap=False) -> dict:
    plan = video.plan_segments(len(film), n, overlap)
    devices = jax.device_count()
    problems = -(-len(plan) // devices) * devices
    mesh = video.segment_mesh(problems)
    # Compile both programs of both batch sizes first (first frames, later frames).
    video.stylize_frames(vgg, film[:1], [style], cfg)
    run(vgg, film[:2], style, cfg, None, False)
    run_segments(vgg, film[:2 * problems], style, cfg, None,
                 video.plan_segments(2 * problems, problems, 0), mesh, problems, vmap)
    loads = [os.getloadavg()[0]]  # other jobs' load: the machine may be shared
    one, _, times_one = run(vgg, film, style, cfg, None, False)
    loads.append(os.getloadavg()[0])
    films, times_many = run_segments(vgg, film, style, cfg, None, plan, mesh, problems, vmap)
    loads.append(os.getloadavg()[0])
    work = sum(len(s) for s in plan)
    pairs_one = np.asarray(warp.pair_warping_errors(one, flows, masks))
    one_s, many_s = float(np.sum(times_one)), float(np.sum(times_many))
    segmented = dict(seconds=many_s, seconds_per_frame_of_work=many_s / work,
                     seconds_per_output_frame=many_s / len(film))
    for name, many in films.items():
        pairs = np.asarray(warp.pair_warping_errors(many, flows, masks))
        median = float(np.median(pairs))
        # Pair t (frames t-1, t) is a seam pair when t lies in [first, first + overlap] of a
        # segment after the first: where the cross-fade moves (or, without overlap, the cut).
        seams = {s.first: [float(pairs[t - 1]) for t in range(s.first, s.first + s.overlap + 1)
                           if 1 <= t < len(film)] for s in plan[1:]}
        worst = max((max(v) for v in seams.values()), default=0.0)
        # The same pairs of the one-segment film: a pair that is large there too is the film's
        # (its flow), not the seam's.
        over_same = max((pairs[t - 1] / pairs_one[t - 1] for s in plan[1:]
                         for t in range(s.first, s.first + s.overlap + 1) if 1 <= t < len(film)),
                        default=0.0)
        segmented[name] = dict(
            warping_error=float(np.mean(pairs)), median_pair=median, seam_pairs=seams,
            worst_seam_over_median=worst / median,
            worst_seam_over_one_segment_median=worst / float(np.median(pairs_one)),
            worst_seam_over_one_segment_same_pair=float(over_same))
    return dict(
        devices=devices, vmapped=vmap, load_average=loads, segments=[[s.first, s.stop] for s in plan], overlap=overlap,
        frames_of_work=work,
        one_segment=dict(seconds=one_s, seconds_per_frame=one_s / len(film),
                         warping_error=float(np.mean(pairs_one)),
                         pairs=[float(x) for x in pairs_one],
                         median_pair=float(np.median(pairs_one))),
        segmented=segmented,
        time_per_frame_of_work_ratio=(many_s / work) / (one_s / len(film)),
        time_per_output_frame_ratio=(many_s / len(film)) / (one_s / len(film)))


def reference_speed(script: Path, frame: np.ndarray, style_path: str, evals: int) -> dict:
    """The PyTorch reference (neural-style-pt's loop, `torch_reference.py`) on ``frame``
    (float32[S, S, 3]; it resizes to a square) with L-BFGS for ``evals`` evaluations after one
    warm-up, on this machine: its JSON record plus the load average while it ran."""
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        content = Path(tmp) / "frame.png"
        image_io.save_image(frame, content)
        load_before = os.getloadavg()[0]
        out = subprocess.run([sys.executable, str(script), "--size", str(frame.shape[1]),
                              "--optimizer", "lbfgs", "--iters", str(evals), "--warmup", "1",
                              "--content", str(content), "--style", style_path],
                             capture_output=True, text=True, check=True).stdout
    record = json.loads(out.strip().splitlines()[-1])
    return {**record, "load_average": [load_before, os.getloadavg()[0]]}


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
    p.add_argument("--segments", type=int, help="measure N parallel segments against one")
    p.add_argument("--overlap", type=int, default=8, help="with --segments (default 8)")
    p.add_argument("--skip-per-frame", action="store_true",
                   help="only the video path (speed and iterations; no flicker ratio)")
    p.add_argument("--aspect", type=float, default=0.75,
                   help="frame height / width (default 0.75; 1 with --reference: the same pixels)")
    p.add_argument("--reference", type=Path,
                   help="torch_reference.py: also time the PyTorch reference (L-BFGS from the "
                        "first frame, no warm start) at the same size, after the video run")
    p.add_argument("--reference-evals", type=int, default=5)
    p.add_argument("--vmap", action="store_true",
                   help="with --segments: the problems of one device vmapped, not one after "
                        "another (jaxstyle video --vmap-segments)")
    p.add_argument("--stop-tolerance", type=float,
                   help="the fast preset's early-stopping rule (default: its 0.0025)")
    args = p.parse_args(argv)
    vgg = vgg19.load(args.weights)
    extra = {} if args.stop_tolerance is None else dict(stop_tolerance=args.stop_tolerance)
    cfg = from_preset("fast", image_size=args.size, num_iterations=args.iterations,
                      loss_scale="relative", **RELATIVE_WEIGHTS, **extra)
    film = panning_film(Path(args.content), args.frames, args.size, args.step, args.aspect)
    style = image_io.load_image(args.style, args.size)
    dis = flow.DISFlow("medium")
    pairs = [dis.pair(film[t - 1], film[t]) for t in range(1, len(film))]
    flows = np.stack([b for _, b in pairs])
    masks = np.stack([np.asarray(warp.occlusion_mask(f, b)) for f, b in pairs])
    if args.segments:
        report = dict(size=list(film.shape[1:3]), frames=len(film), step_px=args.step,
                      iterations_cap=args.iterations, device=str(jax.devices()[0]),
                      **segments_report(vgg, film, style, cfg, flows, masks, args.segments,
                                        args.overlap, args.vmap))
        print(json.dumps(report, indent=1))
        return
    video.stylize_frames(vgg, film[:1], [style], cfg)  # compile the first-frame program
    if args.skip_per_frame:
        per_frame, steps_pf, times_pf = film, [0], [0.0, 0.0]
    else:
        per_frame, steps_pf, times_pf = run(vgg, film, style, cfg, None, True)
    err_pf = float(warp.warping_error(per_frame, flows, masks))
    dist_pf = style_distance(vgg, per_frame, style, cfg.loss.style_layers)
    report = dict(size=list(film.shape[1:3]), frames=len(film), step_px=args.step,
                  iterations_cap=args.iterations, device=str(jax.devices()[0]),
                  per_frame=dict(warping_error=err_pf, style_distance=dist_pf,
                                 iterations_mean=float(np.mean(steps_pf)),
                                 seconds_per_frame=float(np.mean(times_pf[1:]))),
                  input_warping_error=float(warp.warping_error(film, flows, masks)), video={})
    for weight in args.temporal_weight or [None]:
        out, steps, times = run(vgg, film, style, cfg, weight, False)
        err = float(warp.warping_error(out, flows, masks))
        dist = style_distance(vgg, out, style, cfg.loss.style_layers)
        key = str(weight if weight is not None else video.default_temporal_weight(cfg))
        report["video"][key] = dict(
            warping_error=err, flicker_ratio=err_pf / max(err, 1e-30), style_distance=dist,
            style_ratio=dist / dist_pf, iterations_first=steps[0],
            iterations=steps, seconds=times,
            iterations_later_mean=float(np.mean(steps[1:])),
            later_over_first=float(np.mean(steps[1:]) / steps[0]),
            seconds_first=times[0], seconds_per_later_frame=float(np.mean(times[2:] or times[1:])),
            seconds_per_later_iteration=float(np.mean(times[2:] or times[1:])
                                              / np.mean(steps[2:] or steps[1:])),
            load_average=os.getloadavg()[0])
    if args.reference:
        ref = reference_speed(args.reference, film[0], args.style, args.reference_evals)
        report["reference"] = ref
        for key, v in report["video"].items():
            s_eval = ref["ms_per_eval"] / 1e3
            v["reference_eval_over_later_iteration"] = s_eval / v["seconds_per_later_iteration"]
            # A frame from scratch: as many evaluations as jaxstyle's first frame took (its
            # coarse scales included), or neural-style's default 1000.
            v["reference_seconds_per_frame"] = {
                "evals_as_first_frame": s_eval * v["iterations_first"], "evals_1000": s_eval * 1e3}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
