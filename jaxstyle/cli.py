"""The ``jaxstyle`` command: convert / weights / stylize / bench.

The edge of the program: flags become a `Config`, files become arrays, progress becomes a bar,
and every user error becomes one line ``jaxstyle: error: ...`` with a non-zero exit status.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Sequence

from jaxstyle.config import DTYPES, INITS, NORMALIZATIONS, OPTIMIZERS, Config
from jaxstyle.errors import JaxstyleError
from jaxstyle.files import atomic_write

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130
CHECKPOINT_SUFFIX = ".resume.npz"
OUT_OF_MEMORY_HINT = ("lower --image-size or --batch-size, or use --lbfgs-memory 20, --optimizer adam "
                      "or --compute-dtype bfloat16; on a GPU, XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 "
                      "lets JAX use more than its default 75%")


def is_out_of_memory(error: BaseException) -> bool:
    """A host or device allocation failure (XLA reports the latter as RESOURCE_EXHAUSTED)."""
    return isinstance(error, MemoryError) or (
        isinstance(error, RuntimeError) and "RESOURCE_EXHAUSTED" in str(error))


def out_of_memory_error(error: BaseException, wrote: str = "") -> JaxstyleError:
    first_line = (str(error).strip().splitlines() or ["MemoryError"])[0][:200]
    return JaxstyleError(f"out of memory ({first_line}){wrote}: {OUT_OF_MEMORY_HINT}")


# ----------------------------------------------------------------------------------------------
# Argument parsing.


def _csv(kind):
    def parse(text: str):
        try:
            return tuple(kind(x) for x in text.split(",") if x.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    return parse


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _add_weights_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", metavar="PATH",
                   help="VGG-19 weights: a converted .safetensors file or any supported source file "
                        "(Keras .h5, torchvision/caffe .pth). Default: the cached converted Keras "
                        "weights, downloaded and converted on first use")
    p.add_argument("--source", choices=("keras", "torchvision", "caffe"),
                   help="convention of a .pth file whose checksum is not a known one")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="where downloaded/converted weights live (default: $JAXSTYLE_CACHE, else "
                        "$XDG_CACHE_HOME/jaxstyle, else ~/.cache/jaxstyle)")
    p.add_argument("--no-compile-cache", action="store_true",
                   help="do not keep compiled programs in CACHE_DIR/xla (kept by default, so a "
                        "second run with the same image sizes starts without compiling)")


class _Parser(argparse.ArgumentParser):
    """argparse with errors on one line (no usage dump), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"jaxstyle: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    d = Config()
    parser = _Parser(prog="jaxstyle", description="Neural style transfer in JAX.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("convert", help="convert a VGG-19 weights file to jaxstyle's .safetensors")
    p.add_argument("src", help="Keras .h5, torchvision or caffe .pth")
    p.add_argument("-o", "--output", required=True, help="the .safetensors file to write")
    p.add_argument("--source", choices=("keras", "torchvision", "caffe"),
                   help="the file's convention, needed for a .pth whose checksum is not known")

    p = sub.add_parser("weights", help="manage the default weights")
    wsub = p.add_subparsers(dest="weights_command", metavar="ACTION", required=True)
    w = wsub.add_parser("download", help="download and convert the default Keras VGG-19 weights")
    w.add_argument("--cache-dir", metavar="DIR", help="cache directory (see stylize --help)")
    w = wsub.add_parser("path", help="print where the default converted weights are (or would be)")
    w.add_argument("--cache-dir", metavar="DIR")

    p = sub.add_parser("stylize", help="stylize content image(s)",
                       description="Stylize a content image with one or more style images. Defaults "
                                   "reproduce jcjohnson/neural-style.")
    p.add_argument("content", nargs="+", help="content image(s), or folders of them")
    p.add_argument("--style", "-s", action="extend", nargs="+", required=True, metavar="IMAGE",
                   help="style image(s); several are blended (see --style-blend-weights)")
    p.add_argument("-o", "--output", default="out.png",
                   help="output image (default out.png); a directory for several contents")
    _add_weights_flags(p)
    g = p.add_argument_group("loss")
    g.add_argument("--content-weight", type=_non_negative_float, default=d.content_weight)
    g.add_argument("--style-weight", type=_non_negative_float, default=d.style_weight)
    g.add_argument("--tv-weight", type=_non_negative_float, default=d.tv_weight)
    g.add_argument("--content-layers", type=_csv(str), default=d.content_layers, metavar="L1,L2",
                   help=f"default {','.join(d.content_layers)}")
    g.add_argument("--style-layers", type=_csv(str), default=d.style_layers, metavar="L1,L2",
                   help=f"default {','.join(d.style_layers)}")
    g.add_argument("--content-layer-weights", type=_csv(float), metavar="W1,W2")
    g.add_argument("--style-layer-weights", type=_csv(float), metavar="W1,W2")
    g.add_argument("--style-blend-weights", type=_csv(float), metavar="W1,W2",
                   help="one per style image (default equal)")
    g.add_argument("--normalization", choices=NORMALIZATIONS, default=d.normalization)
    g = p.add_argument_group("optimization")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer)
    g.add_argument("--learning-rate", type=_positive(float),
                   help="Adam step in [0,1] pixel units (default 0.04) / L-BFGS step scale (default 1)")
    g.add_argument("--lbfgs-memory", type=_positive(int), default=d.lbfgs_memory)
    g.add_argument("--num-iterations", type=_positive(int), default=d.num_iterations)
    g.add_argument("--seed", type=int, default=d.seed)
    g = p.add_argument_group("images")
    g.add_argument("--image-size", type=_positive(int), default=d.image_size,
                   help="long side of the output in pixels")
    g.add_argument("--scales", type=_csv(int), metavar="S1,S2",
                   help="coarse-to-fine long sides, e.g. 256,512,1024 (overrides --image-size)")
    g.add_argument("--style-scale", type=_positive(float), default=d.style_scale)
    g.add_argument("--style-size", type=_positive(int), metavar="PX",
                   help="long side of the style images in pixels (instead of --style-scale)")
    g.add_argument("--init", choices=INITS, default=d.init)
    g.add_argument("--init-image", metavar="IMAGE")
    g.add_argument("--original-colors", action="store_true",
                   help="keep the content's colours (luminance transfer)")
    g.add_argument("--pooling", choices=("max", "avg"), default=d.pooling)
    g.add_argument("--compute-dtype", choices=DTYPES, default=d.compute_dtype)
    g = p.add_argument_group("output")
    g.add_argument("--save-iter", type=int, default=0, metavar="N",
                   help="also save OUTPUT_<iter>.<ext> every N iterations, and a resume checkpoint")
    g.add_argument("--print-iter", type=int, default=10, metavar="N",
                   help="update the progress bar every N iterations")
    g.add_argument("--gif", metavar="PATH",
                   help="also write the evolution as an animated GIF (.gif) or image strip")
    g.add_argument("--gif-every", type=_positive(int), default=20, metavar="N")
    g.add_argument("--resume", action="store_true",
                   help=f"continue from OUTPUT{CHECKPOINT_SUFFIX} left by an interrupted run")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    g = p.add_argument_group("several content images (a list or folders; -o is a directory)")
    g.add_argument("--batch-size", type=_positive(int), default=4,
                   help="most images per compiled run, sharded over all devices (caps memory)")
    g.add_argument("--all-pairs", action="store_true",
                   help="stylize every content with every style separately (no blending)")

    sub.add_parser("bench", help="benchmark against the PyTorch reference (prints JSON); "
                                 "see `jaxstyle bench --help`")
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    """The `Config` that stylize flags describe (ConfigError for inconsistent values)."""
    style_scale = args.style_scale
    size = max(args.scales) if args.scales else args.image_size
    if args.style_size:
        style_scale = args.style_size / size
    return Config(
        content_layers=args.content_layers, style_layers=args.style_layers,
        content_layer_weights=args.content_layer_weights,
        style_layer_weights=args.style_layer_weights, content_weight=args.content_weight,
        style_weight=args.style_weight, tv_weight=args.tv_weight,
        style_blend_weights=args.style_blend_weights, normalization=args.normalization,
        optimizer=args.optimizer, learning_rate=args.learning_rate, lbfgs_memory=args.lbfgs_memory,
        num_iterations=args.num_iterations, image_size=size, scales=args.scales,
        style_scale=style_scale, init=args.init, init_image=args.init_image, seed=args.seed,
        original_colors=args.original_colors, pooling=args.pooling,
        compute_dtype=args.compute_dtype)


# ----------------------------------------------------------------------------------------------
# Commands.


def progress_bar(total: int, unit: str, quiet: bool, **kwargs):
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, disable=quiet, dynamic_ncols=True, file=sys.stderr, **kwargs)


def _download_progress(quiet: bool):
    bar = None

    def update(done: int, total: int | None) -> None:
        nonlocal bar
        if bar is None:
            bar = progress_bar(total or 0, "B", quiet, unit_scale=True, desc="download")
        bar.update(done - bar.n)

    return update


def cmd_convert(args) -> int:
    from jaxstyle import weights

    info = weights.convert(args.src, args.output, source=args.source)
    print(f"converted {args.src} ({getattr(info, 'source', args.source)}) -> {args.output}")
    return 0


def cmd_weights(args) -> int:
    from jaxstyle import download

    if args.weights_command == "path":
        print(download.cache_dir(args.cache_dir) / download.CONVERTED_NAME)
        return 0
    path = download.default_weights(args.cache_dir, download_missing=True,
                                    progress=_download_progress(False))
    print(f"weights ready: {path}")
    return 0


def load_network(args, quiet: bool = False):
    """The VGG from --weights, or the default weights (downloaded and converted when missing)."""
    from jaxstyle import download, vgg19

    path = args.weights
    if path is None:
        path = download.default_weights(args.cache_dir, download_missing=True,
                                        progress=_download_progress(quiet))
    return vgg19.load(path, source=args.source)


def enable_compilation_cache(args) -> None:
    """JAX's persistent compilation cache in ``<cache dir>/xla``, unless the user turned it off
    (``--no-compile-cache``, ``JAXSTYLE_COMPILE_CACHE=0``) or set their own
    (``JAX_COMPILATION_CACHE_DIR``). A full VGG step takes seconds to compile; a cached one loads."""
    import jax

    from jaxstyle import download

    if args.no_compile_cache or os.environ.get("JAXSTYLE_COMPILE_CACHE") == "0":
        return
    if jax.config.jax_compilation_cache_dir:
        return
    path = download.cache_dir(args.cache_dir) / "xla"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"jaxstyle: warning: not caching compiled programs: cannot create {path} "
              f"({e.strerror}); --no-compile-cache silences this", file=sys.stderr)
        return
    jax.config.update("jax_compilation_cache_dir", str(path))


def _snapshot_path(output: Path, iteration: int) -> Path:
    return output.with_name(f"{output.stem}_{iteration}{output.suffix}")


def save_checkpoint(path: Path, images, scale_index: int, iteration: int, cfg: Config) -> None:
    """The run's images and position, written atomically next to the output (for --resume)."""
    import numpy as np

    atomic_write(path, lambda f: np.savez(
        f, images=np.asarray(images), scale_index=scale_index, iteration=iteration,
        config=json.dumps(dataclasses.asdict(cfg))))


def load_checkpoint(path: Path, cfg: Config):
    import numpy as np

    from jaxstyle.stylize import Start

    if not path.exists():
        raise JaxstyleError(f"--resume: no checkpoint '{path}' (one is written by --save-iter and "
                            "on Ctrl-C); run without --resume")
    try:
        with np.load(path) as data:
            saved = json.loads(str(data["config"]))
            start = Start(int(data["scale_index"]), int(data["iteration"]), data["images"])
    except Exception as e:  # a damaged checkpoint is a user-facing problem, whatever numpy raises
        raise JaxstyleError(f"--resume: checkpoint '{path}' is damaged ({e}); delete it") from e
    for key in ("image_size", "scales"):
        if saved[key] != (list(getattr(cfg, key)) if isinstance(getattr(cfg, key), tuple)
                          else getattr(cfg, key)):
            raise JaxstyleError(f"--resume: checkpoint '{path}' was made with a different "
                                f"--{key.replace('_', '-')}; use the same flags or drop --resume")
    if start.scale_index >= len(cfg.all_scales) or start.iteration > cfg.num_iterations:
        raise JaxstyleError(f"--resume: checkpoint '{path}' is past this run's end; raise "
                            "--num-iterations to continue it")
    return start


def cmd_stylize(args) -> int:
    import numpy as np

    from jaxstyle import image_io
    from jaxstyle.stylize import stylize_batch

    cfg = config_from_args(args)
    enable_compilation_cache(args)
    contents = [Path(c) for c in args.content]
    if len(contents) > 1 or contents[0].is_dir() or args.all_pairs:
        from jaxstyle import batch  # several images: the batch runner (outputs into a directory)

        return batch.run_cli(args, cfg)
    output = image_io.check_output_path(args.output, [*contents, *args.style, args.init_image])
    if args.gif:
        image_io.check_output_path(args.gif, [*contents, *args.style, args.init_image])
    long_side = max(cfg.all_scales)
    content = image_io.load_image(contents[0], long_side, role="content image")
    style_long = max(16, round(cfg.style_scale * long_side))
    styles = [image_io.load_image(s, style_long, role="style image") for s in args.style]
    init_image = (image_io.load_image(cfg.init_image, long_side, role="init image")
                  if cfg.init == "image" else None)
    checkpoint = output.with_name(output.name + CHECKPOINT_SUFFIX)
    start = load_checkpoint(checkpoint, cfg) if args.resume else None
    vgg = load_network(args, args.quiet)

    total = cfg.num_iterations * len(cfg.all_scales)
    bar = progress_bar(total, "it", args.quiet, desc="stylize")
    frames: list[np.ndarray] = []
    last: dict = {}

    def finish_image(images: np.ndarray) -> np.ndarray:
        image = images[0]
        if cfg.original_colors:
            image = image_io.original_colors(image, content)
        return image

    def on_progress(p) -> None:
        done = p.scale_index * cfg.num_iterations + p.iteration
        last.update(images=p.images, scale_index=p.scale_index, iteration=p.iteration)
        bar.update(done - bar.n)
        terms = {k: float(v[0]) for k, v in p.state.terms.items()}
        bar.set_postfix(loss=f"{float(p.state.loss[0]):.4g}",
                        **{k: f"{v:.3g}" for k, v in terms.items()}, refresh=False)
        if args.save_iter and p.iteration % args.save_iter == 0 and p.iteration < cfg.num_iterations:
            image_io.save_image(finish_image(last["images"]), _snapshot_path(output, done))
            save_checkpoint(checkpoint, last["images"], p.scale_index, p.iteration, cfg)
        if args.gif and p.iteration % args.gif_every == 0:
            frames.append(finish_image(last["images"]))

    every = tuple(k for k in (args.print_iter, args.save_iter, args.gif and args.gif_every) if k)
    try:
        result = stylize_batch(vgg, content[None], styles, cfg, init_image=init_image, start=start,
                               on_progress=on_progress, every=every)
    except KeyboardInterrupt:
        bar.close()
        if not last:
            print("jaxstyle: interrupted before the first image; nothing written", file=sys.stderr)
            return EXIT_INTERRUPTED
        image_io.save_image(finish_image(last["images"]), output)
        save_checkpoint(checkpoint, last["images"], last["scale_index"], last["iteration"], cfg)
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
            image_io.save_image(finish_image(last["images"]), output)
            wrote = f"; wrote the latest image to {output}"
        raise out_of_memory_error(e, wrote) from e
    bar.close()
    # `stylize_batch` already applied original colours to its result.
    image_io.save_image(result.images[0], output)
    if args.gif and frames:
        frames.append(result.images[0])
        gif = Path(args.gif)
        sizes = {f.shape for f in frames}
        if len(sizes) > 1:  # coarse-to-fine: bring early frames to the final size
            frames = [image_io.resize(f, *result.images[0].shape[:2]) for f in frames]
        (image_io.save_gif if gif.suffix.lower() == ".gif" else image_io.save_strip)(frames, gif)
    if result.diverged[0]:  # no checkpoint: resuming from where it diverged would diverge again
        raise JaxstyleError(
            f"the loss became NaN or infinite; kept the last finite image in {output}. Lower "
            "--style-weight (or --learning-rate with adam) and run again")
    checkpoint.unlink(missing_ok=True)
    print(f"wrote {output}", file=sys.stderr if args.quiet else sys.stdout)
    return 0


COMMANDS = {"convert": cmd_convert, "weights": cmd_weights, "stylize": cmd_stylize}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # its own parser: argparse's REMAINDER would not take "--sizes ..."
        from jaxstyle import bench

        return bench.main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except JaxstyleError as e:
        print(f"jaxstyle: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as e:
        if not is_out_of_memory(e):
            raise
        print(f"jaxstyle: error: {out_of_memory_error(e)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("jaxstyle: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
