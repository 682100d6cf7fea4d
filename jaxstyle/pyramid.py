"""An image pyramid as a preconditioner for L-BFGS: the slow, large-scale part of the image made
as quick to optimize as its details.

In pixel space a gradient step moves every pixel on its own, so the loss's large-scale structure
(smooth areas, layout, colour regions) converges many steps after the details. Optimizing instead
a Laplacian-style pyramid of levels, image = Σₖ Uₖ zₖ (Uₖ upsamples level k, 2ᵏ times smaller,
bilinearly), gives each coarse level a gradient that sums its 4ᵏ pixels. For L-BFGS that
reparameterization is the same as keeping the image as the variable and starting the
inverse-Hessian estimate from Σₖ γₖ Uₖ Uₖᵀ instead of γ·I (the iterates map one to one, and the
curvature pairs keep image size: the memory stays what it was).

Each level has its own scale γₖ (block-scalar initial Hessian in level coordinates). With one
shared γ = sᵀy / yᵀMy (M = Σₖ UₖUₖᵀ), the coarse levels, amplified up to Σ 4ᵏ times, set γ, and the
fine part of every early step came out hundreds of times too small: with jaxstyle's relative loss
weights the pyramid then lost to plain L-BFGS for its first ~150 steps (docs/performance.md).
"""

from __future__ import annotations

import functools
from typing import Callable

import jax

Array = jax.Array


def level_shape(shape: tuple[int, ...], k: int) -> tuple[int, ...]:
    """The shape [⌈H/2ᵏ⌉, ⌈W/2ᵏ⌉, C] of level k of an image of ``shape`` [H, W, C]."""
    height, width, channels = shape
    return (-(-height // 2**k), -(-width // 2**k), channels)


def upsample(level: Array, shape: tuple[int, ...]) -> Array:
    """Uₖ: float32[h, w, C] -> float32[*shape], bilinear."""
    return jax.image.resize(level, shape, "linear")


def level_product(x: Array, k: int) -> Array:
    """Uₖ Uₖᵀ x: x's sum over level k's blocks, upsampled back (k = 0: x itself).
    x: float32[H, W, C] (one image; vmap for several)."""
    if k == 0:
        return x
    small = jax.ShapeDtypeStruct(level_shape(x.shape, k), x.dtype)
    up = lambda z: upsample(z, x.shape)  # noqa: E731
    (down,) = jax.linear_transpose(up, small)(x)
    return up(down)


def metric(x: Array, levels: int) -> Array:
    """M x = Σ_{k < levels} Uₖ Uₖᵀ x (U₀ = identity): symmetric, positive definite, and the identity
    for ``levels`` = 1. x: float32[H, W, C] (one image; vmap for several)."""
    return sum(level_product(x, k) for k in range(levels))


def as_preconditioner(levels: int) -> tuple[Callable[[Array], Array], ...] | None:
    """The blocks UₖUₖᵀ, k < ``levels``, of the initial inverse Hessian Σₖ γₖ UₖUₖᵀ that
    `lbfgs.scale_by_lbfgs` scales one by one; None for 1 level (plain L-BFGS)."""
    if levels <= 1:
        return None
    return tuple(functools.partial(level_product, k=k) for k in range(levels))
