"""Guided style (Gatys et al. 2017): one Gram per region of the image."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from jaxstyle.losses.terms import gram_matrix
from jaxstyle.models import vgg19

if TYPE_CHECKING:
    from jaxstyle.losses.objective import LossSpec

Array = jax.Array


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
    return scaled_guided_gram(features, g2, scale / area)


# Custom VJP, as `_gram`: the backward is one matmul per region, Σ_r g²_r ⊙ F·(dG_r + dG_rᵀ)·k_r,
# where autodiff of the weighted einsum takes two. The guidance gets no gradient (a constant).
@jax.custom_vjp
def scaled_guided_gram(features: Array, g2: Array, scale: Array) -> Array:
    """features [B, H, W, C]; g2: float32[B, R, N] squared guidance; scale: float32[B, R]."""
    b, h, w, c = features.shape
    f = features.reshape(b, h * w, c)
    weighted = f[:, None] * g2[..., None].astype(f.dtype)  # [B, R, N, C]
    gram = jnp.einsum("brnc,bnd->brcd", weighted, f, preferred_element_type=jnp.float32)
    return gram * scale[..., None, None]


def _guided_gram_fwd(features, g2, scale):
    return scaled_guided_gram(features, g2, scale), (features, g2, scale)


def _guided_gram_bwd(res, dgram):
    features, g2, scale = res
    b, h, w, c = features.shape
    f = features.reshape(b, h * w, c)
    sym = ((dgram + jnp.swapaxes(dgram, -1, -2)) * scale[..., None, None]).astype(features.dtype)
    per_region = jnp.einsum("bnc,brcd->brnd", f, sym, preferred_element_type=jnp.float32)
    df = jnp.einsum("brn,brnd->bnd", g2, per_region)
    return (df.reshape(features.shape).astype(features.dtype), jnp.zeros_like(g2),
            jnp.zeros_like(scale))


scaled_guided_gram.defvjp(_guided_gram_fwd, _guided_gram_bwd)


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
