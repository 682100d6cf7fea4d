"""``jaxstyle video IN --style S -o OUT``: a film stylized frame by frame without flicker
(`jaxstyle.video`: warped starts and the temporal term), streamed: one frame in memory at a time.

Finished frames go to ``OUT.frames/`` (8-bit PNGs, written atomically) as they are done; when the
last is done they are encoded into OUT with the input's frame rate and audio, and the folder is
removed. Ctrl-C keeps the folder: ``--resume`` continues after its last frame, and gives the same
film as an uninterrupted run (each frame starts from the stored 8-bit previous frame either way).
The flags are `jaxstyle stylize`'s (those that make sense for one frame) plus the video's own.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from jaxstyle import image_io
from jaxstyle.cli import inputs
from jaxstyle.cli.jobs import check_memory
from jaxstyle.cli.stylize_flags import add_stylize_flags, config_from_args
from jaxstyle.cli.common import (EXIT_ERROR, EXIT_INTERRUPTED, enable_compilation_cache,
                                 load_network, non_negative_float, positive, progress_bar)
from jaxstyle.errors import JaxstyleError
from jaxstyle.imageops import fit_long_side

FRAMES_SUFFIX = ".frames"
# `jaxstyle stylize` flags that do not apply to a film (several contents, sweeps, GIFs, snapshots,
# the live view) or that the video defines itself.
NOT_FOR_FILMS = {"help", "content", "output", "batch_size", "all_pairs", "sweep", "gif",
                 "gif_every", "save_iter", "log_dir", "web", "web_keep", "bit_depth"}
DEFAULT_LONG_SIDE = 512
# Cross-faded frames between segments: the two segments' styles differ about as much as two
# frames stylized alone (~10-60x the warping error of a stable film); a linear fade over V frames
# spreads that over V + 1 pairs, (V + 1)² times less per pair. Measured on a 120-frame pan in 4
# segments (docs/video.md): V = 8 left seams at 17x the film's median pair, V = 24 at 2.4x.
DEFAULT_OVERLAP = 24


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0; got {text}")
    return value


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("video", help="stylize a film without flicker",
                       description="Stylize a video (any format FFmpeg reads, or a folder of "
                                   "frames) frame by frame, each frame starting from the previous "
                                   "one warped by optical flow, with a temporal loss (Ruder et al. "
                                   "2016). Takes `jaxstyle stylize`'s flags.")
    p.add_argument("input", help="video file, or a folder of frames")
    p.add_argument("-o", "--output", required=True,
                   help="output video (.mp4, .mov, .mkv, .avi: H.264; .webm: VP9), or a folder "
                        "for PNG frames")
    add_stylize_flags(p, exclude=NOT_FOR_FILMS)
    g = p.add_argument_group("video")
    g.add_argument("--temporal-weight", type=non_negative_float, metavar="W",
                   help="weight of the temporal term Σc(x−ω)²/(H·W·3) on [0,1] pixels (default "
                        "30 with the relative loss weights; Ruder et al.'s 1e3·255² with "
                        "neural-style's absolute ones)")
    g.add_argument("--flow-preset", choices=("ultrafast", "fast", "medium"), default="medium",
                   help="OpenCV DIS optical flow preset (default medium)")
    g.add_argument("--independent", action="store_true",
                   help="stylize every frame alone, from scratch (per-frame stylization, which "
                        "flickers: for comparison)")
    g.add_argument("--segments", type=positive(int), metavar="N",
                   help="cut the film into N segments stylized side by side as one batch, each "
                        "in order inside, split over the devices (default: one per device; on "
                        "one device segments bring no speed)")
    g.add_argument("--overlap", type=non_negative_int, default=DEFAULT_OVERLAP, metavar="V",
                   help="frames each segment after the first also stylizes before its start, "
                        f"cross-faded with its neighbour's (default {DEFAULT_OVERLAP})")
    g.add_argument("--vmap-segments", action="store_true",
                   help="on a CPU, the segments of one device share each matrix product (vmapped) "
                        "instead of running one after another: faster for small frames, not "
                        "bit-identical to a segment run alone (docs/video.md)")
    p.set_defaults(run=run)


def _frame_done(index: int) -> None:
    """Called after each frame is stored (tests interrupt a run here)."""


def _frame_path(folder: Path, index: int) -> Path:
    return folder / f"frame_{index:06d}.png"


def _finished_frames(folder: Path) -> int:
    n = 0
    while _frame_path(folder, n).exists():
        n += 1
    return n


def _film_size(args, info) -> tuple[int, int, int]:
    """(long side, height, width) of the output frames: --image-size, else the input's long side
    up to 512; even sides (H.264's 4:2:0 needs them): an odd long side is refused, the short side
    rounded down to even."""
    long_side = args.image_size or (max(args.scales) if args.scales else
                                    min(DEFAULT_LONG_SIDE, max(info.height, info.width)))
    if long_side % 2:
        raise JaxstyleError(f"--image-size {long_side} is odd; video frames need even sides")
    h, w = fit_long_side(info.height, info.width, long_side)
    return long_side, h - h % 2, w - w % 2


def run(args: argparse.Namespace) -> int:
    from jaxstyle import flow, video, video_io  # the video extra: one line if missing

    video_io.require()
    flow.DISFlow(args.flow_preset)
    source, output = Path(args.input), Path(args.output)
    info = video_io.probe(source)
    if info.num_frames == 0:
        raise JaxstyleError(f"'{source}' holds no frames")
    if info.variable_rate:
        raise JaxstyleError(f"'{source}' has a variable frame rate; convert it to a constant rate "
                            "first (e.g. ffmpeg -i IN -vsync cfr OUT)")
    if output.resolve() == source.resolve():
        raise JaxstyleError(f"the output '{output}' would overwrite the input; choose another")
    long_side, height, width = _film_size(args, info)
    if args.image_size is None and not args.scales:
        args.image_size = long_side
    cfg = config_from_args(args)
    if min(height, width) < 16:
        raise JaxstyleError(f"the frames are {width}x{height} at {long_side} px; VGG-19 needs 16 px "
                            "on the short side: raise --image-size")
    inputs.check_guidance_flags(args, cfg, has_content=True)
    check_memory(cfg, height, width, num_styles=len(args.style))
    enable_compilation_cache(args)
    style_long = max(16, round(cfg.loss.style_scale * long_side))
    styles = [image_io.load_image(s, style_long, role="style image") for s in args.style]
    guide = inputs.load_guidance(args, cfg, long_side, style_long)
    init_image = (image_io.load_image(args.init_image, long_side, role="init image")
                  if cfg.start.init == "image" else None)

    folder = Path(str(output) + FRAMES_SUFFIX)
    segments = args.segments or _default_segments()
    if segments > 1 and info.num_frames is None:
        raise JaxstyleError(f"'{source}' does not say how many frames it holds, which segments "
                            "need; use --segments 1")
    settings = dict(input=str(source.resolve()), size=[height, width], config=repr(cfg),
                    temporal_weight=args.temporal_weight, independent=args.independent,
                    styles=[str(Path(s).resolve()) for s in args.style])
    if segments > 1:
        settings.update(segments=segments, overlap=args.overlap)
        if args.vmap_segments:  # other rounding: a resume must keep it
            settings.update(vmap_segments=True)
    done = 0
    if args.resume:
        try:
            saved = json.loads((folder / "settings.json").read_text())
        except (OSError, ValueError):
            raise JaxstyleError(f"--resume: no finished frames in '{folder}' (left by an "
                                "interrupted run); run without --resume") from None
        if saved != settings:
            raise JaxstyleError(f"--resume: '{folder}' was made with other settings or another "
                                "input; use the same flags or drop --resume")
        done = _finished_frames(folder) if segments == 1 else 0
    elif folder.exists():
        raise JaxstyleError(f"'{folder}' holds frames of an interrupted run: continue it with "
                            "--resume, or delete it")
    else:
        folder.mkdir(parents=True)
        (folder / "settings.json").write_text(json.dumps(settings))

    vgg = load_network(args, args.quiet)
    dis = flow.DISFlow(args.flow_preset)
    if segments > 1:
        return _run_segments(args, source, output, folder, info, vgg, dis, styles, cfg, guide,
                             init_image, height, width, segments)
    total = info.num_frames
    bar = progress_bar(total, "frame", args.quiet, desc="video", initial=done)
    previous_in = previous_out = None
    steps: list[int] = []
    broken = None
    started = time.perf_counter()
    try:
        for index, frame in enumerate(video_io.read_frames(source, height, width)):
            if index < done - 1:
                continue
            if index == done - 1:  # resuming: the last finished frame and its input
                previous_in = frame
                previous_out = image_io.load_image(_frame_path(folder, index), role="frame")
                continue
            if previous_out is None or args.independent:
                result = video.stylize_frames(vgg, frame[None], styles, cfg, guidance=guide,
                                              init_image=init_image)
            else:
                start, warped, mask = video.warped_start(previous_out, frame,
                                                         *dis.pair(previous_in, frame))
                result = video.stylize_frames(vgg, frame[None], styles, cfg,
                                              [video.Previous(start, warped, mask)],
                                              args.temporal_weight, guidance=guide)
            if result.diverged[0]:
                raise JaxstyleError(f"the loss of frame {index} became NaN or infinite; kept "
                                    f"{index} frames in '{folder}'. Lower --style-weight or "
                                    "--temporal-weight and --resume")
            previous_out = video.quantize(result.images[0])
            previous_in = frame
            image_io.save_image(previous_out, _frame_path(folder, index))
            steps.append(int(result.steps[0]) if result.steps is not None
                         else cfg.schedule.num_iterations)
            bar.update(1)
            bar.set_postfix(it=steps[-1], loss=f"{float(result.loss[0]):.4g}", refresh=False)
            _frame_done(index)
    except video_io.BrokenStream as e:
        broken = e
    except KeyboardInterrupt:
        bar.close()
        kept = _finished_frames(folder)
        print(f"jaxstyle: interrupted; kept {kept} finished frame(s) in {folder}; continue with "
              "--resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    bar.close()
    finished = _finished_frames(folder)
    if finished == 0:
        shutil.rmtree(folder, ignore_errors=True)
        raise JaxstyleError(f"'{source}' holds no frames FFmpeg can decode" +
                            (f" ({broken})" if broken else ""))
    with video_io.FilmWriter(output, height, width, info.frame_rate,
                             audio_from=None if source.is_dir() else source) as writer:
        for index in range(finished):
            writer.write(image_io.load_image(_frame_path(folder, index), role="frame"))
    shutil.rmtree(folder, ignore_errors=True)
    seconds = time.perf_counter() - started
    later = steps[1:] if done == 0 else steps
    summary = (f"wrote {output} ({finished} frames at {float(info.frame_rate):g} fps, "
               f"{seconds / max(len(steps), 1):.2f} s a frame; iterations: first "
               f"{steps[0] if steps and done == 0 else '-'}, then a mean of "
               f"{np.mean(later) if later else 0:.1f})")
    if broken is not None:
        print(f"jaxstyle: error: {broken}; the {finished} good frames before it are in {output}",
              file=sys.stderr)
        return EXIT_ERROR
    print(summary, file=sys.stderr if args.quiet else sys.stdout)
    return 0


def _default_segments() -> int:
    import jax

    return jax.device_count()


def _segment_path(folder: Path, k: int, index: int) -> Path:
    return folder / f"segment_{k:03d}" / f"frame_{index:06d}.png"


def _run_segments(args, source, output, folder, info, vgg, dis, styles, cfg, guide, init_image,
                  height, width, num_segments) -> int:
    """The film in `video.plan_segments`' segments, side by side as one batch (split over the
    devices when they divide it): step i stylizes frame i of every segment. Segment k's frames go
    to ``OUT.frames/segment_k/``; the output cross-fades the overlaps (`video.frame_sources`)."""
    import jax

    from jaxstyle import video, video_io

    plan = video.plan_segments(info.num_frames, num_segments, args.overlap)
    devices = jax.device_count()
    problems = -(-len(plan) // devices) * devices  # padded to the devices (padding discarded)
    mesh = video.segment_mesh(problems)
    length = max(len(s) for s in plan)
    for k in range(len(plan)):
        (folder / f"segment_{k:03d}").mkdir(parents=True, exist_ok=True)

    def finished(k: int) -> int:
        n = 0
        while n < len(plan[k]) and _segment_path(folder, k, plan[k].first + n).exists():
            n += 1
        return n

    done = min(finished(k) for k in range(len(plan))) if args.resume else 0
    readers, prev_in, prev_out = [], [None] * len(plan), [None] * len(plan)
    for k, s in enumerate(plan):
        readers.append(video_io.read_frames(source, height, width,
                                            skip=s.first + max(done - 1, 0)))
        if 0 < done <= len(s):  # resuming: each segment's last finished frame and its input
            prev_in[k] = next(readers[k])
            prev_out[k] = image_io.load_image(_segment_path(folder, k, s.first + done - 1),
                                              role="frame")
    work = sum(len(s) for s in plan)
    bar = progress_bar(work, "frame", args.quiet, desc=f"video x{len(plan)}",
                       initial=sum(min(done, len(s)) for s in plan))
    steps: list[list[int]] = []
    broken = None
    started = time.perf_counter()
    try:
        for i in range(done, length):
            active = [k for k, s in enumerate(plan) if i < len(s)]
            frames = {k: next(readers[k]) for k in active}
            pad = [active[0]] * (problems - len(active))
            contents = np.stack([frames[k] for k in active + pad])
            if i == 0 or args.independent:
                result = video.stylize_frames(vgg, contents, styles, cfg, guidance=guide,
                                              init_image=init_image, mesh=mesh,
                                              vmap=args.vmap_segments)
            else:
                previous = {k: video.Previous(*video.warped_start(
                    prev_out[k], frames[k], *dis.pair(prev_in[k], frames[k]))) for k in active}
                result = video.stylize_frames(vgg, contents, styles, cfg,
                                              [previous[k] for k in active + pad],
                                              args.temporal_weight, guidance=guide, mesh=mesh,
                                              vmap=args.vmap_segments)
            for row, k in enumerate(active):
                index = plan[k].first + i
                if result.diverged[row]:
                    raise JaxstyleError(f"the loss of frame {index} became NaN or infinite; "
                                        f"finished frames are kept in '{folder}'. Lower "
                                        "--style-weight or --temporal-weight and --resume")
                prev_out[k], prev_in[k] = video.quantize(result.images[row]), frames[k]
                image_io.save_image(prev_out[k], _segment_path(folder, k, index))
            steps.append([int(result.steps[row]) if result.steps is not None
                          else cfg.schedule.num_iterations for row in range(len(active))])
            bar.update(len(active))
            bar.set_postfix(it=max(steps[-1]), refresh=False)
            _frame_done(i)
    except video_io.BrokenStream as e:
        broken = e
    except KeyboardInterrupt:
        bar.close()
        kept = sum(finished(k) for k in range(len(plan)))
        print(f"jaxstyle: interrupted; kept {kept} finished frame(s) in {folder}; continue with "
              "--resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    bar.close()

    def ready(index: int) -> bool:
        return all(_segment_path(folder, k, index).exists()
                   for k, _ in video.frame_sources(index, plan))

    good = 0
    while good < info.num_frames and ready(good):
        good += 1
    if good == 0:
        shutil.rmtree(folder, ignore_errors=True)
        raise JaxstyleError(f"'{source}' holds no frames FFmpeg can decode" +
                            (f" ({broken})" if broken else ""))
    def load(k: int, index: int) -> np.ndarray:
        return image_io.load_image(_segment_path(folder, k, index), role="frame")

    # Fades paced by how much the segments differ along each overlap (`video.fade`).
    fades = video.segment_fades(plan, load, upto=good)
    with video_io.FilmWriter(output, height, width, info.frame_rate,
                             audio_from=None if source.is_dir() else source) as writer:
        for index in range(good):
            writer.write(sum(w * load(k, index) for k, w in
                             video.frame_sources(index, plan, fades)))
    if broken is not None:
        print(f"jaxstyle: error: {broken}; the {good} good frames before it are in {output} "
              f"(stylized frames of later segments are kept in {folder})", file=sys.stderr)
        return EXIT_ERROR
    shutil.rmtree(folder, ignore_errors=True)
    seconds = time.perf_counter() - started
    later = [n for row in steps[1:] for n in row]
    print(f"wrote {output} ({good} frames at {float(info.frame_rate):g} fps, {len(plan)} "
          f"segments of {length} frames, {seconds / max(len(steps), 1):.2f} s a step of "
          f"{len(plan)} frames; iterations: later frames a mean of "
          f"{np.mean(later) if later else 0:.1f})", file=sys.stderr if args.quiet else sys.stdout)
    return 0
