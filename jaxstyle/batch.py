"""Many content images at once: shape buckets, vmapped runs, sharding across devices and hosts.

Policy (documented in the README):
  * every content image is resized so its long side is the final scale
    (``cfg.schedule.all_scales[-1]``), then images are grouped into buckets of equal shape;
    landscape 4:3 photos share a bucket;
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
from typing import Callable, Iterator, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxstyle import buckets as shape_buckets
from jaxstyle import stylize as stylize_lib
from jaxstyle.config import Config
from jaxstyle.imageops import fit_long_side, resize
from jaxstyle.models import vgg19


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
    return np.asarray(multihost_utils.process_allgather(array, tiled=True))


@dataclasses.dataclass(frozen=True)
class BatchProgress:
    """After each compiled chunk of a batch: ``done`` of ``total`` image-iterations; ``problems``:
    the indices (into ``contents``) of the images in the first rows of ``progress.state`` (the
    rows after them are padding)."""

    done: int
    total: int
    progress: stylize_lib.Progress
    problems: tuple[int, ...] = ()


def stylize_many(vgg: vgg19.VGG, contents: Sequence[np.ndarray], styles: Sequence[np.ndarray],
                 cfg: Config, batch_size: int = 4, mesh: Mesh | None = None,
                 on_progress: Callable[[BatchProgress], None] | None = None,
                 every: tuple[int, ...] = (),
                 init_image: np.ndarray | None = None,
                 bucket: bool = False) -> list[stylize_lib.Result]:
    """Stylizes each content image with the same styles, in bucketed, sharded batches.

    Args:
      contents: float32[H_i, W_i, 3] in [0, 1], any sizes (resized to the final scale's long side).
      styles: float32[Hs, Ws, 3] style images (blended by ``cfg.loss.style_blend_weights``).
      batch_size: the most problems per compiled run (caps memory).
      mesh: the device mesh (default: all devices).
      init_image: float32[Hi, Wi, 3], every problem's start for ``cfg.start.init == "image"``.
      bucket: run on shape buckets (`jaxstyle.buckets`): photos whose padded shapes match share
        every compiled program (batches hold photos of one size; a bucket's batches all have
        the same number of problems).

    Returns:
      One `stylize.Result` per content image (its ``images`` has one image), in input order.
    """
    mesh = mesh or device_mesh()
    num_devices = mesh.devices.size
    final = cfg.schedule.all_scales[-1]
    # Bucketed, resized on the host: a jitted resize compiles for every photo's own shape.
    fit = shape_buckets.resize if bucket else resize
    resized = [fit(np.asarray(c, np.float32), *fit_long_side(c.shape[0], c.shape[1], final))
               for c in contents]
    buckets = bucket_by_shape({i: tuple(img.shape[:2]) for i, img in enumerate(resized)})
    sizes = {shape: len(keys) for shape, keys in buckets.items()}
    if bucket:  # photos of one padded shape run one after another, with one batch size
        # A portrait shares the landscape's bucket (it runs transposed, `jaxstyle.buckets`):
        # its batches have the landscapes' number of problems, so the same programs.
        padded = {shape: shape_buckets.run_shape(*shape) for shape in buckets}
        sizes = {shape: sum(len(k) for s, k in buckets.items() if padded[s] == padded[shape])
                 for shape in buckets}
        buckets = dict(sorted(buckets.items(), key=lambda item: padded[item[0]]))
    problems_sharding = NamedSharding(mesh, PartitionSpec("batch"))
    vgg = jax.device_put(vgg, NamedSharding(mesh, PartitionSpec()))
    total = len(contents) * cfg.schedule.total_iterations
    done_before = 0
    results: dict[int, stylize_lib.Result] = {}
    for shape, keys in buckets.items():
        size = padded_batch_size(sizes[shape], batch_size, num_devices)
        for batch in _batches(keys, size):
            padded = batch + [batch[0]] * (size - len(batch))
            stacked = _global_array(np.stack([np.asarray(resized[k]) for k in padded]),
                                    problems_sharding)

            def report(p, base=done_before, keys=tuple(batch)):
                if on_progress is not None:
                    step = cfg.schedule.iterations_before(p.scale_index) + p.iteration
                    on_progress(BatchProgress(base + len(keys) * step, total, p, keys))

            result = stylize_lib.stylize_batch(vgg, stacked, styles, cfg, init_image=init_image,
                                               on_progress=report, every=every, to_host=_to_host,
                                               bucket=bucket)
            for i, key in enumerate(batch):
                results[key] = result.problem(i)
            done_before += len(batch) * cfg.schedule.total_iterations
    return [results[i] for i in range(len(contents))]
