"""The per-image building blocks: the Gram matrix (with a one-matmul backward) and the content,
style and total-variation terms, each float32[B] so a batch's images stay independent."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

Array = jax.Array


# Gram matrix: custom VJP. The plain backward goes through two matmuls and a transpose; this one is
# one matmul, F·(dG + dGᵀ)/k, which halves the Gram share of a CPU step.


def _gram_unscaled(features: Array) -> Array:
    b, h, w, c = features.shape
    f = features.reshape(b, h * w, c)
    return jnp.einsum("bnc,bnd->bcd", f, f, preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def scaled_gram(features: Array, scale: float) -> Array:
    return _gram_unscaled(features) * scale


def _gram_fwd(features, scale):
    return scaled_gram(features, scale), features


def _gram_bwd(scale, features, g):
    b, h, w, c = features.shape
    f = features.reshape(b, h * w, c)
    sym = ((g + jnp.swapaxes(g, 1, 2)) * scale).astype(features.dtype)
    df = jnp.einsum("bnc,bcd->bnd", f, sym, preferred_element_type=jnp.float32)
    return (df.reshape(features.shape).astype(features.dtype),)


scaled_gram.defvjp(_gram_fwd, _gram_bwd)


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
    return scaled_gram(features, 1.0 / (h * w * c) if normalize else 1.0)


# Per-image terms: each returns float32[B].


def sum_per_image(x: Array) -> Array:
    return jnp.sum(x.reshape(x.shape[0], -1), axis=1)


def content_loss(features: Array, target: Array, normalization: str = "neural-style") -> Array:
    """features: float[B, H, W, C]; target: float[B or 1, H, W, C] -> float32[B]."""
    diff = features.astype(jnp.float32) - target.astype(jnp.float32)
    sq = sum_per_image(jnp.broadcast_to(diff * diff, diff.shape))
    if normalization == "gatys":
        return 0.5 * sq
    return sq / (diff[0].size)


def style_loss(features: Array, target_gram: Array, normalization: str = "neural-style") -> Array:
    """features: float[B, H, W, C]; target_gram: float32[B or 1, C, C] (made with the same
    normalization) -> float32[B]."""
    _, h, w, c = features.shape
    gram = gram_matrix(features, normalize=normalization != "gatys")
    diff = gram - target_gram
    sq = sum_per_image(diff * diff)
    if normalization == "gatys":
        return sq / (4.0 * c**2 * (h * w) ** 2)
    return sq / (c * c)


def total_variation(images: Array) -> Array:
    """images: float32[B, H, W, 3] in [0, 1] -> float32[B]: ½·Σ(255·Δx)² over both directions."""
    dy = images[:, 1:, :, :] - images[:, :-1, :, :]
    dx = images[:, :, 1:, :] - images[:, :, :-1, :]
    return 0.5 * 255.0**2 * (sum_per_image(dy * dy) + sum_per_image(dx * dx))
