"""Shape buckets: a photo of any aspect ratio runs on one of a few compiled shapes per scale.

A scale's image of h x w (long side the scale's size S) is padded at its bottom and right, with
the colour the network sees as zero (`fill_color`), to the bucket (H, W): the long side stays S and the short side is rounded up to a
multiple of S / `QUARTERS` (a quarter of S: at 512 px the short sides 129-512 fall in 4 buckets,
so 4:3 and 16:9 landscapes share 512x384). The padding is excluded from every loss term
(`losses.Targets.valid`: masks at the image and at each layer, 1 where the photo's own
activations are) and cropped from the output, so the result has the photo's exact size.

Compiled programs depend on shapes only (the masks are runtime arrays), so photos of different
aspect ratios in one bucket, one after another or in one folder, share every step program.

Portraits run transposed (`TRANSPOSE`): every term of the loss is the same for an image and its
transpose when the network's 3x3 kernels are transposed too (SAME convolutions, 2x2 pooling, Grams
and content sums over positions, TV over both directions, the L-BFGS pyramid's separable
resizes), and the kernels are runtime arguments of the compiled step. So a 3:4 photo runs the 4:3
photo's programs with `transposed_network` and its inputs transposed (`transpose`), and its result
is transposed back: 4:3, 3:4, 16:9 and 9:16 share one program per scale.

Everything shaped like the photo itself (resizing to a scale, padding, cropping, transposing) is
done here on the host, in NumPy (`resize`, `refit`): jitted, each would compile for every photo's
own shape, which is what buckets exist to avoid.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from jaxstyle import imageops
from jaxstyle.kernels import conv3x3, pool2x2
from jaxstyle.models import vgg19

# Whether portraits run as transposed landscapes (their programs shared); a switch for tests.
TRANSPOSE = True
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
    host = _on_host(images)
    if host is None:
        return _pad(images, height, width, fill)
    return like(pad_host(host, height, width, fill), images)


def pad_host(host: np.ndarray, height: int, width: int, fill) -> np.ndarray:
    """`pad` in NumPy: float32[P, h, w, 3] -> float32[P, height, width, 3]."""
    out = np.empty(host.shape[:1] + (height, width) + host.shape[3:], host.dtype)
    out[...] = np.asarray(fill, host.dtype)
    out[:, :host.shape[1], :host.shape[2]] = host
    return out


@functools.partial(jax.jit, static_argnums=(1, 2))
def _pad(images: jax.Array, height: int, width: int, fill: jax.Array) -> jax.Array:
    p, h, w, c = images.shape
    out = jnp.broadcast_to(jnp.asarray(fill, images.dtype), (p, height, width, c))
    return out.at[:, :h, :w].set(images)


def refit(images: jax.Array, valid: tuple[int, int], size: tuple[int, int],
          padded: tuple[int, int], fill: jax.Array) -> jax.Array:
    """Padded images float32[P, H, W, 3] whose photo is ``valid`` (h, w) at their top left ->
    that photo resized to ``size`` (`resize`) and padded to ``padded`` with ``fill``, laid out as
    ``images`` were (a scale's contents, or the next scale's start)."""
    host = _on_host(images)
    if host is None:  # split over hosts: no host holds the photo whole
        return _refit(images, valid, size, padded, fill)
    photo = resize(host[:, :valid[0], :valid[1]], *size)
    return like(pad_host(photo, *padded, fill), images)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _refit(images: jax.Array, valid: tuple[int, int], size: tuple[int, int],
           padded: tuple[int, int], fill: jax.Array) -> jax.Array:
    photo = images[:, :valid[0], :valid[1]]
    return _pad(imageops.resize(photo, *size), *padded, fill)


def transpose(images: jax.Array) -> jax.Array:
    """float32[P, H, W, C] -> float32[P, W, H, C] (a portrait as the landscape its run uses),
    laid out as ``images`` were; in NumPy where this host holds them whole."""
    host = _on_host(images)
    if host is None:
        return _transpose(images)
    return like(np.ascontiguousarray(host.swapaxes(1, 2)), images)


@jax.jit
def _transpose(images: jax.Array) -> jax.Array:
    return images.swapaxes(1, 2)


def transposed_network(vgg: vgg19.VGG) -> vgg19.VGG:
    """``vgg`` with every 3x3 kernel transposed (HWIO -> WHIO), its `vgg19.prepare`d kernels
    too: its features of a transposed image are the transposed features of the image (SAME
    padding and 2x2 pooling treat both axes alike). Permuted on the host where it holds the
    weights (no program at all: a portrait after a landscape compiles nothing), else in one
    small program of the kernels' shapes."""
    leaves = jax.tree.leaves(vgg)
    if all(isinstance(x, np.ndarray) or getattr(x, "is_fully_addressable", False)
           for x in leaves):
        return _transposed(vgg, np, _put_like)
    return _transposed_jit(vgg)


def _put_like(new: np.ndarray, old) -> jax.Array:
    """``new`` placed as ``old`` is, committed to its devices only if ``old`` is: a committed
    kernel where the landscape's was not made the programs' keys differ (each compiled again)."""
    new = np.ascontiguousarray(new)
    return like(new, old) if getattr(old, "_committed", True) else jax.device_put(new)


def _transposed(vgg: vgg19.VGG, xp, put=lambda new, old: new) -> vgg19.VGG:
    """`transposed_network` with the array module ``xp`` (NumPy or jax.numpy); ``put(new,
    old)`` places a permuted leaf where the original was."""
    turn = lambda a, permute: put(permute(xp.asarray(a)), a)  # noqa: E731
    kernel_t = lambda k: k.swapaxes(0, 1)  # noqa: E731
    # The flipped kernel transposes as the kernel does; a Winograd transform G k Gᵀ of the
    # transposed kernel is the transform's 4x4 tile transposed (G kᵀ Gᵀ = (G k Gᵀ)ᵀ).
    winograd_t = lambda u: u.reshape((4, 4) + u.shape[1:]).swapaxes(0, 1).reshape(u.shape)  # noqa: E731
    params = {name: {**p, "kernel": turn(p["kernel"], kernel_t)} for name, p in vgg.params.items()}
    prepared = None
    if vgg.prepared is not None:
        prepared = {name: type(p)(None if p.grad_kernel is None else turn(p.grad_kernel, kernel_t),
                                  None if p.winograd is None else turn(p.winograd, winograd_t))
                    for name, p in vgg.prepared.items()}
    return dataclasses.replace(vgg, params=params, prepared=prepared)


_transposed_jit = jax.jit(functools.partial(_transposed, xp=jnp))


def runs_transposed(height: int, width: int) -> bool:
    """Whether a photo of ``height`` x ``width`` runs transposed (a portrait; see the module)."""
    return TRANSPOSE and height > width


def run_shape(height: int, width: int) -> tuple[int, int]:
    """The compiled (H, W) a photo of ``height`` x ``width`` runs on: its bucket, transposed for
    a portrait (`runs_transposed`). Photos with equal run shapes share every program."""
    h, w = bucket_shape(height, width)
    return (w, h) if runs_transposed(height, width) else (h, w)


def _on_host(images) -> np.ndarray | None:
    """``images`` as a NumPy array when this host holds them whole, else None."""
    if isinstance(images, np.ndarray):
        return images
    if getattr(images, "is_fully_addressable", False):
        return np.asarray(images)
    return None


def like(host: np.ndarray, reference) -> jax.Array:
    """``host`` on the device(s), laid out as ``reference`` is (NumPy input: the default)."""
    sharding = getattr(reference, "sharding", None)
    return jax.device_put(host, sharding) if sharding is not None else jnp.asarray(host)


# ----------------------------------------------------------------------------------------------
# Lanczos resizing in NumPy: what `imageops.resize` (jax.image.resize, "lanczos3", antialiased
# when shrinking) computes, as two matrix products per image with weights made on the host.


@functools.lru_cache(maxsize=64)
def lanczos_weights(in_size: int, out_size: int) -> np.ndarray:
    """float32[out_size, in_size]: jax.image.resize's "lanczos3" weights along one axis
    (the kernel widened by in/out when shrinking; each row normalised; a sample outside the
    input weighs nothing)."""
    inv_scale = in_size / out_size
    kernel_scale = max(inv_scale, 1.0)
    sample = (np.arange(out_size) + 0.5) * inv_scale - 0.5
    x = np.abs(sample[None, :] - np.arange(in_size)[:, None]) / kernel_scale
    with np.errstate(divide="ignore", invalid="ignore"):
        y = 3.0 * np.sin(np.pi * x) * np.sin(np.pi * x / 3.0) / (np.pi**2 * x**2)
    w = np.where(x > 1e-3, y, 1.0)
    w = np.where(x > 3.0, 0.0, w)
    total = w.sum(axis=0, keepdims=True)
    w = np.where(np.abs(total) > 1000 * np.finfo(np.float32).eps,
                 w / np.where(total != 0, total, 1), 0.0)
    w = np.where(((sample >= -0.5) & (sample <= in_size - 0.5))[None, :], w, 0.0)
    return np.ascontiguousarray(w.T, np.float32)


def resize(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """float32[..., H, W, 3] -> float32[..., height, width, 3] in NumPy, clipped to [0, 1], one
    image at a time (its rounding never depends on the batch): `imageops.resize` to float
    rounding, without compiling a program per photo shape. Returns ``images`` when the size
    matches."""
    images = np.asarray(images, np.float32)
    h, w = images.shape[-3:-1]
    if (h, w) == (height, width):
        return images
    rows, cols = lanczos_weights(h, height), lanczos_weights(w, width)
    flat = images.reshape((-1, h, w, images.shape[-1]))
    out = np.empty((flat.shape[0], height, width, flat.shape[-1]), np.float32)
    for i, image in enumerate(flat):
        tall = (rows @ image.reshape(h, -1)).reshape(height, w, -1)
        out[i] = np.einsum("hwc,Ww->hWc", tall, cols, optimize=True)
    return np.clip(out, 0.0, 1.0).reshape(images.shape[:-3] + out.shape[1:])
