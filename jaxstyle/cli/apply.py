"""``jaxstyle apply NET INPUT... -o OUT``: stylizes photos (or folders of video frames) in one pass
of a trained network, batched by shape (one compiled program per shape), written atomically."""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxstyle import batch as batch_lib
from jaxstyle import image_io, netfile
from jaxstyle.cli.common import (EXIT_ERROR, EXIT_INTERRUPTED, StopRequest, positive,
                                 progress_bar, warn)
from jaxstyle.config import DTYPES
from jaxstyle.errors import JaxstyleError
from jaxstyle.files import check_outputs
from jaxstyle.imageops import fit_long_side
from jaxstyle.models import transformer

# Inputs that are films (`jaxstyle.video_io.VIDEO_SUFFIXES`; PyAV is only imported for them).
FILM_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm", ".mpg", ".mpeg", ".ts", ".flv",
                 ".wmv", ".ogv", ".3gp")
# Images read (and held) at a time: bounds memory on folders of thousands of frames.
CHUNK = 64


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("apply", help="stylize images with a network from `jaxstyle train`",
                       description="Stylize images (files or folders of them, e.g. video frames) "
                                   "in one forward pass of a trained network.")
    p.add_argument("net", help="NET file (.safetensors) written by `jaxstyle train`")
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="image files or folders of them, or one film")
    p.add_argument("--info", action="store_true",
                   help="print what the network was trained on and for (styles, steps, temporal "
                        "weight for video) and exit")
    p.add_argument("-o", "--output",
                   help="output image for one input; a directory (an existing one, or a path "
                        "ending with /) for several or one (each named after its input)")
    p.add_argument("--image-size", type=positive(int),
                   help="resize each input so its long side is this many pixels (default: as is)")
    p.add_argument("--original-colors", action="store_true",
                   help="keep the inputs' colours (luminance transfer)")
    p.add_argument("--batch-size", type=positive(int), default=4,
                   help="images of one shape per compiled call (default 4)")
    p.add_argument("--compute-dtype", choices=DTYPES, default="float32")
    p.add_argument("--bit-depth", type=int, choices=image_io.BIT_DEPTHS, default=8,
                   help="bits per colour channel of the outputs (default 8); 16 writes 48-bit PNGs")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


@functools.partial(jax.jit, static_argnames="dtype")
def _stylize(params, images, dtype):
    return transformer.apply(params, images, jnp.dtype(dtype))


def output_path(outdir: Path, path: Path, bit_depth: int = 8) -> Path:
    """``outdir/<name>``, keeping the input's format where jaxstyle can write it at ``bit_depth``
    bits per channel, else PNG."""
    keep = path.suffix.lower() in image_io.OUTPUT_FORMATS and bit_depth == 8
    suffix = path.suffix if keep else ".png"
    return outdir / f"{path.stem}{suffix}"


def run(args: argparse.Namespace) -> int:
    net = netfile.load(args.net)
    if args.info:
        print(f"{args.net}: {netfile.describe(net)}")
        return 0
    if not args.inputs or not args.output:
        raise JaxstyleError("apply needs INPUT... and -o OUTPUT (or --info)")
    if not args.quiet:  # what the network is, e.g. whether it was trained for video
        print(f"network: {netfile.describe(net)}", file=sys.stderr)
    # Ctrl-C stops after the batch in flight: a KeyboardInterrupt raised inside an XLA compile
    # crashed the process (SIGSEGV) on its way out.
    stop = StopRequest()
    with stop.on_ctrl_c():
        if len(args.inputs) == 1 and Path(args.inputs[0]).suffix.lower() in FILM_SUFFIXES:
            return _apply_film(args, net, _stylize, stop)  # a film: streamed
        return _apply_images(args, net, stop)


def _apply_images(args: argparse.Namespace, net, stop: StopRequest) -> int:
    """Photos, or folders of them, batched by shape; each output written as its batch is done."""
    paths = image_io.collect_images(args.inputs)
    if not paths:
        raise JaxstyleError(f"no images found in {', '.join(args.inputs)}; give image files or "
                            "folders that hold some")
    out = Path(args.output)
    single = (len(paths) == 1 and not Path(args.inputs[0]).is_dir()
              and not image_io.is_folder(args.output))
    if single:
        targets = {paths[0]: image_io.check_output_path(out, [args.net, *paths], args.bit_depth)}
    else:
        if out.suffix.lower() in image_io.OUTPUT_FORMATS:
            raise JaxstyleError(f"several inputs need an output directory, not '{out}'; use e.g. "
                                "-o stylized/")
        targets = {p: output_path(out, p, args.bit_depth) for p in paths}
        check_outputs({f"'{p}'": t for p, t in targets.items()}, [args.net, *paths])
        out.mkdir(parents=True, exist_ok=True)
    mesh = batch_lib.device_mesh()
    size = batch_lib.padded_batch_size(args.batch_size, args.batch_size, mesh.devices.size)
    params = jax.device_put(jax.tree.map(jnp.asarray, net.params))
    skipped: list[Path] = []
    where = targets[paths[0]] if single else out
    done = 0
    bar = progress_bar(len(paths), "img", args.quiet, desc="apply")

    def load(path: Path):
        try:
            return image_io.load_image(path, args.image_size, role="input image")
        except JaxstyleError as e:
            return e

    def save(item):
        path, image, content = item
        if args.original_colors:
            image = image_io.original_colors(image, content)
        image_io.save_image(image, targets[path], [args.net, *paths], args.bit_depth)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for start in range(0, len(paths), CHUNK):
            chunk = paths[start:start + CHUNK]
            loaded = {}
            for path, image in zip(chunk, pool.map(load, chunk)):
                if isinstance(image, JaxstyleError):
                    warn(f"skipping {path}: {image}")
                    skipped.append(path)
                    bar.update(1)
                elif min(image.shape[:2]) < transformer.MIN_SIDE:
                    warn(f"skipping {path}: smaller than {transformer.MIN_SIDE}x"
                         f"{transformer.MIN_SIDE} pixels")
                    skipped.append(path)
                    bar.update(1)
                else:
                    loaded[path] = image
            for shape, keys in batch_lib.bucket_by_shape(
                    {p: im.shape[:2] for p, im in loaded.items()}).items():
                for i in range(0, len(keys), size):
                    keys_i = keys[i:i + size]
                    # Padded to a fixed batch (repeating the first image): one program per shape.
                    stack = np.stack([loaded[k] for k in keys_i + [keys_i[0]] * (size - len(keys_i))])
                    result = np.asarray(_stylize(params, stack, args.compute_dtype))
                    list(pool.map(save, [(k, result[j], loaded[k]) for j, k in enumerate(keys_i)]))
                    bar.update(len(keys_i))
                    done += len(keys_i)
                    if stop.requested:
                        bar.close()
                        print(f"jaxstyle: interrupted; wrote {done} of {len(paths)} image(s) to "
                              f"{where}", file=sys.stderr)
                        return EXIT_INTERRUPTED
    bar.close()
    written = len(paths) - len(skipped)
    print(f"wrote {written} image(s) to {where}" +
          (f"; skipped {len(skipped)}: {', '.join(map(str, skipped))}" if skipped else ""),
          file=sys.stderr if args.quiet else sys.stdout)
    return EXIT_ERROR if skipped else 0


class _Stopped(Exception):
    """Ctrl-C between two batches of a film: its writer removes the unfinished file."""


def _apply_film(args: argparse.Namespace, net, stylize_batch, stop: StopRequest) -> int:
    """``jaxstyle apply NET IN.mp4 -o OUT.mp4``: the film through a trained network, streamed in
    batches of ``--batch-size`` frames (the last padded: one compiled program), written with the
    input's frame rate and audio, atomically (after Ctrl-C, nothing: a film is written whole).
    ``stylize_batch(params, images, dtype)``."""
    from jaxstyle import video_io
    from jaxstyle.models import transformer

    video_io.require()
    source, output = Path(args.inputs[0]), Path(args.output)
    info = video_io.probe(source)
    if output.resolve() == source.resolve():
        raise JaxstyleError(f"the output '{output}' would overwrite the input; choose another")
    long_side = args.image_size or max(info.height, info.width)
    h, w = fit_long_side(info.height, info.width, long_side)
    h, w = h - h % 2, w - w % 2
    if min(h, w) < transformer.MIN_SIDE:
        raise JaxstyleError(f"the frames are {w}x{h}; the network needs {transformer.MIN_SIDE} px")
    params = jax.device_put(jax.tree.map(jnp.asarray, net.params))
    size = args.batch_size
    bar = progress_bar(info.num_frames, "frame", args.quiet, desc="apply")
    written = 0
    try:
        with video_io.FilmWriter(output, h, w, info.frame_rate, audio_from=source) as writer:
            def flush(batch):
                padded = batch + [batch[0]] * (size - len(batch))
                result = np.asarray(stylize_batch(params, np.stack(padded), args.compute_dtype))
                for frame, image in zip(batch, result):
                    if args.original_colors:
                        image = image_io.original_colors(image, frame)
                    writer.write(image)
                bar.update(len(batch))

            batch: list[np.ndarray] = []
            for frame in video_io.read_frames(source, h, w):
                batch.append(frame)
                if len(batch) == size:
                    flush(batch)
                    written += len(batch)
                    batch = []
                    if stop.requested:
                        raise _Stopped
            if batch:
                flush(batch)
                written += len(batch)
    except _Stopped:
        bar.close()
        print(f"jaxstyle: interrupted; {output} not written (a film is written whole)",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    bar.close()
    print(f"wrote {output} ({written} frames at {float(info.frame_rate):g} fps)",
          file=sys.stderr if args.quiet else sys.stdout)
    return 0
