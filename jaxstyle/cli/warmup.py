"""``jaxstyle warmup``: compile ahead of time, into the compilation cache, every program that
``jaxstyle stylize`` with the same flags needs for photos of the usual aspect ratios, so that a
server or a batch job never compiles while a user waits.

It runs the real command, one iteration per scale, on synthetic photos of each shape bucket
(`jaxstyle.buckets`): every program a run needs depends on shapes only, never on the iteration
count, the loss weights or the pixels, so the real runs afterwards load them all from the cache.
Programs also depend on the style images' sizes: give the styles the real runs will use.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from jaxstyle import buckets, image_io
from jaxstyle.cli import stylize as stylize_cli
from jaxstyle.cli.stylize_flags import add_stylize_flags, config_from_args
from jaxstyle.cli.common import enable_compilation_cache, positive
from jaxstyle.errors import JaxstyleError
from jaxstyle.imageops import fit_long_side

# Photo shapes most cameras and phones make (width:height); their buckets are what gets compiled.
DEFAULT_ASPECTS = ("4:3", "3:4", "16:9", "9:16", "1:1")
# `jaxstyle stylize` flags that name inputs or outputs of one run, or make no program.
NOT_FOR_WARMUP = {"help", "content", "output", "resume", "gif", "gif_every", "save_iter",
                  "print_iter", "log_dir", "web", "web_keep", "sweep", "quiet", "all_pairs",
                  "num_iterations", "coarse_iterations", "style_masks",
                  "style_region_masks", "content_map", "style_map"}


def aspect(text: str) -> tuple[int, int]:
    """A flag type: ``W:H`` (e.g. 4:3) -> (W, H)."""
    try:
        w, h = (int(x) for x in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected W:H such as 4:3, got {text!r}") from None
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f"both sides must be > 0, got {text!r}")
    return w, h


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("warmup", help="compile ahead of time for later stylize runs",
                       description="Compile, into the compilation cache, the programs that "
                                   "`jaxstyle stylize` with these flags needs for photos of the "
                                   "given aspect ratios, so that later runs start without "
                                   "compiling. Takes `jaxstyle stylize`'s flags.")
    add_stylize_flags(p, exclude=NOT_FOR_WARMUP)
    g = p.add_argument_group("warmup")
    g.add_argument("--aspect", type=aspect, nargs="+", metavar="W:H",
                   help=f"photo shapes to compile for (default {' '.join(DEFAULT_ASPECTS)}; "
                        "each compiles its shape bucket, shared by nearby ratios)")
    g.add_argument("--folder-batch", type=positive(int), metavar="N",
                   help="also compile the batched programs of a folder run with N photos of "
                        "each shape (N at most --batch-size)")
    p.set_defaults(run=run)


def bucket_sizes(aspects, long_side: int) -> list[tuple[int, int]]:
    """One photo size (h, w) for each distinct shape that photos of ``aspects`` ((w, h) ratios)
    run on at ``long_side`` px (`buckets.run_shape`: a portrait runs transposed, on the
    landscape's programs, so 3:4 adds nothing to 4:3)."""
    sizes = {}
    for w, h in aspects:
        photo = fit_long_side(h * 1000, w * 1000, long_side)
        sizes.setdefault(buckets.run_shape(*photo), photo)
    return list(sizes.values())


def run(args: argparse.Namespace) -> int:
    for dest in NOT_FOR_WARMUP:  # the flags warmup does not take, as stylize's defaults
        if not hasattr(args, dest):
            setattr(args, dest, None)
    enable_compilation_cache(args)
    if args.no_compile_cache:
        raise JaxstyleError("warmup fills the compilation cache: drop --no-compile-cache")
    cfg = config_from_args(args)
    aspects = args.aspect or [aspect(a) for a in DEFAULT_ASPECTS]
    sizes = bucket_sizes(aspects, max(cfg.schedule.all_scales))
    folder = args.folder_batch
    rng = np.random.default_rng(0)
    total = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="jaxstyle-warmup-") as tmp:
        tmp = Path(tmp)
        for h, w in sizes:
            photo = tmp / f"photo_{w}x{h}.png"
            image_io.save_image(rng.random((h, w, 3), dtype=np.float32), photo)
            runs = [("one photo", [photo], tmp / f"out_{w}x{h}.png")]
            if folder:
                batch = tmp / f"batch_{w}x{h}"
                batch.mkdir()
                for i in range(folder):
                    image_io.save_image(rng.random((h, w, 3), dtype=np.float32),
                                        batch / f"{i}.png")
                runs.append((f"a folder of {folder}", [batch], tmp / f"outs_{w}x{h}"))
            for what, contents, output in runs:
                start = time.perf_counter()
                code = stylize_cli.run(_one_iteration(args, contents, output, folder))
                if code != 0:
                    return code
                print(f"warmed {w}x{h} ({what}, {len(cfg.schedule.all_scales)} scale(s)) in "
                      f"{time.perf_counter() - start:.1f} s", file=sys.stderr)
    print(f"warmup done: {len(sizes)} shape bucket(s) at {max(cfg.schedule.all_scales)} px in "
          f"{time.perf_counter() - total:.1f} s; stylize runs with these flags now load their "
          "programs from the cache", file=sys.stderr)
    return 0


def _one_iteration(args: argparse.Namespace, contents: list[Path], output: Path,
                   folder: int | None) -> argparse.Namespace:
    """``args`` as a stylize run of one iteration per scale on ``contents`` into ``output``."""
    run_args = argparse.Namespace(**vars(args))
    run_args.content = [str(c) for c in contents]
    run_args.output = str(output) + ("/" if contents[0].is_dir() else "")
    run_args.num_iterations, run_args.coarse_iterations = 1, 1
    run_args.batch_size = folder or args.batch_size
    run_args.quiet = True
    for dest in NOT_FOR_WARMUP - {"help", "content", "output", "quiet", "num_iterations",
                                  "coarse_iterations"}:
        setattr(run_args, dest, None)
    run_args.print_iter, run_args.save_iter, run_args.gif_every = 0, 0, 20
    run_args.all_pairs, run_args.resume, run_args.web_keep = False, False, False
    return run_args
