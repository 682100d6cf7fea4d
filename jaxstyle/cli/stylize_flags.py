"""The flags of ``jaxstyle stylize`` (shared by ``video`` and ``warmup``) and the `Config` they
describe: the parser is the one table of flags; every flag named for a setting's flat name
(`config.FIELDS`) sets that setting in its section (`config_from_args`), the README's flag table
lists exactly these flags (tests/test_flags.py), and ``--sweep`` may name exactly
`config.SWEEPABLE` (`cli.sweep`)."""

from __future__ import annotations

import argparse

from jaxstyle import image_io, memory
from jaxstyle.cli import resume
from jaxstyle.cli.common import add_weights_flags, csv, non_negative_float, positive
from jaxstyle.cli.sweep import SWEEP_FLAGS, sweep_axis
from jaxstyle.cli.watch import web_address
from jaxstyle.config import (DTYPES, HISTORY_DTYPES, INITS, NORMALIZATIONS, OPTIMIZERS, PRESETS,
                             FIELDS, RELATIVE_WEIGHTS, STYLE_LOSSES, Config, from_preset)
from jaxstyle.errors import JaxstyleError

CHECKPOINT_SUFFIX = resume.SUFFIX

def add_stylize_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``stylize`` subcommand's parser with every flag (its ``run`` is the caller's)."""
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
                   help=weights_help.format(f"default {d.loss.content_weight:g}"))
    g.add_argument("--style-weight", type=non_negative_float,
                   help=weights_help.format(f"default {d.loss.style_weight:g}"))
    g.add_argument("--tv-weight", type=non_negative_float,
                   help=weights_help.format(f"default {d.loss.tv_weight:g}"))
    g.add_argument("--content-layers", type=csv(str), default=d.loss.content_layers,
                   metavar="L1,L2",
                   help=f"default {','.join(d.loss.content_layers)}")
    g.add_argument("--style-layers", type=csv(str), default=d.loss.style_layers, metavar="L1,L2",
                   help=f"default {','.join(d.loss.style_layers)}")
    g.add_argument("--content-layer-weights", type=csv(float), metavar="W1,W2")
    g.add_argument("--style-layer-weights", type=csv(float), metavar="W1,W2")
    g.add_argument("--style-blend-weights", type=csv(float), metavar="W1,W2",
                   help="one per style image (default equal)")
    g.add_argument("--normalization", choices=NORMALIZATIONS, default=d.loss.normalization)
    g.add_argument("--style-loss", choices=STYLE_LOSSES, default=d.loss.style_loss,
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
    g.add_argument("--stop-change", type=non_negative_float, metavar="LEVELS",
                   help="stop when the image, as the 8-bit file holds it, changed by less than "
                        "this many levels on average over the last --stop-window iterations "
                        "(whatever the loss weights); 0: never (default "
                        f"{PRESETS['fast'].get('stop_change', 0.0):g})")
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
                        f"neural-style: {d.optimizer.lbfgs_memory})")
    g.add_argument("--lbfgs-pyramid", type=positive(int), metavar="LEVELS",
                   help="precondition L-BFGS with an image pyramid of this many levels, so the "
                        "image's large-scale structure converges as fast as its detail; 1 is "
                        f"plain L-BFGS (default {PRESETS['fast']['lbfgs_pyramid']}; "
                        f"neural-style: {d.optimizer.lbfgs_pyramid})")
    g.add_argument("--max-memory", type=max_memory_size, metavar="SIZE",
                   help="plan for at most this much memory (e.g. 24GB, 512MiB): emulates a "
                        "smaller card; the run says its plan in one line or is refused with the "
                        "largest size that fits")
    g.add_argument("--lbfgs-history-dtype", choices=HISTORY_DTYPES,
                   help="the dtype L-BFGS stores its curvature pairs in; bfloat16 halves the "
                        "history, the largest part of a run's memory (default: float32)")
    g.add_argument("--num-iterations", type=positive(int),
                   help=f"the cap on iterations per scale (default {d.schedule.num_iterations})")
    g.add_argument("--seed", type=int, default=d.start.seed)
    g = p.add_argument_group("images")
    g.add_argument("--image-size", type=positive(int),
                   help=f"long side of the output in pixels (default {d.schedule.image_size})")
    g.add_argument("--scales", type=csv(int), metavar="S1,S2",
                   help="coarse-to-fine long sides, e.g. 256,512,1024 (overrides --image-size "
                        "and --num-scales)")
    g.add_argument("--num-scales", type=positive(int), metavar="N",
                   help="coarse-to-fine pyramid: N scales halving --image-size, none under "
                        f"64 px (default {PRESETS['fast']['num_scales']}; neural-style: 1)")
    g.add_argument("--coarse-iterations", type=positive(int), metavar="N",
                   help="the cap on iterations at every scale but the last (default "
                        f"{PRESETS['fast']['coarse_iterations']}, at most --num-iterations)")
    g.add_argument("--style-scale", type=positive(float), default=d.loss.style_scale)
    g.add_argument("--style-size", type=positive(int), metavar="PX",
                   help="long side of the style images in pixels (instead of --style-scale)")
    g.add_argument("--init", choices=INITS,
                   help=f"the starting image (default {d.start.init}; image with --init-image)")
    g.add_argument("--init-image", metavar="IMAGE",
                   help="start from this image (implies --init image)")
    g.add_argument("--original-colors", action="store_true",
                   help="keep the content's colours (luminance transfer)")
    g.add_argument("--pooling", choices=("max", "avg"), default=d.network.pooling)
    g.add_argument("--compute-dtype", choices=DTYPES, default=d.network.compute_dtype)
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
    return p



def _init(args: argparse.Namespace) -> str | None:
    """--init, where --init-image alone implies ``image`` (as in neural-style, an init image is
    meant to be the start)."""
    if args.init_image and args.init not in (None, "image"):
        raise JaxstyleError(f"--init-image starts from an image, but --init {args.init} starts "
                            "elsewhere: drop one of them")
    if args.init == "image" and not args.init_image:
        raise JaxstyleError("--init image starts from an image: give it with --init-image FILE")
    return "image" if args.init_image else args.init


def add_stylize_flags(parser: argparse.ArgumentParser, exclude: set[str]) -> None:
    """Gives another command (``video``, ``warmup``) stylize's flags, in stylize's groups, except
    the destinations in ``exclude``: the same argparse actions, so both commands parse them alike
    and `config_from_args` reads either's flags."""
    sub = argparse.ArgumentParser(add_help=False).add_subparsers()
    for group in add_stylize_parser(sub)._action_groups:
        actions = [a for a in group._group_actions if a.dest not in exclude]
        if actions:
            target = parser.add_argument_group(group.title)
            for action in actions:
                target._add_action(action)


def config_from_args(args: argparse.Namespace) -> Config:
    """The `Config` that stylize flags describe (ConfigError for inconsistent values)."""
    style_scale = args.style_scale
    preset = from_preset(args.preset)
    size = max(args.scales) if args.scales else (args.image_size or preset.schedule.image_size)
    if args.style_size:
        style_scale = args.style_size / size
    weights = dict(content_weight=args.content_weight, style_weight=args.style_weight,
                   tv_weight=args.tv_weight)
    loss_scale = None
    if args.preset != "neural-style" and all(w is None for w in weights.values()):
        # No weight given: weights relative to the targets' scales, whatever the weights file.
        weights, loss_scale = dict(RELATIVE_WEIGHTS), "relative"
    # Every flag named for a setting (a flat name of config.FIELDS) sets it (None: the preset's or
    # Config's default); the few that need more than a copy are computed above.
    fields = {name: getattr(args, name) for name in FIELDS if hasattr(args, name)}
    fields.update(weights, image_size=size, style_scale=style_scale, init=_init(args),
                  loss_scale=loss_scale)
    return from_preset(args.preset, **fields)


def max_memory_size(text: str) -> int:
    """``--max-memory``'s value in bytes (`memory.parse_size`), for argparse."""
    try:
        return memory.parse_size(text)
    except JaxstyleError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--max-memory: ")) from None

