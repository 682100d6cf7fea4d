"""Loss weights relative to the targets' scales, so the same weights balance alike whatever the
weights file's convention."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from jaxstyle.losses.masked import masked_total_variation, valid_count
from jaxstyle.losses.terms import sum_per_image, total_variation

if TYPE_CHECKING:
    from jaxstyle.losses.objective import LossSpec, Targets

Array = jax.Array


# Weights independent of the weights file's convention.


def target_scales(targets: Targets, spec: LossSpec, content_images: Array) -> dict[str, Array]:
    """The scale of each term's target, one per problem, from that problem's own targets only (so
    that an image's weights never depend on the other images of its batch):

    {"content": float32[P, len(content_layers)], the mean square of the content features;
    "style": float32[P, len(style_layers)], the mean square of the target Gram (for "w2": the
    target's second moment per channel, (tr Σₜ + ‖μₜ‖²)/C); "tv": float32[P], the content
    image's own `total_variation`, at least that of a mean |Δx| of 0.01}.

    targets: as from `targets` (content float32[P, h, w, C]; style [1, ...] shared by every
    problem, or [P, ...] one per problem); content_images: float32[P, H, W, 3].
    """
    num_problems, h, w, _ = content_images.shape

    def per_problem(x: Array) -> Array:  # float32[B or 1, ...] -> float32[P]: a mean per row
        means = jnp.mean(x.reshape(x.shape[0], -1), axis=1)
        return jnp.broadcast_to(means, (num_problems,))

    valid = targets.valid
    if valid is not None:  # a padded image: the mean square over the valid positions
        from jaxstyle import buckets

        valid = {**{n: valid[buckets.level(n)] for n in spec.content_layers},
                 "image": valid["level0"]}
        def content_scale(n):
            x = targets.content[n]
            return jnp.broadcast_to(sum_per_image(jnp.square(x) * valid[n][..., None])
                                    / (valid_count(valid[n]) * x.shape[-1]), (num_problems,))
    else:
        def content_scale(n):
            return per_problem(jnp.square(targets.content[n]))
    content = jnp.stack([content_scale(n) for n in spec.content_layers], axis=-1)
    if spec.style_loss == "w2":
        def scale(t):
            c = t.shape[-1]
            return per_problem((jnp.sum(t[:, :-1] ** 2, axis=(-2, -1))
                                + jnp.sum(t[:, -1] ** 2, axis=-1)) / c)
    else:
        def scale(t):
            return per_problem(jnp.square(t))
    style = jnp.stack([scale(targets.style[n]) for n in spec.style_layers], axis=-1)
    # Floored at a mean |Δx| of 1 % so that a flat content image does not make TV weigh infinitely.
    if valid is not None:
        tv = jnp.maximum(masked_total_variation(content_images, valid["image"]),
                         255.0**2 * valid_count(valid["image"]) * 1e-4)
    else:
        tv = jnp.maximum(total_variation(content_images), 255.0**2 * h * w * 1e-4)
    return {"content": content, "style": style, "tv": tv}


def relative_spec(spec: LossSpec, targets: Targets, content_images: Array) -> LossSpec:
    """``spec`` with each term divided by its target's scale (`target_scales`), so that a term's
    value is relative (≈ 1 for an image that shares nothing with its target) whatever the weights
    file's convention: caffe-convention features are ~50x torchvision's, their Gram terms ~50⁴x.

    The result is per problem (`LossSpec.per_problem`: weights float32[P, L], tv float32[P]),
    each problem's weights from its own content and targets: a batch equals its images alone.
    ``spec`` may be shared (float32[L]) or already per problem (float32[P, L])."""
    scales = target_scales(targets, spec, content_images)
    tiny = 1e-30
    return dataclasses.replace(
        spec, content_weights=spec.content_weights / jnp.maximum(scales["content"], tiny),
        style_weights=spec.style_weights / jnp.maximum(scales["style"], tiny),
        tv_weight=spec.tv_weight / jnp.maximum(scales["tv"], tiny))
