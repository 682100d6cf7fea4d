"""The terms of a padded image (shape buckets, `jaxstyle.buckets`): every term over the valid
positions only."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from jax import lax

from jaxstyle.losses.guided import scaled_guided_gram
from jaxstyle.losses.terms import sum_per_image
from jaxstyle.losses.w2 import w2_from_moments

if TYPE_CHECKING:
    from jaxstyle.losses.objective import LossSpec, Targets

Array = jax.Array


# A padded image (shape buckets, `jaxstyle.buckets`): every term over the valid positions only.
# ``mask``: float32[B or 1, h, w], 1 on the photo, 0 on the padding.


def valid_count(mask: Array) -> Array:
    return jnp.maximum(sum_per_image(mask), 1.0)


def masked_content_loss(features: Array, target: Array, mask: Array,
                        normalization: str = "neural-style") -> Array:
    """`content_loss` over the valid positions: the mean over them (neural-style), or half the
    sum (gatys). -> float32[B]."""
    diff = features.astype(jnp.float32) - target.astype(jnp.float32)
    sq = sum_per_image(jnp.broadcast_to(mask[..., None] * diff * diff, diff.shape))
    if normalization == "gatys":
        return 0.5 * sq
    return sq / (valid_count(mask) * diff.shape[-1])


def masked_gram(features: Array, mask: Array, normalize: bool = True) -> Array:
    """`gram_matrix` of the valid positions alone: Σ m·f·fᵀ / (C·n), n = Σ m (FᵀF with
    ``normalize`` False). -> float32[B, C, C]."""
    b, h, w, c = features.shape
    m = jnp.broadcast_to(mask, (b, h, w)).reshape(b, 1, h * w)
    scale = 1.0 / (c * valid_count(mask)) if normalize else jnp.ones((1,), jnp.float32)
    return scaled_guided_gram(features, lax.stop_gradient(m), jnp.broadcast_to(scale, (b,))[:, None])[:, 0]


def masked_style_loss(features: Array, target_gram: Array, mask: Array,
                      normalization: str = "neural-style") -> Array:
    """`style_loss` with `masked_gram` (gatys: N is the valid count). -> float32[B]."""
    c = features.shape[-1]
    diff = masked_gram(features, mask, normalize=normalization != "gatys") - target_gram
    sq = sum_per_image(diff * diff)
    if normalization == "gatys":
        return sq / (4.0 * c**2 * valid_count(mask) ** 2)
    return sq / (c * c)


def masked_w2_style_loss(features: Array, target: Array, mask: Array) -> Array:
    """`w2_style_loss` with the moments of the valid positions. -> float32[B]."""
    b, h, w, c = features.shape
    m = jnp.broadcast_to(mask, (b, h, w)).reshape(b, h * w, 1)
    n = valid_count(mask)
    mean = jnp.sum(features.reshape(b, h * w, c).astype(jnp.float32) * m, axis=1) / n[:, None]
    second = masked_gram(features, mask, normalize=True) * c
    return w2_from_moments(mean, second, target)


def masked_total_variation(images: Array, mask: Array) -> Array:
    """`total_variation` over neighbour pairs whose both pixels are valid. -> float32[B]."""
    m = mask[..., None]
    dy = (images[:, 1:] - images[:, :-1]) * (m[:, 1:] * m[:, :-1])
    dx = (images[:, :, 1:] - images[:, :, :-1]) * (m[:, :, 1:] * m[:, :, :-1])
    return 0.5 * 255.0**2 * (sum_per_image(dy * dy) + sum_per_image(dx * dx))


def masked_terms(features, images, targets: Targets, spec: LossSpec) -> dict[str, Array]:
    from jaxstyle import buckets

    valid = {name: targets.valid[buckets.level(name)] for name in spec.layers}
    valid["image"] = targets.valid["level0"]
    content = sum(spec.content_weights[i] * masked_content_loss(
        features[name], targets.content[name], valid[name], spec.normalization)
        for i, name in enumerate(spec.content_layers))
    if spec.style_loss == "w2":
        one_style = masked_w2_style_loss
    else:
        one_style = functools.partial(masked_style_loss, normalization=spec.normalization)
    style = sum(spec.style_weights[i] * one_style(features[name], targets.style[name],
                                                  valid[name])
                for i, name in enumerate(spec.style_layers))
    tv = spec.tv_weight * masked_total_variation(images, valid["image"])
    return {"content": content, "style": style, "tv": tv}
