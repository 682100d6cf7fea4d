"""Spatial guidance: where each style goes (Gatys et al. 2017, "Controlling Perceptual Factors in
Neural Style Transfer", section 4). Pure: arrays in, arrays out.

A `Guidance` says, for R regions of the output, how much each output pixel belongs to the region
(``content_masks``: float32[R, H, W] in [0, 1], any size: resized to the content), which style
images supply the region's statistics (``region_styles``: float32[R, S], rows summing to 1) and
which part of each style image they are taken from (``style_masks``: per style, float32[R, Hs, Ws]
or None for the whole image).

Two ways to build one:
  * `from_masks`: one mask per style image (white where that style applies, grey a partial weight;
    titu1994's convention), optionally a region mask per style image;
  * `from_maps`: colour-coded semantic maps (neural-doodle's way): every colour of the content map
    that a style map also has becomes a region pair.

The masks are carried to each style layer's resolution by resizing (Gatys et al.'s "simple" mode),
once per scale (`layer_masks`), never inside the optimization loop.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxstyle.errors import JaxstyleError, JaxstyleWarning
from jaxstyle.models import vgg19

Array = jax.Array

# Two map colours closer than this (Euclidean, RGB in [0, 1]) are the same label: JPEG noise and
# anti-aliased edges stay well under it, distinct doodle colours well over it.
MAP_TOLERANCE = 0.15
# A colour must cover at least this fraction (0.5%) of a map to be a label: JPEG edges and
# anti-aliasing make many stray in-between colours, each on a few pixels.
MIN_LABEL_FRACTION = 0.005
# Colours are first counted in bins of this width per channel, then bins are merged.
_BIN = 1.0 / 16


@dataclasses.dataclass(frozen=True)
class Guidance:
    """Regions of the output and the style statistics each takes.

    content_masks: float32[R, H, W] in [0, 1] (any H, W: resized to the content).
    region_styles: float32[R, S] >= 0, each row summing to 1: region r's target Gram is
      Σ_s region_styles[r, s] · Gram(style s within style_masks[s][r]).
    style_masks: one entry per style image: float32[R, Hs, Ws] in [0, 1] (any size), or None for
      the whole style image in every region.
    labels: a name per region for messages (a colour like ``#ff0000`` or ``mask 1``).
    """

    content_masks: np.ndarray
    region_styles: np.ndarray
    style_masks: tuple
    labels: tuple[str, ...] = ()

    @property
    def num_regions(self) -> int:
        return int(self.content_masks.shape[0])


def _check_mask(mask: np.ndarray, name: str) -> np.ndarray:
    mask = np.clip(np.asarray(mask, np.float32), 0.0, 1.0)
    if mask.ndim != 2:
        raise JaxstyleError(f"{name} must be a 2-D array [H, W], got shape {mask.shape}")
    if not mask.max() > 0:
        raise JaxstyleError(f"{name} is all black, so its style would go nowhere; paint white "
                            "where the style should apply")
    return mask


def from_masks(num_styles: int, masks: Sequence[np.ndarray] | None = None,
               region_masks: Sequence[np.ndarray] | None = None,
               blend_weights: Sequence[float] | None = None) -> Guidance:
    """Guidance from one output mask per style (and/or one region mask per style image).

    Args:
      num_styles: S, the number of style images.
      masks: S float[H, W] in [0, 1]: where style s applies in the output (any size). None: no
        output masks; the styles are blended over the whole output by ``blend_weights``.
      region_masks: S float[Hs, Ws] in [0, 1]: which part of style image s its statistics come from.
      blend_weights: S weights summing to 1 (only used without ``masks``).
    Raises:
      JaxstyleError: a count differs from ``num_styles``, or a mask is all black.
    """
    for given, what in ((masks, "style masks"), (region_masks, "style region masks")):
        if given is not None and len(given) != num_styles:
            raise JaxstyleError(f"{len(given)} {what} given for {num_styles} style images; give "
                                "one per style image")
    regions = None if region_masks is None else [
        _check_mask(m, f"style region mask {i + 1}") for i, m in enumerate(region_masks)]
    if masks is not None:
        content = [_check_mask(m, f"style mask {i + 1}") for i, m in enumerate(masks)]
        shape = content[0].shape
        content = np.stack([m if m.shape == shape else _resize_np(m, shape) for m in content])
        weights = np.eye(num_styles, dtype=np.float32)
        labels = tuple(f"mask {i + 1}" for i in range(num_styles))
        style = tuple(None for _ in range(num_styles)) if regions is None else tuple(
            np.stack([r if j == i else np.ones_like(r) for j in range(num_styles)])
            for i, r in enumerate(regions))
    else:
        blend = np.asarray(blend_weights if blend_weights is not None
                           else [1.0 / num_styles] * num_styles, np.float32)
        content = np.ones((1, 1, 1), np.float32)
        weights = blend[None]
        labels = ("everywhere",)
        style = tuple(None for _ in range(num_styles)) if regions is None else tuple(
            r[None] for r in regions)
    return Guidance(content, weights, style, labels)


def _resize_np(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return np.asarray(resize_masks(jnp.asarray(mask)[None], *shape)[0])


# ---------------------------------------------------------------------------------------- maps


def palette(image: np.ndarray, tolerance: float = MAP_TOLERANCE,
            min_fraction: float = MIN_LABEL_FRACTION) -> np.ndarray:
    """The distinct colours of a colour-coded map, most frequent first: float32[K, 3].

    Pixels are counted in bins; a bin holding at least ``min_fraction`` of the map becomes a colour
    (its mean) unless it lies within ``tolerance`` of a more frequent one (noise) or of the segment
    between two more frequent ones (the blend along their border). So a label whose colour is a mix
    of two larger labels' colours is not found: give labels distinct colours.
    image: float[H, W, 3] in [0, 1].
    """
    pixels = np.asarray(image, np.float32).reshape(-1, 3)
    bins = np.minimum((pixels / _BIN).astype(np.int64), int(round(1 / _BIN)) - 1)
    keys = (bins[:, 0] * 256 + bins[:, 1]) * 256 + bins[:, 2]
    unique, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    sums = np.zeros((len(unique), 3), np.float64)
    np.add.at(sums, inverse.reshape(-1), pixels)
    colours: list[np.ndarray] = []
    for k in np.argsort(-counts, kind="stable"):
        if counts[k] < min_fraction * len(pixels):
            break
        mean = sums[k] / counts[k]
        if all(np.linalg.norm(mean - c) > tolerance for c in colours) and not _is_blend(
                mean, colours, tolerance):
            colours.append(mean)
    return np.asarray(colours, np.float32).reshape(-1, 3)


def _is_blend(colour: np.ndarray, colours: list[np.ndarray], tolerance: float) -> bool:
    """Whether ``colour`` lies within ``tolerance`` of the segment between two (more frequent)
    colours: a JPEG's chroma subsampling and anti-aliasing mix two labels along their border."""
    for i, a in enumerate(colours):
        for b in colours[i + 1:]:
            t = np.clip(np.dot(colour - a, b - a) / max(np.dot(b - a, b - a), 1e-12), 0.0, 1.0)
            if np.linalg.norm(a + t * (b - a) - colour) <= tolerance:
                return True
    return False


def label_masks(image: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """One-hot masks float32[K, H, W]: each pixel of ``image`` float[H, W, 3] belongs to its
    nearest colour of ``colours`` float[K, 3]."""
    image = np.asarray(image, np.float32)
    dist = np.linalg.norm(image[None] - np.asarray(colours, np.float32)[:, None, None], axis=-1)
    return (np.argmin(dist, axis=0)[None] == np.arange(len(colours))[:, None, None]).astype(
        np.float32)


def _hex(colour: np.ndarray) -> str:
    return "#" + "".join(f"{int(round(float(c) * 255)):02x}" for c in colour)


def from_maps(content_map: np.ndarray, style_maps: Sequence[np.ndarray],
              blend_weights: Sequence[float] | None = None,
              tolerance: float = MAP_TOLERANCE) -> Guidance:
    """Guidance from colour-coded semantic maps: every colour of the content map that at least one
    style map has (within ``tolerance``) is a region, styled by the same-coloured regions of those
    style images (blended by ``blend_weights`` where several have it).

    Args:
      content_map: float[H, W, 3] in [0, 1] (any size: resized to the content).
      style_maps: one float[Hs, Ws, 3] per style image, the same size as it (or resized to it).
    Warns:
      JaxstyleWarning: naming the content-map colours no style map has (those areas keep the
        content, with no style).
    Raises:
      JaxstyleError: no colour of the content map is in any style map.
    """
    num_styles = len(style_maps)
    blend = np.asarray(blend_weights if blend_weights is not None
                       else [1.0 / num_styles] * num_styles, np.float32)
    colours = palette(content_map, tolerance)
    style_palettes = [palette(m, tolerance) for m in style_maps]
    content_masks = label_masks(content_map, colours)
    per_style = [label_masks(m, p) for m, p in zip(style_maps, style_palettes)]
    keep, weights, style_rows = [], [], [[] for _ in range(num_styles)]
    missing = []
    for k, colour in enumerate(colours):
        row = np.zeros(num_styles, np.float32)
        for s, pal in enumerate(style_palettes):
            dist = np.linalg.norm(pal - colour, axis=-1) if len(pal) else np.array([np.inf])
            j = int(np.argmin(dist))
            if dist[j] <= tolerance:
                row[s] = blend[s]
                style_rows[s].append(per_style[s][j])
            else:
                style_rows[s].append(np.zeros(style_maps[s].shape[:2], np.float32))
        if row.sum() > 0:
            keep.append(k)
            weights.append(row / row.sum())
        else:
            missing.append(_hex(colour))
            for rows in style_rows:
                rows.pop()
    if not keep:
        raise JaxstyleError(
            f"the content map's colours ({', '.join(_hex(c) for c in colours)}) are in no style map "
            f"(theirs: {'; '.join(', '.join(map(_hex, p)) for p in style_palettes)}); paint the "
            "regions that should match in the same colours")
    if missing:
        warnings.warn(f"content-map colour(s) {', '.join(missing)} are in no style map; those areas "
                      "keep the content, with no style", JaxstyleWarning, stacklevel=2)
    return Guidance(content_masks=content_masks[keep], region_styles=np.stack(weights),
                    style_masks=tuple(np.stack(rows) for rows in style_rows),
                    labels=tuple(_hex(colours[k]) for k in keep))


# ------------------------------------------------------------------------- masks at each layer


def resize_masks(masks: Array, height: int, width: int) -> Array:
    """float[..., H, W] -> float32[..., height, width], bilinear (area-averaged when shrinking),
    clipped to [0, 1]. Jittable."""
    masks = jnp.asarray(masks, jnp.float32)
    if masks.shape[-2:] == (height, width):
        return masks
    return jnp.clip(jax.image.resize(masks, masks.shape[:-2] + (height, width), "linear"), 0.0, 1.0)


def layer_masks(masks: Array, height: int, width: int, layers: Sequence[str]) -> dict[str, Array]:
    """The guidance of each layer for an image of ``height`` x ``width``: ``masks`` float[R, Hm, Wm]
    resized to every layer's feature size -> {layer: float32[R, h, w]} (Gatys et al.'s "simple"
    mode). Computed once per scale."""
    out = {}
    for name in layers:
        h, w, _ = vgg19.output_shape(name, height, width)
        out[name] = resize_masks(masks, h, w)
    return out
