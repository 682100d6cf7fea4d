"""Style-transfer losses: pure functions on arrays, safe under ``jit``, ``grad`` and ``vmap``.

Building blocks (`gram_matrix`, `content_loss`, `style_loss`, `total_variation`) return one value
per image (``float32[B]``) so batches of independent images stay independent. `LossSpec` carries the
layer names (static) and weights (runtime arrays: changing them does not recompile); `targets`
computes the content features and blended style Grams once; `total_loss` puts them together.

Two normalizations, side by side (C channels, N = H·W positions, F: float[B, N, C] features):

=============  ==================================  =====================================
term           "neural-style" (jcjohnson, default)  "gatys" (Gatys et al. 2016)
=============  ==================================  =====================================
Gram           FᵀF / (C·N)                         FᵀF
style layer    mean((G − A)²) over C²               Σ(G − A)² / (4·C²·N²)
content layer  mean((F − P)²) over N·C              ½·Σ(F − P)²
=============  ==================================  =====================================

Total variation is ½·Σ(255·Δx)² over horizontal and vertical neighbours (neural-style's TV on its
0–255 pixel scale), for both.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxstyle.models import vgg19
from jaxstyle.config import Config

Array = jax.Array


# ----------------------------------------------------------------------------------------------
# Gram matrix: custom VJP. The plain backward goes through two matmuls and a transpose; this one is
# one matmul, F·(dG + dGᵀ)/k, which halves the Gram share of a CPU step.


def _gram_unscaled(features: Array) -> Array:
    b, h, w, c = features.shape
    f = features.reshape(b, h * w, c)
    return jnp.einsum("bnc,bnd->bcd", f, f, preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _gram(features: Array, scale: float) -> Array:
    return _gram_unscaled(features) * scale


def _gram_fwd(features, scale):
    return _gram(features, scale), features


def _gram_bwd(scale, features, g):
    b, h, w, c = features.shape
    f = features.reshape(b, h * w, c)
    sym = ((g + jnp.swapaxes(g, 1, 2)) * scale).astype(features.dtype)
    df = jnp.einsum("bnc,bcd->bnd", f, sym, preferred_element_type=jnp.float32)
    return (df.reshape(features.shape).astype(features.dtype),)


_gram.defvjp(_gram_fwd, _gram_bwd)


def gram_matrix(features: Array, normalize: bool = True) -> Array:
    """Gram matrices of feature maps.

    Args:
      features: float[B, H, W, C] (any float dtype; accumulated in float32).
      normalize: divide by H·W·C (jcjohnson/neural-style, the PyTorch tutorial). False gives the
        raw FᵀF of Gatys et al.

    Returns:
      float32[B, C, C].
    """
    _, h, w, c = features.shape
    return _gram(features, 1.0 / (h * w * c) if normalize else 1.0)


# ----------------------------------------------------------------------------------------------
# Per-image terms: each returns float32[B].


def _sum_per_image(x: Array) -> Array:
    return jnp.sum(x.reshape(x.shape[0], -1), axis=1)


def content_loss(features: Array, target: Array, normalization: str = "neural-style") -> Array:
    """features: float[B, H, W, C]; target: float[B or 1, H, W, C] -> float32[B]."""
    diff = features.astype(jnp.float32) - target.astype(jnp.float32)
    sq = _sum_per_image(jnp.broadcast_to(diff * diff, diff.shape))
    if normalization == "gatys":
        return 0.5 * sq
    return sq / (diff[0].size)


def style_loss(features: Array, target_gram: Array, normalization: str = "neural-style") -> Array:
    """features: float[B, H, W, C]; target_gram: float32[B or 1, C, C] (made with the same
    normalization) -> float32[B]."""
    _, h, w, c = features.shape
    gram = gram_matrix(features, normalize=normalization != "gatys")
    diff = gram - target_gram
    sq = _sum_per_image(diff * diff)
    if normalization == "gatys":
        return sq / (4.0 * c**2 * (h * w) ** 2)
    return sq / (c * c)


def total_variation(images: Array) -> Array:
    """images: float32[B, H, W, 3] in [0, 1] -> float32[B]: ½·Σ(255·Δx)² over both directions."""
    dy = images[:, 1:, :, :] - images[:, :-1, :, :]
    dx = images[:, :, 1:, :] - images[:, :, :-1, :]
    return 0.5 * 255.0**2 * (_sum_per_image(dy * dy) + _sum_per_image(dx * dx))


# ----------------------------------------------------------------------------------------------
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
        content = cfg.content_layer_weights or (1.0,) * len(cfg.content_layers)
        style = cfg.style_layer_weights or (1.0,) * len(cfg.style_layers)
        # Host (NumPy) float32 arrays: built eagerly with jax.numpy, each of these products and
        # conversions was a program of its own, compiled (or loaded from the cache) in every
        # process. They become device arrays as arguments of the jitted functions that use them.
        return cls(
            content_layers=tuple(cfg.content_layers), style_layers=tuple(cfg.style_layers),
            normalization=cfg.normalization,
            content_weights=np.float32(cfg.content_weight) * np.asarray(content, np.float32),
            style_weights=np.float32(cfg.style_weight) * np.asarray(style, np.float32),
            tv_weight=np.asarray(cfg.tv_weight, np.float32),
            style_loss=cfg.style_loss,
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
        return _masked_terms(features, images, targets, spec)
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


# ----------------------------------------------------------------------------------------------
# Wasserstein-2 style loss between Gaussian fits of the feature distributions (as in
# crowsonkb/style-transfer-pytorch): W2²(N(μ, Σ), N(μₜ, Σₜ)) = ‖μ − μₜ‖² + tr Σ + tr Σₜ
# − 2·tr (Σₜ^½ Σ Σₜ^½)^½, divided by the channel count C.


def _sym(x: Array) -> Array:
    return 0.5 * (x + jnp.swapaxes(x, -1, -2))


@jax.custom_vjp
def sqrtm_psd(m: Array) -> Array:
    """The principal square root of symmetric positive semi-definite matrices, float32[..., C, C],
    by an eigendecomposition (negative rounding-error eigenvalues count as 0).

    Its VJP solves the Sylvester equation X·M̄ + M̄·X = Ḡ in the eigenbasis, M̄ = V[(VᵀḠV)ᵢⱼ /
    (sᵢ + sⱼ)]Vᵀ with sᵢ the square roots of the eigenvalues: no eigenvalue differences appear (the
    generic eigh gradient divides by them and fails on repeated eigenvalues). sᵢ + sⱼ is floored
    at 1e-3·max(s) (and 1e-12), where the true derivative of √ at 0 is infinite.
    """
    return _sqrtm_fwd(m)[0]


def _sqrtm_fwd(m):
    w, v = jnp.linalg.eigh(_sym(m))
    s = jnp.sqrt(jnp.maximum(w, 0.0))
    return (v * s[..., None, :]) @ jnp.swapaxes(v, -1, -2), (s, v)


def _sqrtm_bwd(res, g):
    s, v = res
    vt = jnp.swapaxes(v, -1, -2)
    floor = jnp.maximum(1e-3 * jnp.max(s, axis=-1, keepdims=True), 1e-12)[..., None]
    denom = jnp.maximum(s[..., :, None] + s[..., None, :], floor)
    return (v @ ((vt @ _sym(g) @ v) / denom) @ vt,)


sqrtm_psd.defvjp(_sqrtm_fwd, _sqrtm_bwd)


def feature_moments(features: Array) -> tuple[Array, Array]:
    """features: float[B, H, W, C] -> (mean float32[B, C], second moment E[ffᵀ] float32[B, C, C])
    over the H·W positions."""
    b, h, w, c = features.shape
    mean = jnp.mean(features.reshape(b, h * w, c).astype(jnp.float32), axis=1)
    return mean, _gram(features, 1.0 / (h * w))


def packed_moments(features: Array) -> Array:
    """float[1, H, W, C] -> float32[1, C + 1, C]: the second moment with the mean as the last row.
    Mixtures blend linearly in these (first and second moments), which is how styles are blended
    for the W2 loss."""
    mean, second = feature_moments(features)
    return jnp.concatenate([second, mean[:, None, :]], axis=1)


def w2_target(packed: Array) -> Array:
    """Blended `packed_moments` [1, C + 1, C] -> the W2 target [1, C + 1, C]: Σₜ^½ (the square
    root of the covariance E[ffᵀ] − μμᵀ) with the mean μ as the last row."""
    second, mean = packed[:, :-1], packed[:, -1]
    cov = second - mean[:, :, None] * mean[:, None, :]
    return jnp.concatenate([sqrtm_psd(cov), mean[:, None, :]], axis=1)


def w2_style_loss(features: Array, target: Array) -> Array:
    """Squared W2 distance between Gaussian fits, over C. features: float[B, H, W, C]; target:
    float32[B or 1, C + 1, C] from `w2_target` -> float32[B]."""
    mean, second = feature_moments(features)
    return w2_from_moments(mean, second, target)


def w2_from_moments(mean: Array, second: Array, target: Array) -> Array:
    """The squared W2 distance over C from an image's moments: mean float32[B, C], second moment
    float32[B, C, C]; target float32[B or 1, C + 1, C] from `w2_target` -> float32[B]."""
    c = mean.shape[-1]
    root, mean_t = target[:, :-1], target[:, -1]
    cov = second - mean[:, :, None] * mean[:, None, :]
    cross = jnp.trace(sqrtm_psd(root @ cov @ root), axis1=-2, axis2=-1)
    trace_t = jnp.sum(root * root, axis=(-2, -1))
    d2 = (jnp.sum((mean - mean_t) ** 2, axis=-1) + jnp.trace(cov, axis1=-2, axis2=-1) + trace_t
          - 2.0 * cross)
    return jnp.maximum(d2, 0.0) / c


# ----------------------------------------------------------------------------------------------
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
            return jnp.broadcast_to(_sum_per_image(jnp.square(x) * valid[n][..., None])
                                    / (_count(valid[n]) * x.shape[-1]), (num_problems,))
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
                         255.0**2 * _count(valid["image"]) * 1e-4)
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


# ----------------------------------------------------------------------------------------------
# Guided style (Gatys et al. 2017): one Gram per region of the image, the features weighted by the
# region's guidance. Additive: without guidance (`Targets.guidance` None) nothing above changes.


def guided_gram(features: Array, guidance: Array, normalize: bool = True) -> Array:
    """Per-region Gram matrices: the features weighted by each region's guidance, normalized by the
    region's area, so that a guidance of ones gives `gram_matrix` exactly.

    G_r = N · Σ_n g_rn² f_n f_nᵀ / Σ_n g_rn²  (÷ C·N more with ``normalize``), N = H·W.

    Args:
      features: float[B, H, W, C] (accumulated in float32).
      guidance: float32[R, H, W] or float32[B, R, H, W] in [0, 1], each region with a positive sum.
      normalize: as `gram_matrix`.
    Returns:
      float32[B, R, C, C].
    """
    b, h, w, c = features.shape
    g = jnp.asarray(guidance, jnp.float32)
    g = jnp.broadcast_to(g, (b,) + g.shape[-3:]).reshape(b, -1, h * w)
    g2 = lax.stop_gradient(g * g)
    area = jnp.maximum(jnp.sum(g2, axis=-1), 1e-12)  # [B, R]
    scale = (1.0 / c) if normalize else float(h * w)
    return _guided_gram(features, g2, scale / area)


# Custom VJP, as `_gram`: the backward is one matmul per region, Σ_r g²_r ⊙ F·(dG_r + dG_rᵀ)·k_r,
# where autodiff of the weighted einsum takes two. The guidance gets no gradient (a constant).
@jax.custom_vjp
def _guided_gram(features: Array, g2: Array, scale: Array) -> Array:
    """features [B, H, W, C]; g2: float32[B, R, N] squared guidance; scale: float32[B, R]."""
    b, h, w, c = features.shape
    f = features.reshape(b, h * w, c)
    weighted = f[:, None] * g2[..., None].astype(f.dtype)  # [B, R, N, C]
    gram = jnp.einsum("brnc,bnd->brcd", weighted, f, preferred_element_type=jnp.float32)
    return gram * scale[..., None, None]


def _guided_gram_fwd(features, g2, scale):
    return _guided_gram(features, g2, scale), (features, g2, scale)


def _guided_gram_bwd(res, dgram):
    features, g2, scale = res
    b, h, w, c = features.shape
    f = features.reshape(b, h * w, c)
    sym = ((dgram + jnp.swapaxes(dgram, -1, -2)) * scale[..., None, None]).astype(features.dtype)
    per_region = jnp.einsum("bnc,brcd->brnd", f, sym, preferred_element_type=jnp.float32)
    df = jnp.einsum("brn,brnd->bnd", g2, per_region)
    return (df.reshape(features.shape).astype(features.dtype), jnp.zeros_like(g2),
            jnp.zeros_like(scale))


_guided_gram.defvjp(_guided_gram_fwd, _guided_gram_bwd)


def guided_style_loss(features: Array, target_grams: Array, guidance: Array,
                      normalization: str = "neural-style") -> Array:
    """The guided style term of one layer, summed over regions -> float32[B].

    Each region's term is `style_loss`'s (same normalization) between its guided Gram and its
    target, times the region's share of the image Σ g² / N: a pixel inside a white region feels the
    same pull as in an unguided run, a grey one less, and a guidance of ones gives `style_loss`.

    features: float[B, H, W, C]; target_grams: float32[B or 1, R, C, C] (as `guided_targets`);
    guidance: float32[R, H, W] or [B, R, H, W].
    """
    b, h, w, c = features.shape
    grams = guided_gram(features, guidance, normalize=normalization != "gatys")
    diff = grams - target_grams
    sq = jnp.sum((diff * diff).reshape(b, grams.shape[1], -1), axis=-1)  # [B, R]
    g = jnp.asarray(guidance, jnp.float32)
    share = jnp.sum(jnp.broadcast_to(g * g, (b,) + g.shape[-3:]).reshape(b, -1, h * w), -1) / (h * w)
    if normalization == "gatys":
        sq = sq / (4.0 * c**2 * (h * w) ** 2)
    else:
        sq = sq / (c * c)
    return jnp.sum(share * sq, axis=-1)


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


def guided_style_targets(vgg: vgg19.VGG, style_images: Sequence[Array],
                         style_guidance: Sequence[dict | None], region_styles: Array,
                         spec: LossSpec, dtype=jnp.float32) -> dict:
    """{layer: float32[1, R, C, C]}: `guided_targets`' style, one target Gram per region."""
    normalize = spec.normalization != "gatys"
    num_regions = region_styles.shape[0]
    style = {}
    per_style = []
    for image, masks in zip(style_images, style_guidance):
        feats = vgg19.features(vgg, image, spec.style_layers, dtype=dtype)
        per_style.append({
            name: (guided_gram(feats[name], masks[name], normalize) if masks is not None
                   else jnp.repeat(gram_matrix(feats[name], normalize)[:, None], num_regions, 1))
            for name in spec.style_layers})
    for name in spec.style_layers:
        stacked = jnp.stack([g[name][0] for g in per_style], axis=1)  # [R, S, C, C]
        style[name] = jnp.einsum("rs,rscd->rcd", region_styles, stacked)[None]
    return style


# ----------------------------------------------------------------------------------------------
# Temporal consistency of a film (Ruder et al. 2016, "Artistic style transfer for videos", eq. 7).
# Additive: without `Targets.temporal` (and `LossSpec.temporal_weight`) nothing above changes.


def temporal_loss(images: Array, warped: Array, mask: Array) -> Array:
    """Ruder et al.'s short-term temporal term, Σ c·(x − ω)² / (H·W·3), on the [0, 1] scale.

    The sum runs over pixels and channels; ω is the previous stylized frame warped onto this one
    (`jaxstyle.warp.warp`) and c the weights of `jaxstyle.warp.occlusion_mask` (0 where the
    previous frame does not see the pixel). On [0, 1] the term is 255² ≈ 6.5e4 times smaller than
    on neural-style's 0–255 scale, where Ruder et al. weigh it 1e3 (see `jaxstyle.video`).

    Args:
      images: float32[B, H, W, 3].
      warped: float32[B or 1, H, W, 3].
      mask: float32[B or 1, H, W, 1] (or [.., H, W, 3]) in [0, 1].

    Returns:
      float32[B].
    """
    diff = images.astype(jnp.float32) - warped.astype(jnp.float32)
    weighted = jnp.broadcast_to(mask.astype(jnp.float32) * diff * diff, images.shape)
    _, h, w, c = images.shape
    return _sum_per_image(weighted) / (h * w * c)


# ----------------------------------------------------------------------------------------------
# A padded image (shape buckets, `jaxstyle.buckets`): every term over the valid positions only.
# ``mask``: float32[B or 1, h, w], 1 on the photo, 0 on the padding.


def _count(mask: Array) -> Array:
    return jnp.maximum(_sum_per_image(mask), 1.0)


def masked_content_loss(features: Array, target: Array, mask: Array,
                        normalization: str = "neural-style") -> Array:
    """`content_loss` over the valid positions: the mean over them (neural-style), or half the
    sum (gatys). -> float32[B]."""
    diff = features.astype(jnp.float32) - target.astype(jnp.float32)
    sq = _sum_per_image(jnp.broadcast_to(mask[..., None] * diff * diff, diff.shape))
    if normalization == "gatys":
        return 0.5 * sq
    return sq / (_count(mask) * diff.shape[-1])


def masked_gram(features: Array, mask: Array, normalize: bool = True) -> Array:
    """`gram_matrix` of the valid positions alone: Σ m·f·fᵀ / (C·n), n = Σ m (FᵀF with
    ``normalize`` False). -> float32[B, C, C]."""
    b, h, w, c = features.shape
    m = jnp.broadcast_to(mask, (b, h, w)).reshape(b, 1, h * w)
    scale = 1.0 / (c * _count(mask)) if normalize else jnp.ones((1,), jnp.float32)
    return _guided_gram(features, lax.stop_gradient(m), jnp.broadcast_to(scale, (b,))[:, None])[:, 0]


def masked_style_loss(features: Array, target_gram: Array, mask: Array,
                      normalization: str = "neural-style") -> Array:
    """`style_loss` with `masked_gram` (gatys: N is the valid count). -> float32[B]."""
    c = features.shape[-1]
    diff = masked_gram(features, mask, normalize=normalization != "gatys") - target_gram
    sq = _sum_per_image(diff * diff)
    if normalization == "gatys":
        return sq / (4.0 * c**2 * _count(mask) ** 2)
    return sq / (c * c)


def masked_w2_style_loss(features: Array, target: Array, mask: Array) -> Array:
    """`w2_style_loss` with the moments of the valid positions. -> float32[B]."""
    b, h, w, c = features.shape
    m = jnp.broadcast_to(mask, (b, h, w)).reshape(b, h * w, 1)
    n = _count(mask)
    mean = jnp.sum(features.reshape(b, h * w, c).astype(jnp.float32) * m, axis=1) / n[:, None]
    second = masked_gram(features, mask, normalize=True) * c
    return w2_from_moments(mean, second, target)


def masked_total_variation(images: Array, mask: Array) -> Array:
    """`total_variation` over neighbour pairs whose both pixels are valid. -> float32[B]."""
    m = mask[..., None]
    dy = (images[:, 1:] - images[:, :-1]) * (m[:, 1:] * m[:, :-1])
    dx = (images[:, :, 1:] - images[:, :, :-1]) * (m[:, :, 1:] * m[:, :, :-1])
    return 0.5 * 255.0**2 * (_sum_per_image(dy * dy) + _sum_per_image(dx * dx))


def _masked_terms(features, images, targets: Targets, spec: LossSpec) -> dict[str, Array]:
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
