"""Shape buckets: a photo of any aspect ratio runs on one of a few compiled shapes per scale.

A scale's image of h x w (long side the scale's size S) is padded at its bottom and right, with
the colour the network sees as zero (`fill_color`), to the bucket (H, W): the long side stays S and the short side is rounded up to a
multiple of S / `QUARTERS` (a quarter of S: at 512 px the short sides 129-512 fall in 4 buckets,
so 4:3 and 16:9 landscapes share 512x384). The padding is excluded from every loss term
(`losses.Targets.valid`: masks at the image and at each layer, 1 where the photo's own
activations are) and cropped from the output, so the result has the photo's exact size.

Compiled programs depend on shapes only (the masks are runtime arrays), so photos of different
aspect ratios in one bucket, one after another or in one folder, share every step program.
"""

from __future__ import annotations

import functools
import math
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from jaxstyle.imageops import resize
from jaxstyle.kernels import conv3x3, pool2x2
from jaxstyle.models import vgg19

QUARTERS = 4  # the short side is rounded up to a multiple of (long side / QUARTERS)
ALIGN = 16  # bucket sides are multiples of this (VGG-19 pools 4 times before relu5_1)


def quantum(long_side: int) -> int:
    """The step of a bucket's short side at a scale of ``long_side`` px."""
    return max(ALIGN, math.ceil(long_side / QUARTERS / ALIGN) * ALIGN)


def bucket_shape(height: int, width: int) -> tuple[int, int]:
    """The compiled (H, W) for an image of ``height`` x ``width``: the long side kept, the short
    side rounded up to a multiple of `quantum` (at most the long side)."""
    long_side = max(height, width)
    q = quantum(long_side)
    up = lambda side: side if side == long_side else min(long_side, math.ceil(side / q) * q)  # noqa: E731
    return up(height), up(width)


def level(layer: str) -> str:
    """The key of ``layer``'s resolution in `valid_masks`: "level<k>", k poolings before it."""
    index = vgg19.LAYER_NAMES.index(layer)
    return f"level{sum(n.startswith('pool') for n in vgg19.LAYER_NAMES[:index + 1])}"


def valid_masks(size: tuple[int, int], padded: tuple[int, int], layers: Iterable[str],
                num_problems: int) -> dict[str, np.ndarray]:
    """{"level<k>": float32[P, h_k, w_k]} for every resolution k up to the deepest of ``layers``
    (level0: the image): 1 on as many rows and columns at the top left as the unpadded photo of
    ``size`` has there (`vgg19.output_shape`), 0 on the padding."""
    masks = {}
    deepest = max(vgg19.LAYER_NAMES.index(n) for n in layers)
    for name in ("conv1_1", *(n for n in vgg19.LAYER_NAMES[:deepest + 1] if n.startswith("pool"))):
        full = vgg19.output_shape(name, *padded)[:2]
        valid = vgg19.output_shape(name, *size)[:2]
        m = np.zeros((num_problems,) + tuple(full), np.float32)
        m[:, :valid[0], :valid[1]] = 1.0
        masks[level(name)] = m
    return masks


def masked_features(vgg: vgg19.VGG, images: jax.Array, layers: Iterable[str],
                    valid: dict, dtype=jnp.float32) -> dict[str, jax.Array]:
    """`vgg19.features` of padded images whose activations are zeroed outside the photo after
    every ReLU and pooling: each convolution then sees at the photo's border the zeros an
    unpadded photo's SAME padding gives it, so the photo's activations are the unpadded photo's
    (to float rounding) and the padding changes no loss term. valid: `valid_masks` ([B or 1,
    ...] each); images: float32[B, H, W, 3] padded with `fill_color`."""
    layers = vgg19.check_layers(layers, vgg)
    last = vgg19.LAYER_NAMES.index(layers[-1])
    mask = lambda x, name: x * valid[level(name)][..., None].astype(x.dtype)  # noqa: E731
    x = mask(vgg.preprocessing.apply(images).astype(dtype), "conv1_1")
    result = {}
    for name in vgg19.LAYER_NAMES[:last + 1]:
        if name.startswith("conv"):
            p = vgg.params[name]
            kernel, bias = p["kernel"].astype(dtype), p["bias"].astype(dtype)
            prepared = None if vgg.prepared is None else jax.tree.map(
                lambda a: a.astype(dtype), vgg.prepared[name])
            x = conv3x3(x, kernel, bias, prepared)
        elif name.startswith("relu"):
            x = mask(jax.nn.relu(x), name)
        else:
            x = mask(pool2x2(x, vgg.pooling), name)
        if name in layers:
            result[name] = x
    return result


def fill_color(preprocessing: vgg19.Preprocessing) -> np.ndarray:
    """float32[3]: the RGB colour in [0, 1] that the network's preprocessing maps to zero. Padded
    with it, the first convolution sees at the photo's border what the unpadded photo's zero
    padding gives it; deeper layers differ only near the border (their own zero padding)."""
    mean = np.asarray(preprocessing.mean, np.float32) / preprocessing.scale
    return np.clip(mean[::-1] if preprocessing.bgr else mean, 0.0, 1.0)


def pad(images: jax.Array, height: int, width: int, fill: jax.Array) -> jax.Array:
    """float32[P, h, w, 3] -> float32[P, height, width, 3], ``fill`` (float32[3]) at the bottom
    and right. The padding stays as it is during a run (`optimize.step` freezes it).

    Images this host holds whole are padded here, in NumPy, and laid out as they were: a jitted
    pad would compile for every photo's own shape, which is what buckets exist to avoid."""
    if isinstance(images, np.ndarray) or getattr(images, "is_fully_addressable", False):
        host = np.asarray(images)
        out = np.empty(host.shape[:1] + (height, width) + host.shape[3:], host.dtype)
        out[...] = np.asarray(fill, host.dtype)
        out[:, :host.shape[1], :host.shape[2]] = host
        sharding = getattr(images, "sharding", None)
        return jax.device_put(out, sharding) if sharding is not None else jnp.asarray(out)
    return _pad(images, height, width, fill)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _pad(images: jax.Array, height: int, width: int, fill: jax.Array) -> jax.Array:
    p, h, w, c = images.shape
    out = jnp.broadcast_to(jnp.asarray(fill, images.dtype), (p, height, width, c))
    return out.at[:, :h, :w].set(images)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def refit(images: jax.Array, valid: tuple[int, int], size: tuple[int, int],
          padded: tuple[int, int], fill: jax.Array) -> jax.Array:
    """Padded images whose photo is ``valid`` (h, w) at their top left -> that photo resized to
    ``size`` and padded to ``padded`` (the next scale's start)."""
    photo = images[:, :valid[0], :valid[1]]
    return _pad(resize(photo, *size), *padded, fill)
