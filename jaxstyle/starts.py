"""Where the optimization starts: the initial images of a run's problems (the content, uniform
noise from the seed, the first style image or a given image), for plain and bucketed runs.

A problem's start never depends on its position in a batch: noise is drawn from the seed alone,
the same for every problem of one shape.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from jaxstyle import buckets
from jaxstyle.config import Config
from jaxstyle.errors import ConfigError
from jaxstyle.imageops import resize

Array = jax.Array


def initial_images(cfg: Config, contents: Array, styles: Sequence[Array],
                   init_image: Array | None = None) -> Array:
    """The starting images, float32[P, h, w, 3], for ``contents`` float32[P, h, w, 3].

    "noise" draws from ``cfg.start.seed`` alone, so an image's start never depends on its position
    in a batch: every problem of one size gets the same noise.
    """
    p, h, w, _ = contents.shape
    if cfg.start.init == "content":
        return contents
    if cfg.start.init == "noise":
        start = _noise_start(contents, np.uint32(cfg.start.seed))
    else:
        source = styles[0] if cfg.start.init == "style" else init_image
        if source is None:
            raise ConfigError("Config.init 'image' starts from an image: pass its array as "
                              "init_image")
        start = _broadcast_start(contents, resize(jnp.asarray(source, jnp.float32), h, w))
    # Laid out like the contents (a jitted function's output on a one-device mesh is not), as
    # `optimize.run_steps` returns its state: else the second chunk compiles a second program.
    sharding = getattr(contents, "sharding", None)
    return jax.device_put(start, sharding) if isinstance(sharding, NamedSharding) else start


# Jitted: eagerly, the key, the draw and the broadcast were programs of their own.
@jax.jit
def _broadcast_start(contents: Array, start: Array) -> Array:
    # Added to zeros like ``contents`` (not broadcast) so that the images are laid out like the
    # contents: split over the devices in a sharded batch, not all on one.
    return jnp.zeros_like(contents) + start


@jax.jit
def _noise_start(contents: Array, seed: Array) -> Array:
    start = jax.random.uniform(jax.random.key(seed), contents.shape[1:], jnp.float32)
    return _broadcast_start(contents, start)


def bucket_start(cfgs: Sequence[Config], contents: Array, valid: np.ndarray,
                  styles: Sequence[Array], init_image: np.ndarray | None, flip: bool,
                  size: tuple[int, int], padded: tuple[int, int], fill: np.ndarray) -> Array:
    """`initial_images` of a bucketed run, float32[P, H, W, 3] of the bucket's shape: every
    program made here has the bucket's shape, not the photo's (resizes on the host), and the
    padding holds ``fill``. contents: the padded photos; valid: float32[P, H, W], 1 on them;
    flip: the run is a transposed portrait (the start is transposed like its contents)."""
    if len({c.start for c in cfgs}) > 1:  # a sweep over the start: problem by problem
        return jnp.concatenate([bucket_start([c], contents[i:i + 1], valid[i:i + 1], styles,
                                             init_image, flip, size, padded, fill)
                                for i, c in enumerate(cfgs)])
    cfg = cfgs[0]
    if cfg.start.init == "content":
        return contents
    if cfg.start.init == "noise":
        start = _noise_in_bucket(contents, np.uint32(cfg.start.seed), valid)
    else:
        source = styles[0] if cfg.start.init == "style" else init_image
        if source is None:
            raise ConfigError("Config.init 'image' starts from an image: pass its array as "
                              "init_image")
        source = np.asarray(source, np.float32)
        source = source.swapaxes(0, 1) if flip else source
        one = buckets.pad_host(buckets.resize(source[None], *size), *padded, fill)
        start = np.ascontiguousarray(np.broadcast_to(one, (contents.shape[0],) + one.shape[1:]))
    sharding = getattr(contents, "sharding", None)
    return jax.device_put(start, sharding) if isinstance(sharding, NamedSharding) else \
        jnp.asarray(start)


@jax.jit
def _noise_in_bucket(contents: Array, seed: Array, valid: Array) -> Array:
    """A uniform noise start on the photo (``valid`` float32[P, H, W] > 0), the contents' fill
    on the padding, every problem the same draw. The noise is drawn in the landscape orientation
    and transposed for a portrait, so a photo gets the same noise whichever way it runs."""
    _, h, w, c = contents.shape
    noise = jax.random.uniform(jax.random.key(seed), (min(h, w), max(h, w), c), jnp.float32)
    noise = noise.swapaxes(0, 1) if h > w else noise
    return jnp.where(valid[..., None] > 0, _broadcast_start(contents, noise), contents)
