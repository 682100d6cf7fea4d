"""``jaxstyle stylize``: flags → `Config`, files → arrays, `stylize.stylize_batch` (one content
image) or `batch.stylize_many` (several, into a directory) → files, with a progress bar, snapshots,
a GIF, Ctrl-C and resume checkpoints."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import jax
import numpy as np

from jaxstyle import batch, image_io, memory
from jaxstyle import stylize as stylize_lib
from jaxstyle.cli import resume
from jaxstyle.cli.common import (EXIT_ERROR, EXIT_INTERRUPTED, StopRequest, add_weights_flags,
                                 available_memory, compile_clock, csv, enable_compilation_cache,
                                 is_out_of_memory, load_network,
                                 non_negative_float, out_of_memory_error, positive, progress_bar,
                                 warn)
from jaxstyle.cli.inputs import (GUIDANCE_FLAGS, check_guidance_flags, guidance_inputs,
                                 load_guidance)
from jaxstyle.cli.sweep import SWEEP_FLAGS, run_sweep, sweep_axis
from jaxstyle.cli.watch import open_watch, web_address
from jaxstyle.config import (DTYPES, HISTORY_DTYPES, INITS, NORMALIZATIONS, OPTIMIZERS, PRESETS,
                             RELATIVE_WEIGHTS, STYLE_LOSSES, Config, from_preset)
from jaxstyle.errors import JaxstyleError
from jaxstyle.files import check_outputs
from jaxstyle.imageops import fit_long_side

CHECKPOINT_SUFFIX = resume.SUFFIX


def add_parser(sub: argparse._SubParsersAction) -> None:
    d = Config()
    p = sub.add_parser("stylize", help="stylize content image(s)",
                       description="Stylize a content image with one or more style images. Defaults "
                                   "reproduce jcjohnson/neural-style.")
    p.add_argument("content", nargs="*",
                   help="content image(s), or folders of them; none with --content-map and "
                        "--init noise paints the map (a doodle) in the style")
    p.add_argument("--style", "-s", action="extend", nargs="+", required=True, metavar="IMAGE",
                   help="style image(s); several are blended (see --style-blend-weights)")
    p.add_argument("-o", "--output", default="out.png",
                   help="output image (default out.png); a directory (an existing one, or a path "
                        "ending with /) writes <content name>.png in it, as for several contents")
    add_weights_flags(p)
    g = p.add_argument_group("loss")
    weights_help = ("default: each term relative to its target's scale (see --preset); any of "
                    "the three given: neural-style's meaning, the others {}")
    g.add_argument("--content-weight", type=non_negative_float,
                   help=weights_help.format(f"default {d.content_weight:g}"))
    g.add_argument("--style-weight", type=non_negative_float,
                   help=weights_help.format(f"default {d.style_weight:g}"))
    g.add_argument("--tv-weight", type=non_negative_float,
                   help=weights_help.format(f"default {d.tv_weight:g}"))
    g.add_argument("--content-layers", type=csv(str), default=d.content_layers, metavar="L1,L2",
                   help=f"default {','.join(d.content_layers)}")
    g.add_argument("--style-layers", type=csv(str), default=d.style_layers, metavar="L1,L2",
                   help=f"default {','.join(d.style_layers)}")
    g.add_argument("--content-layer-weights", type=csv(float), metavar="W1,W2")
    g.add_argument("--style-layer-weights", type=csv(float), metavar="W1,W2")
    g.add_argument("--style-blend-weights", type=csv(float), metavar="W1,W2",
                   help="one per style image (default equal)")
    g.add_argument("--normalization", choices=NORMALIZATIONS, default=d.normalization)
    g.add_argument("--style-loss", choices=STYLE_LOSSES, default=d.style_loss,
                   help="gram, or w2: Wasserstein-2 distance between Gaussian fits of the features")
    g = p.add_argument_group("optimization")
    g.add_argument("--preset", choices=tuple(PRESETS), default="fast",
                   help="fast (default): a 3-scale pyramid, stop when converged, loss weights "
                        "relative to their targets' scales; neural-style: exactly neural-style's "
                        "run (1000 L-BFGS iterations, its loss weights, no early stop). Explicit "
                        "flags override it")
    g.add_argument("--stop-tolerance", type=non_negative_float, metavar="FRACTION",
                   help="stop when the loss improved by less than this fraction over the last "
                        "--stop-window iterations; 0: never "
                        f"(default {PRESETS['fast']['stop_tolerance']:g})")
    g.add_argument("--stop-window", type=positive(int), metavar="N",
                   help=f"default {PRESETS['fast']['stop_window']}")
    g.add_argument("--average", type=non_negative_float, metavar="DECAY",
                   help="the result is the bias-corrected moving average of the iterates with "
                        "this decay, e.g. 0.9 (default off)")
    g.add_argument("--keep-best", action="store_true", default=None,
                   help="the result is the iterate with the lowest loss (for --optimizer adam)")
    g.add_argument("--optimizer", choices=OPTIMIZERS)
    g.add_argument("--learning-rate", type=positive(float),
                   help="Adam step in [0,1] pixel units (default 0.04) / L-BFGS step scale (default 1)")
    g.add_argument("--lbfgs-memory", type=positive(int),
                   help=f"curvature pairs L-BFGS keeps (default {PRESETS['fast']['lbfgs_memory']}; "
                        f"neural-style: {d.lbfgs_memory})")
    g.add_argument("--lbfgs-pyramid", type=positive(int), metavar="LEVELS",
                   help="precondition L-BFGS with an image pyramid of this many levels, so the "
                        "image's large-scale structure converges as fast as its detail; 1 is "
                        f"plain L-BFGS (default {PRESETS['fast']['lbfgs_pyramid']}; "
                        f"neural-style: {d.lbfgs_pyramid})")
    g.add_argument("--max-memory", type=max_memory_size, metavar="SIZE",
                   help="plan for at most this much memory (e.g. 24GB, 512MiB): emulates a "
                        "smaller card; the run says its plan in one line or is refused with the "
                        "largest size that fits")
    g.add_argument("--lbfgs-history-dtype", choices=HISTORY_DTYPES,
                   help="the dtype L-BFGS stores its curvature pairs in; bfloat16 halves the "
                        "history, the largest part of a run's memory (default: float32)")
    g.add_argument("--num-iterations", type=positive(int),
                   help=f"the cap on iterations per scale (default {d.num_iterations})")
    g.add_argument("--seed", type=int, default=d.seed)
    g = p.add_argument_group("images")
    g.add_argument("--image-size", type=positive(int),
                   help=f"long side of the output in pixels (default {d.image_size})")
    g.add_argument("--scales", type=csv(int), metavar="S1,S2",
                   help="coarse-to-fine long sides, e.g. 256,512,1024 (overrides --image-size "
                        "and --num-scales)")
    g.add_argument("--num-scales", type=positive(int), metavar="N",
                   help="coarse-to-fine pyramid: N scales halving --image-size, none under "
                        f"64 px (default {PRESETS['fast']['num_scales']}; neural-style: 1)")
    g.add_argument("--coarse-iterations", type=positive(int), metavar="N",
                   help="the cap on iterations at every scale but the last (default "
                        f"{PRESETS['fast']['coarse_iterations']}, at most --num-iterations)")
    g.add_argument("--style-scale", type=positive(float), default=d.style_scale)
    g.add_argument("--style-size", type=positive(int), metavar="PX",
                   help="long side of the style images in pixels (instead of --style-scale)")
    g.add_argument("--init", choices=INITS,
                   help=f"the starting image (default {d.init}; image with --init-image)")
    g.add_argument("--init-image", metavar="IMAGE",
                   help="start from this image (implies --init image)")
    g.add_argument("--original-colors", action="store_true",
                   help="keep the content's colours (luminance transfer)")
    g.add_argument("--pooling", choices=("max", "avg"), default=d.pooling)
    g.add_argument("--compute-dtype", choices=DTYPES, default=d.compute_dtype)
    g = p.add_argument_group("where the style goes, and colour (one content image)")
    g.add_argument("--style-masks", nargs="+", metavar="MASK",
                   help="one grey mask per style image: white where that style goes in the output, "
                        "grey a partial weight; uncovered areas keep the content")
    g.add_argument("--style-region-masks", nargs="+", metavar="MASK",
                   help="one grey mask per style image: the part of it its style is taken from")
    g.add_argument("--content-map", metavar="MAP",
                   help="colour-coded semantic map of the output (with --style-map)")
    g.add_argument("--style-map", nargs="+", metavar="MAP",
                   help="one colour-coded map per style image: each region of the output takes its "
                        "style from the same-coloured region")
    g.add_argument("--color-match", action="store_true",
                   help="recolour the style images to the content's colour mean and covariance "
                        "first (instead of --original-colors)")
    g = p.add_argument_group("output")
    g.add_argument("--save-iter", type=int, default=0, metavar="N",
                   help="also save OUTPUT_<iter>.<ext> every N iterations, and a resume checkpoint "
                        "(one content image; with several, how often --log-dir logs images)")
    g.add_argument("--print-iter", type=int, default=10, metavar="N",
                   help="update the progress bar every N iterations")
    g.add_argument("--gif", metavar="PATH",
                   help="also write the evolution as an animated GIF (.gif) or image strip")
    g.add_argument("--gif-every", type=positive(int), default=20, metavar="N")
    g.add_argument("--resume", action="store_true",
                   help=f"continue from OUTPUT{CHECKPOINT_SUFFIX} left by an interrupted run")
    g.add_argument("--bit-depth", type=int, choices=image_io.BIT_DEPTHS, default=8,
                   help="bits per colour channel of the output (default 8); 16 writes a 48-bit "
                        "PNG that keeps the optimized image (8-bit rounding adds noise the loss "
                        "sees, mostly as total variation)")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    g = p.add_argument_group("several content images (a list or folders; -o is a directory)")
    g.add_argument("--batch-size", type=positive(int), default=4,
                   help="most images per compiled run, sharded over all devices (caps memory)")
    g.add_argument("--all-pairs", action="store_true",
                   help="stylize every content with every style separately (no blending)")
    g.add_argument("--exact-batch", action="store_true", default=None,
                   help="on a GPU or TPU, run a batch's images (or a sweep's cells) one after "
                        "another so each equals its run alone to the bit, as on a CPU always; "
                        "vmapped (the default there) is 1.5-5x faster but rounds differently")
    g = p.add_argument_group("see and compare")
    g.add_argument("--sweep", action="append", type=sweep_axis, metavar="NAME=V1,V2",
                   help="run every combination of these settings (repeatable: the Cartesian "
                        "product) as one batched run; -o gets a labelled contact sheet, "
                        "OUT-1.png... and OUT.json. NAME: " + ", ".join(SWEEP_FLAGS) +
                        " (several numbers in one value: colons, e.g. style-blend-weights=1:3,3:1)")
    g.add_argument("--log-dir", metavar="DIR",
                   help="write TensorBoard event files (loss terms at every --print-iter, the "
                        "image at every --save-iter, the settings) and DIR/metrics.jsonl")
    g.add_argument("--web", type=web_address, metavar="[HOST:]PORT",
                   help="serve a live view of the run at http://HOST:PORT/ (HOST default 127.0.0.1)")
    g.add_argument("--web-keep", action="store_true",
                   help="keep the --web page open after the run, until Ctrl-C")
    p.set_defaults(run=run)


def _init(args: argparse.Namespace) -> str | None:
    """--init, where --init-image alone implies ``image`` (as in neural-style, an init image is
    meant to be the start)."""
    if args.init_image and args.init not in (None, "image"):
        raise JaxstyleError(f"--init-image starts from an image, but --init {args.init} starts "
                            "elsewhere: drop one of them")
    return "image" if args.init_image else args.init


def add_stylize_flags(parser: argparse.ArgumentParser, exclude: set[str]) -> None:
    """Gives another command (``video``, ``warmup``) stylize's flags, in stylize's groups, except
    the destinations in ``exclude``: the same argparse actions, so both commands parse them alike
    and `config_from_args` reads either's flags."""
    sub = argparse.ArgumentParser(add_help=False).add_subparsers()
    add_parser(sub)
    for group in sub.choices["stylize"]._action_groups:
        actions = [a for a in group._group_actions if a.dest not in exclude]
        if actions:
            target = parser.add_argument_group(group.title)
            for action in actions:
                target._add_action(action)


def config_from_args(args: argparse.Namespace) -> Config:
    """The `Config` that stylize flags describe (ConfigError for inconsistent values)."""
    style_scale = args.style_scale
    preset = from_preset(args.preset)
    size = max(args.scales) if args.scales else (args.image_size or preset.image_size)
    if args.style_size:
        style_scale = args.style_size / size
    weights = dict(content_weight=args.content_weight, style_weight=args.style_weight,
                   tv_weight=args.tv_weight)
    loss_scale = None
    if args.preset != "neural-style" and all(w is None for w in weights.values()):
        # No weight given: weights relative to the targets' scales, whatever the weights file.
        weights, loss_scale = dict(RELATIVE_WEIGHTS), "relative"
    # Every flag named for a Config field sets it (None: the preset's or Config's default);
    # the few that need more than a copy are computed above.
    fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config)
              if hasattr(args, f.name)}
    fields.update(weights, image_size=size, style_scale=style_scale, init=_init(args),
                  loss_scale=loss_scale)
    return from_preset(args.preset, **fields)


def _snapshot_path(output: Path, iteration: int) -> Path:
    return output.with_name(f"{output.stem}_{iteration}{output.suffix}")


def snapshot_paths(output: Path, cfg: Config, save_iter: int) -> list[Path]:
    """Every OUTPUT_<iter> file ``--save-iter`` may write (at each scale's multiples of it)."""
    if save_iter <= 0:
        return []
    return [_snapshot_path(output, cfg.iterations_before(s) + k)
            for s, cap in enumerate(cfg.scale_iterations) for k in range(0, cap, save_iter)]


def check_run_outputs(args: argparse.Namespace, cfg: Config, output: Path, inputs: list) -> None:
    """Before any work: neither the snapshots, the GIF nor the checkpoint overwrites an input,
    and no two of them (nor -o) are the same file."""
    targets: dict[str, Path] = {"-o": output}
    if args.gif:
        targets["--gif"] = image_io.check_output_path(args.gif, inputs)
    targets["the resume checkpoint"] = resume.checkpoint_path(output)
    for path in snapshot_paths(output, cfg, args.save_iter):
        targets[f"a --save-iter snapshot ({path.name})"] = path
    check_outputs(targets, inputs)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    enable_compilation_cache(args)
    if (args.sweep or args.log_dir or args.web) and getattr(args, "watch", None) is None:
        return run_watched(args, cfg)
    stop = StopRequest()
    with stop.on_ctrl_c():  # from here on, Ctrl-C stops at safe points (see `StopRequest`)
        return run_guarded(args, cfg, stop)


def run_guarded(args: argparse.Namespace, cfg: Config, stop: StopRequest) -> int:
    """`run` for one content image, or several (`run_many`), with Ctrl-C handled by ``stop``."""
    contents = [Path(c) for c in args.content]
    if not contents:
        check_guidance_flags(args, cfg, has_content=False)
    if len(contents) > 1 or (contents and contents[0].is_dir()) or args.all_pairs:
        return run_many(args, cfg, stop)  # several images: outputs into a directory
    check_guidance_flags(args, cfg, has_content=bool(contents))
    if contents and image_io.is_folder(args.output):  # one content into a folder: <stem>.png
        args.output = str(output_path(Path(args.output), contents[0], None))
    inputs = [*contents, *args.style, args.init_image, *guidance_inputs(args), args.weights]
    output = image_io.check_output_path(args.output, inputs, args.bit_depth)
    check_run_outputs(args, cfg, output, inputs)
    long_side = max(cfg.all_scales)
    # Before loading: a huge --image-size must not get the process killed.
    dims = image_io.image_dimensions(contents[0] if contents else Path(args.content_map))
    if dims is not None:
        check_memory(cfg, *fit_long_side(*dims, long_side), num_styles=len(args.style),
                     max_memory=args.max_memory)
    style_long = max(16, round(cfg.style_scale * long_side))
    if contents:
        content = image_io.load_image(contents[0], long_side, role="content image")
    else:  # painting a doodle: the map gives the output's size; there is no content term
        content = image_io.load_image(args.content_map, long_side, role="content map")
        cfg = dataclasses.replace(cfg, content_weight=0.0)
    styles = [image_io.load_image(s, style_long, role="style image") for s in args.style]
    guide = load_guidance(args, cfg, long_side, style_long)
    init_image = (image_io.load_image(cfg.init_image, long_side, role="init image")
                  if cfg.init == "image" else None)
    checkpoint = resume.checkpoint_path(output)
    made_from = resume.inputs_record([contents[0] if contents else args.content_map], [content],
                                     args.style, styles)
    start = (resume.load(checkpoint, cfg, made_from, content.shape[:2]) if args.resume
             else None)
    vgg = load_network(args, args.quiet)

    total = cfg.total_iterations
    bar = progress_bar(total, "it", args.quiet, desc="stylize")
    frames: list[np.ndarray] = []
    last: dict = {}

    def finish_image(images: np.ndarray) -> np.ndarray:
        image = images[0]
        if cfg.original_colors:
            image = image_io.original_colors(image, content)
        return image

    watch = getattr(args, "watch", None)  # --log-dir / --web (see `run_watched`)
    if watch is not None:
        watch.start([(contents[0] if contents else Path(args.content_map)).stem])

    clock = compile_clock()

    def on_scale(index: int, h: int, w: int) -> None:
        # Until the scale's first chunk returns: its programs are compiled, or loaded if cached.
        bar.set_description_str(f"preparing {w}x{h} (compiles on a shape's first run)")

    def on_progress(p) -> None:
        if bar.desc != "stylize":  # the scale's programs are ready
            bar.set_description_str("stylize", refresh=False)
        if watch is not None:
            watch.progress(p, [0], compile_s=clock.seconds)
        done = cfg.iterations_before(p.scale_index) + p.iteration
        last.update(images=p.images, scale_index=p.scale_index, iteration=p.iteration)
        bar.update(done - bar.n)
        terms = {k: float(v[0]) for k, v in p.state.terms.items()}
        bar.set_postfix(loss=f"{float(p.state.loss[0]):.4g}",
                        **{k: f"{v:.3g}" for k, v in terms.items()}, refresh=False)
        if args.save_iter and p.iteration % args.save_iter == 0 and p.iteration < p.num_iterations:
            image_io.save_image(finish_image(last["images"]), _snapshot_path(output, done),
                                bit_depth=args.bit_depth)
            resume.save(checkpoint, last["images"], p.scale_index, p.iteration, cfg, made_from)
        if args.gif and p.iteration % args.gif_every == 0:
            frames.append(finish_image(last["images"]))
        if stop.requested:  # Ctrl-C: stop here, between compiled chunks
            raise KeyboardInterrupt

    every = tuple(k for k in (args.print_iter, args.save_iter, args.gif and args.gif_every) if k)
    try:
        if stop.requested:  # Ctrl-C while loading
            raise KeyboardInterrupt
        result = stylize_lib.stylize_batch(vgg, content[None], styles, cfg, init_image=init_image,
                                           start=start, on_progress=on_progress, every=every,
                                           guidance=guide, bucket=True, on_scale=on_scale)
    except KeyboardInterrupt:
        bar.close()
        if not last:
            print("jaxstyle: interrupted before the first image; nothing written", file=sys.stderr)
            return EXIT_INTERRUPTED
        image_io.save_image(finish_image(last["images"]), output, bit_depth=args.bit_depth)
        resume.save(checkpoint, last["images"], last["scale_index"], last["iteration"], cfg,
                    made_from)
        print(f"jaxstyle: interrupted; wrote the latest image to {output}; continue with --resume",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        if not is_out_of_memory(e):
            raise
        bar.close()
        # A larger scale of a coarse-to-fine run can run out after a smaller one finished: keep
        # that image. No checkpoint: resuming with the same settings would run out again.
        wrote = ""
        if last:
            image_io.save_image(finish_image(last["images"]), output, bit_depth=args.bit_depth)
            wrote = f"; wrote the latest image to {output}"
        raise out_of_memory_error(e, wrote) from e
    reason = stop_reason(result, cfg)
    reason += f"; {clock.seconds:.1f} s making programs"
    bar.set_postfix_str(f"{bar.postfix}, {reason}" if bar.postfix else reason, refresh=True)
    bar.close()
    # `stylize_batch` already applied original colours to its result.
    image_io.save_image(result.images[0], output, bit_depth=args.bit_depth)
    if args.gif and frames:
        frames.append(result.images[0])
        gif = Path(args.gif)
        sizes = {f.shape for f in frames}
        if len(sizes) > 1:  # coarse-to-fine: bring early frames to the final size
            frames = [image_io.resize(f, *result.images[0].shape[:2]) for f in frames]
        save = image_io.save_gif if gif.suffix.lower() == ".gif" else image_io.save_strip
        save(frames, gif, inputs=inputs)
    if result.diverged[0]:  # no checkpoint: resuming from where it diverged would diverge again
        raise JaxstyleError(
            f"the loss became NaN or infinite; kept the last finite image in {output}. Lower "
            "--style-weight (or --learning-rate with adam) and run again")
    checkpoint.unlink(missing_ok=True)
    print(f"wrote {output} ({reason})", file=sys.stderr if args.quiet else sys.stdout)
    return 0


def run_watched(args: argparse.Namespace, cfg: Config) -> int:
    """A run with --log-dir and/or --web (one image, a batch or a sweep): both opened before any
    work. Each path names its images with ``watch.start``."""
    args.watch = open_watch(args, cfg)
    try:
        if args.sweep:
            return run_sweep(args, cfg, args.watch)
        code = run(args)
        if code != EXIT_INTERRUPTED:  # after Ctrl-C, --web-keep would wait for a second one
            args.watch.finish()
        return code
    finally:
        args.watch.close()


def check_memory(cfg: Config, height: int, width: int, problems: int = 1,
                 num_styles: int = 1, max_memory: int | None = None) -> None:
    """A one-line error before any work when the run cannot fit this host's (or device's) memory
    (capped at ``max_memory`` bytes: ``--max-memory``, which also prints the plan's one line)."""
    available, where = available_memory()
    chosen = memory.plan(cfg, height, width, available, where, problems=problems,
                         num_styles=num_styles, max_memory=max_memory, modes=("one",))
    if max_memory is not None:
        print(f"jaxstyle: {chosen.line(width, height)}", file=sys.stderr)


def max_memory_size(text: str) -> int:
    """``--max-memory``'s value in bytes (`memory.parse_size`), for argparse."""
    try:
        return memory.parse_size(text)
    except JaxstyleError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--max-memory: ")) from None


def stop_reason(result: stylize_lib.Result, cfg: Config, i: int = 0) -> str:
    """Why problem ``i`` of a run stopped, in a few words for the progress bar and the log."""
    steps = int(result.steps[i]) if result.steps is not None else cfg.num_iterations
    if result.diverged[i]:
        return f"stopped at iteration {steps}: the loss became NaN or infinite"
    if result.converged is not None and result.converged[i]:
        return (f"converged at iteration {steps} of {cfg.num_iterations}: the loss improved by "
                f"less than {cfg.stop_tolerance:g} over the last {cfg.stop_window} iterations")
    return f"stopped at --num-iterations {cfg.num_iterations}"


# ----------------------------------------------------------------------------------------------
# Several content images.


def output_path(outdir: Path, content: Path, style: Path | None, suffix: str = ".png") -> Path:
    """``outdir/<content stem>.png``, or ``outdir/<content stem>__<style stem>.png`` per pair."""
    name = content.stem if style is None else f"{content.stem}__{style.stem}"
    return outdir / f"{name}{suffix}"


def run_many(args: argparse.Namespace, cfg: Config, stop: StopRequest) -> int:
    """``jaxstyle stylize a.jpg b.jpg photos/ --style s.jpg -o outdir/``: several content images,
    batched (`batch.stylize_many`), one output file each."""
    contents = image_io.collect_images(args.content)
    if not contents:
        raise JaxstyleError(f"no images found in {', '.join(args.content)}; give image files or "
                            "folders that hold some")
    outdir = Path(args.output)
    if outdir.suffix.lower() in image_io.OUTPUT_FORMATS:
        raise JaxstyleError(f"several content images need an output directory, not '{outdir}'; "
                            "use e.g. -o stylized/")
    if args.resume or args.gif:
        raise JaxstyleError("--resume and --gif apply to one content image; drop them for a batch")
    if args.save_iter and not args.log_dir:
        raise JaxstyleError("--save-iter writes snapshots of one content image; with several it "
                            "only sets how often --log-dir logs images: drop it or add --log-dir")
    given = [f"--{f.replace('_', '-')}" for f in (*GUIDANCE_FLAGS, "color_match") if getattr(args, f)]
    if given:
        raise JaxstyleError(f"{', '.join(given)} work on one content image at a time (its masks "
                            "and colours are its own); run each content image separately")
    style_paths = [Path(s) for s in args.style]
    pairs: list[tuple[Path | None, list[Path]]] = (
        [(s, [s]) for s in style_paths] if args.all_pairs else [(None, style_paths)])
    # Same-stem inputs would overwrite each other's output: refused before any work.
    check_outputs({f"'{c}'" + (f" with '{s}'" if s else ""): output_path(outdir, c, s)
                   for c in contents for s, _ in pairs},
                  [*contents, *style_paths, args.init_image, args.weights])
    quiet = args.quiet
    long_side = max(cfg.all_scales)
    # Before loading: the worst case, a square image, in full batches.
    check_memory(cfg, long_side, long_side, min(args.batch_size, len(contents)),
                 1 if args.all_pairs else len(args.style), max_memory=args.max_memory)
    style_long = max(16, round(cfg.style_scale * long_side))
    styles = {p: image_io.load_image(p, style_long, role="style image") for p in style_paths}
    init_image = (image_io.load_image(cfg.init_image, long_side, role="init image")
                  if cfg.init == "image" else None)

    loaded, skipped = {}, []
    for path in contents:
        try:
            loaded[path] = image_io.load_image(path, long_side, role="content image")
            for style, _ in pairs:
                image_io.check_output_path(output_path(outdir, path, style),
                                           [*contents, *style_paths], args.bit_depth)
        except JaxstyleError as e:
            skipped.append(path)
            loaded.pop(path, None)
            warn(f"skipping {path}: {e}")
    if not loaded:
        raise JaxstyleError("every content image was skipped; nothing to do")

    vgg = load_network(args, quiet)
    names = list(loaded)
    bar = progress_bar(len(names) * len(pairs) * cfg.total_iterations,
                       "it", quiet, desc=f"stylize {len(names)}×{len(pairs)}")
    offset = 0
    diverged = []
    converged = 0
    watch = getattr(args, "watch", None)  # --log-dir / --web (see `run_watched`)
    if watch is not None:  # one run per output image, named after it
        watch.start([output_path(outdir, n, s).stem for s, _ in pairs for n in names])
    for pair, (style, style_list) in enumerate(pairs):
        def update(p: batch.BatchProgress, base=offset, first=pair * len(names)) -> None:
            bar.update(base + p.done - bar.n)
            if watch is not None:
                watch.progress(p.progress, [first + k for k in p.problems])
            if stop.requested:  # Ctrl-C: stop here, between compiled chunks
                raise KeyboardInterrupt
        if stop.requested:  # Ctrl-C while loading, or between pairs
            raise KeyboardInterrupt
        results = batch.stylize_many(vgg, [loaded[n] for n in names],
                                     [styles[s] for s in style_list], cfg,
                                     batch_size=args.batch_size, on_progress=update,
                                     every=(args.print_iter,) if args.print_iter else (),
                                     init_image=init_image, bucket=True)
        offset += bar.total // len(pairs)
        if jax.process_index() == 0:  # every host holds every result; one writes
            for name, result in zip(names, results):
                image_io.save_image(result.images[0], output_path(outdir, name, style),
                                    bit_depth=args.bit_depth)
                if result.diverged[0]:
                    diverged.append(name)
                converged += bool(result.converged is not None and result.converged[0])
    bar.close()
    for name in diverged:
        warn(f"the loss of {name} became NaN or infinite; kept its last finite image. "
             "Lower --style-weight")
    written = len(names) * len(pairs)
    print(f"wrote {written} image(s) to {outdir} ({converged} converged before --num-iterations "
          f"{cfg.num_iterations})" +
          (f"; skipped {len(skipped)}: {', '.join(map(str, skipped))}" if skipped else ""),
          file=sys.stderr if quiet else sys.stdout)
    return EXIT_ERROR if skipped or diverged else 0
