"""Many content images at once: shape buckets, vmapped runs, sharding across devices and hosts.

Policy (documented in the README):
  * every content image is resized so its long side is the final scale (``cfg.all_scales[-1]``),
    then images are grouped into buckets of equal shape; landscape 4:3 photos share a bucket;
  * a bucket runs in batches of at most ``batch_size`` problems; every batch of a bucket is padded
    to the same size (by repeating its first image, results discarded) and to a multiple of the
    device count, so there is at most one compilation per distinct shape;
  * each problem is independent (own optimizer state, own L-BFGS history, own divergence flag)
    and its noise start does not depend on its position, so an image stylized in a batch equals
    the same image stylized alone, within float tolerance;
  * the problem axis is sharded over a 1-D device mesh of all devices (``jax.devices()``: every
    local device, and every host's devices when started under ``jax.distributed``).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Callable, Iterator, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxstyle import stylize as stylize_lib
from jaxstyle import vgg19
from jaxstyle.config import Config

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")


def device_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh, axis ``"batch"``, over ``devices`` (default: all devices of all hosts)."""
    devices = list(devices if devices is not None else jax.devices())
    return Mesh(np.array(devices), ("batch",))


def padded_batch_size(bucket_size: int, batch_size: int, num_devices: int) -> int:
    """Problems per compiled run of a bucket: min(bucket, batch cap), rounded up to the devices."""
    size = min(bucket_size, batch_size)
    return math.ceil(size / num_devices) * num_devices


def bucket_by_shape(shapes: dict[object, tuple[int, int]]) -> dict[tuple[int, int], list]:
    """Groups keys by shape, in first-seen order. shapes: {key: (h, w)}."""
    buckets: dict[tuple[int, int], list] = {}
    for key, shape in shapes.items():
        buckets.setdefault(tuple(shape), []).append(key)
    return buckets


def _batches(keys: list, size: int) -> Iterator[list]:
    for i in range(0, len(keys), size):
        yield keys[i:i + size]


def _global_array(host_array: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global array sharded by ``sharding`` from the full array every host holds."""
    return jax.make_array_from_callback(host_array.shape, sharding, lambda index: host_array[index])


def _to_host(array: jax.Array) -> np.ndarray:
    """The full value of a (possibly multi-host) array on every host."""
    if array.is_fully_addressable:
        return np.asarray(array)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(array, tiled=True))


@dataclasses.dataclass(frozen=True)
class BatchProgress:
    """After each compiled chunk of a batch: ``done`` of ``total`` image-iterations."""

    done: int
    total: int
    progress: stylize_lib.Progress


def stylize_many(vgg: vgg19.VGG, contents: Sequence[np.ndarray], styles: Sequence[np.ndarray],
                 cfg: Config, batch_size: int = 4, mesh: Mesh | None = None,
                 on_progress: Callable[[BatchProgress], None] | None = None,
                 every: tuple[int, ...] = ()) -> list[stylize_lib.Result]:
    """Stylizes each content image with the same styles, in bucketed, sharded batches.

    Args:
      contents: float32[H_i, W_i, 3] in [0, 1], any sizes (resized to the final scale's long side).
      styles: float32[Hs, Ws, 3] style images (blended by ``cfg.style_blend_weights``).
      batch_size: the most problems per compiled run (caps memory).
      mesh: the device mesh (default: all devices).

    Returns:
      One `stylize.Result` per content image (its ``images`` has one image), in input order.
    """
    mesh = mesh or device_mesh()
    num_devices = mesh.devices.size
    final = cfg.all_scales[-1]
    resized = [stylize_lib.resize(np.asarray(c, np.float32),
                                  *stylize_lib.fit_long_side(c.shape[0], c.shape[1], final))
               for c in contents]
    buckets = bucket_by_shape({i: tuple(img.shape[:2]) for i, img in enumerate(resized)})
    problems_sharding = NamedSharding(mesh, PartitionSpec("batch"))
    vgg = jax.device_put(vgg, NamedSharding(mesh, PartitionSpec()))
    total = len(contents) * cfg.num_iterations * len(cfg.all_scales)
    done_before = 0
    results: dict[int, stylize_lib.Result] = {}
    for keys in buckets.values():
        size = padded_batch_size(len(keys), batch_size, num_devices)
        for batch in _batches(keys, size):
            padded = batch + [batch[0]] * (size - len(batch))
            stacked = _global_array(np.stack([np.asarray(resized[k]) for k in padded]),
                                    problems_sharding)

            def report(p, base=done_before, real=len(batch)):
                if on_progress is not None:
                    step = p.scale_index * cfg.num_iterations + p.iteration
                    on_progress(BatchProgress(base + real * step, total, p))

            result = stylize_lib.stylize_batch(vgg, stacked, styles, cfg, on_progress=report,
                                               every=every, to_host=_to_host)
            for i, key in enumerate(batch):
                results[key] = stylize_lib.Result(result.images[i:i + 1], result.diverged[i:i + 1],
                                                  result.loss[i:i + 1])
            done_before += len(batch) * cfg.num_iterations * len(cfg.all_scales)
    return [results[i] for i in range(len(contents))]


# ----------------------------------------------------------------------------------------------
# The CLI's several-images path (files in, files out).


def collect_images(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given, and the image files (by extension, sorted) of any folder among them."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.iterdir()
                            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        else:
            found.append(path)
    return found


def output_path(outdir: Path, content: Path, style: Path | None, suffix: str = ".png") -> Path:
    """``outdir/<content stem>.png``, or ``outdir/<content stem>__<style stem>.png`` per pair."""
    name = content.stem if style is None else f"{content.stem}__{style.stem}"
    return outdir / f"{name}{suffix}"


def run_cli(args, cfg: Config) -> int:
    """``jaxstyle stylize a.jpg b.jpg photos/ --style s.jpg -o outdir/`` (called by `cli`)."""
    import sys

    from jaxstyle import cli, image_io
    from jaxstyle.errors import JaxstyleError

    contents = collect_images(args.content)
    if not contents:
        raise JaxstyleError(f"no images found in {', '.join(args.content)}; give image files or "
                            "folders that hold some")
    outdir = Path(args.output)
    if outdir.suffix.lower() in image_io.OUTPUT_FORMATS:
        raise JaxstyleError(f"several content images need an output directory, not '{outdir}'; "
                            "use e.g. -o stylized/")
    if args.resume or args.gif:
        raise JaxstyleError("--resume and --gif apply to one content image; drop them for a batch")
    style_paths = [Path(s) for s in args.style]
    pairs: list[tuple[Path | None, list[Path]]] = (
        [(s, [s]) for s in style_paths] if args.all_pairs else [(None, style_paths)])
    quiet = args.quiet
    long_side = max(cfg.all_scales)
    style_long = max(16, round(cfg.style_scale * long_side))
    styles = {p: image_io.load_image(p, style_long, role="style image") for p in style_paths}

    loaded, skipped = {}, []
    for path in contents:
        try:
            loaded[path] = image_io.load_image(path, long_side, role="content image")
            for style, _ in pairs:
                image_io.check_output_path(output_path(outdir, path, style),
                                           [*contents, *style_paths])
        except JaxstyleError as e:
            skipped.append(path)
            loaded.pop(path, None)
            print(f"jaxstyle: warning: skipping {path}: {e}", file=sys.stderr)
    if not loaded:
        raise JaxstyleError("every content image was skipped; nothing to do")

    vgg = cli.load_network(args, quiet)
    names = list(loaded)
    bar = cli.progress_bar(len(names) * len(pairs) * cfg.num_iterations * len(cfg.all_scales),
                            "it", quiet, desc=f"stylize {len(names)}×{len(pairs)}")
    offset = 0
    diverged = []
    for style, style_list in pairs:
        def update(p: BatchProgress, base=offset) -> None:
            bar.update(base + p.done - bar.n)
        results = stylize_many(vgg, [loaded[n] for n in names], [styles[s] for s in style_list],
                               cfg, batch_size=args.batch_size, on_progress=update,
                               every=(args.print_iter,) if args.print_iter else ())
        offset += bar.total // len(pairs)
        if jax.process_index() == 0:  # every host holds every result; one writes
            for name, result in zip(names, results):
                image_io.save_image(result.images[0], output_path(outdir, name, style))
                if result.diverged[0]:
                    diverged.append(name)
    bar.close()
    for name in diverged:
        print(f"jaxstyle: warning: the loss of {name} became NaN or infinite; kept its last finite "
              "image. Lower --style-weight", file=sys.stderr)
    written = len(names) * len(pairs)
    print(f"wrote {written} image(s) to {outdir}" +
          (f"; skipped {len(skipped)}: {', '.join(map(str, skipped))}" if skipped else ""),
          file=sys.stderr if quiet else sys.stdout)
    return cli.EXIT_ERROR if skipped or diverged else 0
