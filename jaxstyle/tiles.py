"""Past every device's memory: one image optimized in overlapping tiles on one device (issue 27).

The style term's Gram matrix is a sum over positions, G = Σ_p f_p f_pᵀ, so it splits exactly into
the contributions of disjoint regions. Each tile is an overlapping crop of the image; it *owns*
the part of the image nearer to it than to any other tile (a partition of the image, cut on
multiples of 16 px so that every layer's positions split too), and its Gram contribution is the sum
over the positions it owns of features computed on the whole crop. Where the crop reaches at
least a layer's receptive-field radius past the owned region (``overlap / 2`` >= the radius: 13 px
at relu3_1, 85 px at relu5_1), that contribution equals the whole image's exactly; deeper
layers see the crop's zero padding near its edges, so theirs is close rather than exact.

The optimization is Adam on the whole image, whose state (3 images) is small; only the network's
activations, the memory of a step, are tiled. Each step's gradient is assembled tile by tile: first
every crop's Gram contribution (a forward pass each), then each crop's gradient of the terms of
the positions it owns, with the other tiles' contributions as constants, added into place. Each
tile's contribution enters the Grams linearly, so these gradients sum to the whole image's
gradient: exact to float rounding where every crop reaches a receptive-field radius past what it
owns (tested), close otherwise. The result is then the untiled run's, with no seam to blend away
where the overlap is wide enough; a step costs one more forward per crop than an untiled step,
plus the overlaps. TV is computed on the whole image (it needs no network).

Numerical core: no file or network I/O here.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxstyle import losses, optimize
from jaxstyle.config import Config
from jaxstyle.models import vgg19

Array = jax.Array
ALIGN = 16  # VGG's largest stride before relu5_1: owned regions cut on it split every layer


@dataclasses.dataclass(frozen=True)
class Tile:
    """A crop [y, y + size) x [x, x + size) and the region it owns, [oy0, oy1) x [ox0, ox1)."""

    y: int
    x: int
    owned: tuple[int, int, int, int]


def _starts(length: int, size: int, overlap: int) -> list[int]:
    """Crop starts along one axis: crops of ``size`` covering ``length``, neighbours overlapping
    by at least ``overlap``, starts on multiples of `ALIGN`."""
    if length <= size:
        return [0]
    step = max(ALIGN, (size - overlap) // ALIGN * ALIGN)
    starts = list(range(0, length - size, step))
    last = length - size
    if starts[-1] != last:
        starts.append(last)
    return starts


def _owned(starts: list[int], size: int, length: int) -> list[tuple[int, int]]:
    """Each crop's owned interval: cut halfway through every overlap (rounded to `ALIGN`)."""
    cuts = [0]
    for a, b in zip(starts, starts[1:]):
        middle = (b + a + size) / 2  # the middle of [b, a + size)
        cuts.append(int(round(middle / ALIGN)) * ALIGN)
    cuts.append(length)
    return list(zip(cuts, cuts[1:]))


def grid(height: int, width: int, size: int, overlap: int) -> list[Tile]:
    """The tiles of a ``height`` x ``width`` image: crops of ``size`` (at most the image's sides)
    overlapping by at least ``overlap``, and the partition they own."""
    th, tw = min(size, height), min(size, width)
    ys, xs = _starts(height, th, overlap), _starts(width, tw, overlap)
    oy, ox = _owned(ys, th, height), _owned(xs, tw, width)
    return [Tile(y, x, (a, b, c, d)) for y, (a, b) in zip(ys, oy) for x, (c, d) in zip(xs, ox)]


def _tile_shape(height: int, width: int, size: int) -> tuple[int, int]:
    return min(size, height), min(size, width)


def owned_mask(tile: Tile, shape: tuple[int, int], stride: int = 1) -> np.ndarray:
    """float32[h, w]: 1 on the positions of a crop (of ``shape`` px) that ``tile`` owns, at a
    layer of ``stride`` (the crop's size divided by it, floored)."""
    h, w = shape[0] // stride, shape[1] // stride
    y0, y1, x0, x1 = tile.owned
    mask = np.zeros((h, w), np.float32)
    mask[(y0 - tile.y) // stride:(y1 - tile.y) // stride,
         (x0 - tile.x) // stride:(x1 - tile.x) // stride] = 1.0
    return mask


def _strides(layers: Sequence[str]) -> dict[str, int]:
    return {name: vgg19.min_input_side((name,)) for name in layers}


def _masks(tile: Tile, shape, layers) -> dict[str, np.ndarray]:
    return {name: owned_mask(tile, shape, s) for name, s in _strides(layers).items()}


@functools.partial(jax.jit, static_argnames=("layers",))
def gram_part(vgg: vgg19.VGG, crop: Array, masks: dict, layers: tuple[str, ...]) -> dict:
    """{layer: float32[C, C]}: Σ f fᵀ over the owned positions of ``crop`` float32[h, w, 3]
    (features computed on the whole crop)."""
    feats = vgg19.features(vgg, crop[None], layers)
    out = {}
    for name in layers:
        f = feats[name][0].astype(jnp.float32) * masks[name][..., None]
        f = f.reshape(-1, f.shape[-1])
        out[name] = f.T @ f
    return out


def gram_parts(vgg: vgg19.VGG, image: Array, tiles: Sequence[Tile], size: int,
               layers: Sequence[str]) -> list[dict]:
    """Every tile's `gram_part` of ``image`` float32[H, W, 3]."""
    shape = _tile_shape(image.shape[0], image.shape[1], size)
    layers = tuple(layers)
    return [gram_part(vgg, image[t.y:t.y + shape[0], t.x:t.x + shape[1]], _masks(t, shape, layers),
                      layers) for t in tiles]


def _tile_loss(crop, vgg, content, masks, others, style_targets, spec, counts):
    """The content and style terms of the positions one crop owns, with the whole image's Grams:
    the other tiles' contributions (constants) plus this crop's own. Summed over the tiles, these
    are the whole image's content and style terms; so are their gradients (scattered back)."""
    feats = vgg19.features(vgg, crop[None], spec.layers)
    loss = 0.0
    for i, name in enumerate(spec.content_layers):
        d = (feats[name][0].astype(jnp.float32) - content[name]) * masks[name][..., None]
        loss = loss + spec.content_weights[i] * jnp.sum(d * d) / counts[name]
    for i, name in enumerate(spec.style_layers):
        f = feats[name][0].astype(jnp.float32) * masks[name][..., None]
        f = f.reshape(-1, f.shape[-1])
        c = f.shape[-1]
        gram = (others[name] + f.T @ f) / counts[name]
        diff = gram - style_targets[name][0]
        # Each tile sees the whole style term; only its own share of it is counted: the sum
        # over tiles of these gradients is the whole term's gradient (each tile's contribution
        # enters the Gram linearly), and the value is reported once, by `loss`.
        loss = loss + spec.style_weights[i] * jnp.sum(diff * diff) / (c * c)
    return loss


_tile_grad = jax.jit(jax.grad(_tile_loss))


@jax.jit
def _tv_grad(image, weight):
    return jax.grad(lambda x: weight * losses.total_variation(x[None])[0])(image)


@functools.partial(jax.jit, static_argnames=("learning_rate",), donate_argnames=("image", "state"))
def _adam_step(image, state, grad, learning_rate: float):
    updates, state = optax.adam(learning_rate).update(grad, state, image)
    return jnp.clip(image + updates, 0.0, 1.0), state


def gradient(vgg: vgg19.VGG, image: Array, tiles: Sequence[Tile], size: int,
             contents: Sequence[dict], style_targets: dict, spec: losses.LossSpec,
             counts: dict) -> Array:
    """The gradient of the whole image's loss (content, Gram style, TV) at ``image``
    float32[H, W, 3], one crop's activations at a time: first every tile's Gram contribution,
    then each crop's gradient with the others' as constants, summed into place. Exact (to float
    rounding) wherever each crop reaches past its owned region by a layer's receptive-field
    radius; the content features are each crop's (`stylize` makes them)."""
    height, width = image.shape[:2]
    shape = _tile_shape(height, width, size)
    layers = tuple(spec.layers)
    parts = gram_parts(vgg, image, tiles, size, spec.style_layers)
    total = {k: sum(p[k] for p in parts) for k in spec.style_layers}
    grad = _tv_grad(image, spec.tv_weight)
    for t, part, content in zip(tiles, parts, contents):
        crop = image[t.y:t.y + shape[0], t.x:t.x + shape[1]]
        others = {k: total[k] - part[k] for k in spec.style_layers}
        g = _tile_grad(crop, vgg, content, _masks(t, shape, layers), others, style_targets, spec,
                       counts)
        grad = grad.at[t.y:t.y + shape[0], t.x:t.x + shape[1]].add(g)
    return grad


def stylize(vgg: vgg19.VGG, content: Array, styles: Sequence[Array], cfg: Config,
            size: int = 256, overlap: int = 64) -> np.ndarray:
    """One image in overlapping ``size`` x ``size`` tiles, on one device: content
    float32[H, W, 3] in [0, 1] (already at the output size) -> float32[H, W, 3].

    ``cfg.schedule.num_iterations`` Adam steps (``cfg.optimizer.step_size``) on the whole image,
    each step's gradient assembled tile by tile (`gradient`); ``cfg``'s loss settings (Gram style,
    neural-style normalization, absolute weights); a content or noise start. Memory: one crop's
    activations plus the whole image's Adam state (3 images). The style images are used at their
    given size."""
    spec = losses.LossSpec.from_config(cfg)
    vgg = optimize.prepared(vgg.with_pooling(cfg.network.pooling), spec)
    content = jnp.asarray(content, jnp.float32)
    height, width = content.shape[:2]
    shape = _tile_shape(height, width, size)
    tiles = grid(height, width, size, overlap)
    style_targets = losses.style_targets(
        vgg, [jnp.asarray(s, jnp.float32)[None] for s in styles],
        np.asarray(cfg.loss.blend_weights(len(styles)), np.float32), spec)
    counts = {}
    for name in spec.layers:
        h, w, c = vgg19.output_shape(name, height, width)
        counts[name] = np.float32(h * w * c)  # both terms' neural-style normalization
    contents = []
    for t in tiles:
        crop = content[t.y:t.y + shape[0], t.x:t.x + shape[1]]
        feats = vgg19.features(vgg, crop[None], spec.content_layers)
        contents.append({k: v[0].astype(jnp.float32) for k, v in feats.items()})
    image = (jnp.array(content) if cfg.start.init == "content" else
             jax.random.uniform(jax.random.key(cfg.start.seed), content.shape, jnp.float32))
    state = optax.adam(cfg.optimizer.step_size).init(image)
    for _ in range(cfg.schedule.num_iterations):
        grad = gradient(vgg, image, tiles, size, contents, style_targets, spec, counts)
        image, state = _adam_step(image, state, grad, cfg.optimizer.step_size)
    return np.asarray(image)
