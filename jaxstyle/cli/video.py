"""``jaxstyle video IN --style S -o OUT``: a film stylized frame by frame without flicker
(`jaxstyle.video`: warped starts and the temporal term), streamed: one frame in memory at a time.

flags → a `film.FilmJob` (the input probed, every setting checked) → its styles, guidance and
start image, loaded once → `film.run_film` with the frame bar → the film (`film.FrameFiles`) and
one line saying what was written.

Finished frames go to ``OUT.frames/`` (8-bit PNGs, written atomically) as they are done; when the
last is done they are encoded into OUT with the input's frame rate and audio, and the folder is
removed. Ctrl-C keeps the folder: ``--resume`` continues after its last frame, and gives the same
film as an uninterrupted run (each frame starts from the stored 8-bit previous frame either way).
The flags are `jaxstyle stylize`'s (those that make sense for one frame) plus the video's own.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from jaxstyle import flow, image_io, video, video_io
from jaxstyle.cli import film, inputs, pipeline
from jaxstyle.cli.common import (EXIT_ERROR, EXIT_INTERRUPTED, StopRequest,
                                 enable_compilation_cache, load_network, non_negative_float,
                                 positive)
from jaxstyle.cli.jobs import check_memory
from jaxstyle.cli.stylize_flags import add_stylize_flags, config_from_args
from jaxstyle.errors import JaxstyleError
from jaxstyle.imageops import fit_long_side

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
                        "in order inside, split over the devices (default: one per device, or one "
                        "for a film that lists no frame count; on one device segments bring no "
                        "speed)")
    g.add_argument("--overlap", type=non_negative_int, default=DEFAULT_OVERLAP, metavar="V",
                   help="frames each segment after the first also stylizes before its start, "
                        f"cross-faded with its neighbour's (default {DEFAULT_OVERLAP})")
    g.add_argument("--vmap-segments", action="store_true",
                   help="on a CPU, the segments of one device share each matrix product (vmapped) "
                        "instead of running one after another: faster for small frames, not "
                        "bit-identical to a segment run alone (docs/video.md)")
    p.set_defaults(run=run)


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


def film_job(args: argparse.Namespace) -> film.FilmJob:
    """The film the flags describe, checked before any work (the input probed, not decoded)."""
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
    # Default: one segment a device; a film that does not say its length (often MKV) runs whole.
    num_segments = args.segments or (_default_segments() if info.num_frames is not None else 1)
    if num_segments > 1 and info.num_frames is None:
        raise JaxstyleError(f"'{source}' does not say how many frames it holds, which segments "
                            "need; use --segments 1")
    segments = (video.plan_segments(info.num_frames, num_segments, args.overlap)
                if num_segments > 1 else [video.Segment(0, info.num_frames or film.UNTIL_THE_END, 0)])
    settings = dict(input=str(source.resolve()), size=[height, width], config=repr(cfg),
                    temporal_weight=args.temporal_weight, independent=args.independent,
                    styles=[str(Path(s).resolve()) for s in args.style])
    if num_segments > 1:
        settings.update(segments=num_segments, overlap=args.overlap)
        if args.vmap_segments:  # other rounding: a resume must keep it
            settings.update(vmap_segments=True)
    return film.FilmJob(source, output, height, width, info.frame_rate, info.num_frames,
                        tuple(Path(s) for s in args.style), cfg, tuple(segments),
                        args.temporal_weight, args.independent,
                        args.vmap_segments and num_segments > 1, args.flow_preset, settings)


def load_inputs(args: argparse.Namespace, job: film.FilmJob) -> pipeline.Inputs:
    """The styles, guidance and start image, each read once (the frames stream in later)."""
    long_side = max(job.height, job.width)
    style_long = max(16, round(job.cfg.loss.style_scale * long_side))
    styles = {s: image_io.load_image(s, style_long, role="style image") for s in job.styles}
    init_image = (image_io.load_image(args.init_image, long_side, role="init image")
                  if job.cfg.start.init == "image" else None)
    return pipeline.Inputs({}, styles, inputs.load_guidance(args, job.cfg, long_side, style_long),
                           init_image)


def run(args: argparse.Namespace) -> int:
    video_io.require()  # the video extra: one line if missing
    flow.DISFlow(args.flow_preset)
    job = film_job(args)
    enable_compilation_cache(args)
    loaded = load_inputs(args, job)
    files = film.FrameFiles(job)
    done = files.begin(args.resume)
    vgg = load_network(args, args.quiet)
    started = time.perf_counter()
    stop = StopRequest()
    with stop.on_ctrl_c():  # from here on, Ctrl-C stops at the end of a chunk or a step
        outcome = film.run_film(vgg, job, loaded, files, [film.FrameBar(job, done, args.quiet)],
                                done, lambda: stop.requested)
    if outcome.interrupted:
        print(f"jaxstyle: interrupted; kept {files.stored()} finished frame(s) in {files.folder}; "
              "continue with --resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    broken = outcome.broken
    if outcome.written == 0:
        files.remove()
        raise JaxstyleError(f"'{job.source}' holds no frames FFmpeg can decode" +
                            (f" ({broken})" if broken else ""))
    if broken is not None:
        print(f"jaxstyle: error: {broken}; the {outcome.written} good frames before it are in "
              f"{job.output}", file=sys.stderr)
        return EXIT_ERROR
    print(film.summary(job, outcome, time.perf_counter() - started),
          file=sys.stderr if args.quiet else sys.stdout)
    return 0


def _default_segments() -> int:
    import jax

    return jax.device_count()
