"""The assembled loss: `LossSpec` (layers static, weights runtime arrays), `Targets` (computed
once), `loss_terms` and `total_loss`."""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxstyle.config import Config
from jaxstyle.losses.guided import guided_style_loss, guided_style_targets
from jaxstyle.losses.masked import masked_terms
from jaxstyle.losses.temporal import temporal_loss
from jaxstyle.losses.terms import content_loss, gram_matrix, style_loss, total_variation
from jaxstyle.losses.w2 import packed_moments, w2_style_loss, w2_target
from jaxstyle.models import vgg19

Array = jax.Array


# The assembled loss.


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LossSpec:
    """What to compute (static) and with which weights (runtime arrays).

    content_weights: float32[len(content_layers)], already multiplied by the content weight.
    style_weights: float32[len(style_layers)], already multiplied by the style weight.
    tv_weight: float32[].
    temporal_weight: float32[] (float32[P] when stacked), the weight of `temporal_loss`; None (the
      default) for a still image: no temporal term and the pytree of a spec without it.
    """

    content_layers: tuple[str, ...] = dataclasses.field(metadata=dict(static=True))
    style_layers: tuple[str, ...] = dataclasses.field(metadata=dict(static=True))
    normalization: str = dataclasses.field(metadata=dict(static=True))
    content_weights: Array
    style_weights: Array
    tv_weight: Array
    # "gram" or "w2" (`w2_style_loss`); with "w2" the style targets are packed moments.
    style_loss: str = dataclasses.field(default="gram", metadata=dict(static=True))
    temporal_weight: Array | None = None

    @classmethod
    def from_config(cls, cfg: Config) -> "LossSpec":
        loss = cfg.loss
        content = loss.content_layer_weights or (1.0,) * len(loss.content_layers)
        style = loss.style_layer_weights or (1.0,) * len(loss.style_layers)
        # Host (NumPy) float32 arrays: built eagerly with jax.numpy, each of these products and
        # conversions was a program of its own, compiled (or loaded from the cache) in every
        # process. They become device arrays as arguments of the jitted functions that use them.
        return cls(
            content_layers=tuple(loss.content_layers), style_layers=tuple(loss.style_layers),
            normalization=loss.normalization,
            content_weights=np.float32(loss.content_weight) * np.asarray(content, np.float32),
            style_weights=np.float32(loss.style_weight) * np.asarray(style, np.float32),
            tv_weight=np.asarray(loss.tv_weight, np.float32),
            style_loss=loss.style_loss,
        )

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.content_layers + self.style_layers))

    @property
    def per_problem(self) -> bool:
        """True for a `stack`ed spec: every weight has a leading problem axis P."""
        return jnp.ndim(self.tv_weight) == 1

    @classmethod
    def stack(cls, specs: Sequence["LossSpec"]) -> "LossSpec":
        """One spec for P problems that share layers and normalization but not weights (a sweep):
        content_weights float32[P, Lc], style_weights float32[P, Ls], tv_weight float32[P].
        `optimize.run_steps` maps such a spec over the problem axis with the problems' states."""
        first = specs[0]
        for s in specs[1:]:
            if (s.content_layers, s.style_layers, s.normalization) != (
                    first.content_layers, first.style_layers, first.normalization):
                raise ValueError("stacked loss specs must share layers and normalization")
        # NumPy's stack for host weights (no program compiled), jax.numpy's for device ones.
        xp = np if all(isinstance(getattr(s, n), np.ndarray) for s in specs
                       for n in ("content_weights", "style_weights", "tv_weight")) else jnp
        return dataclasses.replace(
            first, **{name: xp.stack([getattr(s, name) for s in specs])
                      for name in ("content_weights", "style_weights", "tv_weight")
                      + (("temporal_weight",) if first.temporal_weight is not None else ())})


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Targets:
    """content: {layer: float32[B or 1, h, w, C]}; style: {layer: float32[1, C, C]} (blended).

    guidance: None (the plain style term), or {layer: float32[R, h, w]} for guided style (see
    `guided_targets`), where style is {layer: float32[1, R, C, C]}, one target per region.

    temporal: None (a still image), or {"image": float32[B, H, W, 3], the previous stylized frame
    warped onto this one, "mask": float32[B, H, W, 1], where it counts} for `temporal_loss`.
    """

    content: dict
    style: dict
    guidance: dict | None = None
    temporal: dict | None = None
    # A padded image (`jaxstyle.buckets`): None, or {"image": float32[B, H, W], layer:
    # float32[B, h, w]}, 1 where the photo is and 0 on its padding, at the image and at each layer
    # the loss reads. Every term then counts the valid positions only (`masked_*`).
    valid: dict | None = None


def style_grams(vgg: vgg19.VGG, style_image: Array, spec: LossSpec, dtype=jnp.float32) -> dict:
    """style_image: float32[1, H, W, 3] -> {layer: float32[1, C, C]} with ``spec``'s normalization."""
    feats = vgg19.features(vgg, style_image, spec.style_layers, dtype=dtype)
    if spec.style_loss == "w2":  # moments, blended linearly; made into W2 targets in `targets`
        return {name: packed_moments(feats[name]) for name in spec.style_layers}
    normalize = spec.normalization != "gatys"
    return {name: gram_matrix(feats[name], normalize=normalize) for name in spec.style_layers}


def targets(vgg: vgg19.VGG, content_images: Array, style_images: Sequence[Array],
            blend_weights: Sequence[float], spec: LossSpec, dtype=jnp.float32) -> Targets:
    """The loss targets, computed once.

    Args:
      content_images: float32[B, H, W, 3] in [0, 1].
      style_images: one float32[1, Hs, Ws, 3] per style (sizes may differ).
      blend_weights: one per style, summing to 1.

    Returns:
      `Targets` with the content features and the blend of the styles' Grams.
    """
    return Targets(content=content_targets(vgg, content_images, spec, dtype),
                   style=style_targets(vgg, style_images, blend_weights, spec, dtype))


def content_targets(vgg: vgg19.VGG, content_images: Array, spec: LossSpec, dtype=jnp.float32,
                    valid: dict | None = None) -> dict:
    """content_images: float32[B, H, W, 3] -> {layer: float32[B, h, w, C]} (`targets`' content).
    valid: a padded image's masks (`Targets.valid`)."""
    if valid is not None:
        from jaxstyle import buckets

        content = buckets.masked_features(vgg, content_images, spec.content_layers, valid, dtype)
    else:
        content = vgg19.features(vgg, content_images, spec.content_layers, dtype=dtype)
    return {k: v.astype(jnp.float32) for k, v in content.items()}


def style_targets(vgg: vgg19.VGG, style_images: Sequence[Array], blend_weights: Sequence[float],
                  spec: LossSpec, dtype=jnp.float32) -> dict:
    """{layer: float32[1, C, C]}: the blend of the styles' Grams (`targets`' style; for "w2" the
    W2 targets of the blended moments)."""
    grams = [style_grams(vgg, image, spec, dtype) for image in style_images]
    style = {name: sum(w * g[name] for w, g in zip(blend_weights, grams)) for name in spec.style_layers}
    if spec.style_loss == "w2":
        style = {name: w2_target(m) for name, m in style.items()}
    return style


def loss_terms(features: dict[str, Array], images: Array, targets: Targets, spec: LossSpec
               ) -> dict[str, Array]:
    """The weighted terms, each float32[B]: ``content``, ``style`` and ``tv``.

    features: `vgg19.features` of ``images`` at ``spec.layers``; images: float32[B, H, W, 3].
    """
    if targets.valid is not None:
        return masked_terms(features, images, targets, spec)
    content = sum(spec.content_weights[i] * content_loss(features[name], targets.content[name],
                                                         spec.normalization)
                  for i, name in enumerate(spec.content_layers))
    if targets.guidance is not None:  # guided Grams, one per region
        style = sum(spec.style_weights[i] * guided_style_loss(
            features[name], targets.style[name], targets.guidance[name], spec.normalization)
            for i, name in enumerate(spec.style_layers))
    else:
        one_style = w2_style_loss if spec.style_loss == "w2" else functools.partial(
            style_loss, normalization=spec.normalization)
        style = sum(spec.style_weights[i] * one_style(features[name], targets.style[name])
                    for i, name in enumerate(spec.style_layers))
    tv = spec.tv_weight * total_variation(images)
    terms = {"content": content, "style": style, "tv": tv}
    if targets.temporal is not None and spec.temporal_weight is not None:  # a film's frame
        terms["temporal"] = spec.temporal_weight * temporal_loss(
            images, targets.temporal["image"], targets.temporal["mask"])
    return terms


def total_loss(vgg: vgg19.VGG, images: Array, targets: Targets, spec: LossSpec,
               dtype=jnp.float32) -> tuple[Array, dict[str, Array]]:
    """The objective: (float32[] summed over the batch, {term: float32[B]}).

    Independent images stay independent: the gradient of the sum is each image's own gradient.
    """
    if targets.valid is not None:  # a padded image: the photo's own activations
        from jaxstyle import buckets

        feats = buckets.masked_features(vgg, images, spec.layers, targets.valid, dtype)
    else:
        feats = vgg19.features(vgg, images, spec.layers, dtype=dtype)
    terms = loss_terms(feats, images, targets, spec)
    return sum(jnp.sum(t) for t in terms.values()), terms


def guided_targets(vgg: vgg19.VGG, content_images: Array, style_images: Sequence[Array],
                   style_guidance: Sequence[dict | None], region_styles: Array,
                   content_guidance: dict, spec: LossSpec, dtype=jnp.float32) -> Targets:
    """`targets` for guided style: one target Gram per region, with the output's guidance.

    Args:
      content_images: float32[B, H, W, 3] in [0, 1].
      style_images: one float32[1, Hs, Ws, 3] per style.
      style_guidance: per style, {layer: float32[R, hs, ws]} (its masks at each style layer), or
        None for the whole style image in every region.
      region_styles: float32[R, S]: region r's target is Σ_s region_styles[r, s] · G_s,r.
      content_guidance: {layer: float32[R, h, w]}: the output's regions at each style layer.

    Returns:
      `Targets` with style {layer: float32[1, R, C, C]} and guidance ``content_guidance``.
    """
    return Targets(content=content_targets(vgg, content_images, spec, dtype),
                   style=guided_style_targets(vgg, style_images, style_guidance, region_styles,
                                              spec, dtype),
                   guidance=dict(content_guidance))
