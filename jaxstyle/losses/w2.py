"""The Wasserstein-2 style term between Gaussian fits of the features (as in
crowsonkb/style-transfer-pytorch)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxstyle.losses.terms import scaled_gram

Array = jax.Array


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
    return mean, scaled_gram(features, 1.0 / (h * w))


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
