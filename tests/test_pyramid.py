"""The pyramid preconditioner: its metric against explicit upsampling matrices built with PyTorch,
and preconditioned L-BFGS against plain L-BFGS on the pyramid levels (the reparameterization it
stands for)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxstyle import lbfgs, pyramid


def upsampling_matrix(shape: tuple[int, int], k: int) -> np.ndarray:
    """U_k as a float64 [H·W, h·w] matrix: torch's bilinear upsampling (align_corners=False) of
    every basis image of level k's size (⌈H/2ᵏ⌉, ⌈W/2ᵏ⌉)."""
    height, width = shape
    h, w = -(-height // 2**k), -(-width // 2**k)
    basis = torch.eye(h * w, dtype=torch.float64).reshape(h * w, 1, h, w)
    up = torch.nn.functional.interpolate(basis, size=(height, width), mode="bilinear",
                                         align_corners=False)
    return up.reshape(h * w, height * width).T.numpy()


def explicit_metric(shape, levels) -> np.ndarray:
    """Σ_{k < levels} U_k U_kᵀ for one channel, U_0 = I."""
    return sum(u @ u.T for u in (upsampling_matrix(shape, k) for k in range(levels)))


@pytest.mark.parametrize("shape, levels", [((8, 12), 3), ((16, 16), 4), ((12, 20), 2)])
def test_metric_is_the_sum_of_upsampling_products(shape, levels):
    x = np.random.default_rng(0).standard_normal(shape + (3,))
    got = np.asarray(pyramid.metric(jnp.asarray(x, jnp.float32), levels), np.float64)
    m = explicit_metric(shape, levels)
    want = np.stack([(m @ x[..., c].ravel()).reshape(shape) for c in range(3)], axis=-1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_one_level_is_the_identity():
    x = jax.random.normal(jax.random.key(1), (5, 7, 3))
    np.testing.assert_array_equal(pyramid.metric(x, 1), x)
    assert pyramid.as_preconditioner(1) is None


@pytest.mark.parametrize("shape", [(13, 7, 3), (5, 31, 2)])
def test_metric_is_symmetric_and_at_least_the_identity_at_odd_sizes(shape):
    ka, kb = jax.random.split(jax.random.key(2))
    a, b = jax.random.normal(ka, shape), jax.random.normal(kb, shape)
    ma, mb = pyramid.metric(a, 4), pyramid.metric(b, 4)
    assert ma.shape == shape
    np.testing.assert_allclose(jnp.vdot(a, mb), jnp.vdot(ma, b), rtol=1e-5)
    assert float(jnp.vdot(a, ma)) >= float(jnp.vdot(a, a))


def test_metric_amplifies_smooth_images_more_than_noise():
    smooth = jnp.ones((32, 32, 3))
    noise = jnp.asarray(np.random.default_rng(3).choice([-1.0, 1.0], (32, 32, 3)), jnp.float32)
    gain = lambda x: float(jnp.vdot(x, pyramid.metric(x, 4)) / jnp.vdot(x, x))  # noqa: E731
    assert gain(smooth) > 20 * gain(noise)  # a constant gets 1 + 4 + 16 + 64 = 85; noise ~3


def lbfgs_on_levels(grad_z, z, blocks, memory, steps):
    """An independent float64 NumPy L-BFGS in level coordinates z = (z₀, z₁, ...): the initial
    inverse Hessian is γₖ·I on block k, γₖ = sᵀy / (K·|yₖ|²) from the newest stored pair; a pair
    is stored when sᵀy > 1e-10; with no pair stored the step moves the finest level alone, by its
    gradient capped to unit L1 norm. Returns the iterates after each step."""
    pairs, previous, iterates, gamma = [], None, [], None
    for _ in range(steps):
        g = grad_z(z)
        if previous is not None:
            s, y = z - previous[0], g - previous[1]
            if s @ y > 1e-10:
                pairs = (pairs + [(s, y)])[-memory:]
                gamma = [s @ y / (len(blocks) * (y[b] @ y[b])) for b in blocks]
        previous = (z, g)
        if not pairs:
            d = np.zeros_like(z)
            d[blocks[0]] = g[blocks[0]] * min(1.0, 1.0 / np.abs(g[blocks[0]]).sum())
        else:
            q, alphas = g.copy(), []
            for s, y in reversed(pairs):
                alphas.append(s @ q / (s @ y))
                q = q - alphas[-1] * y
            d = np.concatenate([gk * q[b] for gk, b in zip(gamma, blocks)])
            for (s, y), a in zip(pairs, reversed(alphas)):
                d = d + (a - y @ d / (s @ y)) * s
        z = z - d
        iterates.append(z)
    return iterates


def test_preconditioned_lbfgs_is_lbfgs_on_the_pyramid_levels():
    """With H₀ = Σₖ γₖUₖUₖᵀ, L-BFGS on the image x takes the steps that L-BFGS with a block-scalar
    H₀ takes on pyramid levels z, x = Pz (P = [I, U₁, U₂]): an independent NumPy implementation
    in level coordinates, on an ill-conditioned quadratic, every step and through a wrapping
    memory."""
    shape, levels, memory, steps = (8, 8), 3, 4, 12
    n = shape[0] * shape[1]
    ups = [upsampling_matrix(shape, k) for k in range(levels)]
    p = np.concatenate(ups, axis=1)
    bounds = np.cumsum([0] + [u.shape[1] for u in ups])
    blocks = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
    rng = np.random.default_rng(4)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    a = (q * np.geomspace(1e-2, 1.0, n)) @ q.T * 1e-2
    b = rng.standard_normal(n) * 1e-4

    def grad_x(x):
        return a @ x - b

    x = rng.standard_normal(n) * 1e-2
    expected = lbfgs_on_levels(lambda z: p.T @ grad_x(p @ z),
                               np.concatenate([x, np.zeros(p.shape[1] - n)]), blocks, memory, steps)
    pre = lbfgs.scale_by_lbfgs(memory, precondition=pyramid.as_preconditioner(levels))
    as_image = lambda v: jnp.asarray(v.reshape(shape + (1,)), jnp.float32)  # noqa: E731
    state = pre.init(as_image(x))
    for z in expected:
        dx, state = pre.update(as_image(grad_x(x)), state, as_image(x))
        x = x - np.asarray(dx, np.float64).ravel()
        # float32 against float64: each step rounds to ~6e-8 and this quadratic's condition
        # number (100) bounds the amplification, ~1e-5; measured 5e-10 to 2e-5 over the 12 steps
        # (AVX-512 CPU). 1e-4 is 5x the largest.
        np.testing.assert_allclose(x, p @ z, rtol=0, atol=1e-4 * np.abs(p @ z).max())
    assert int(state.stored) > memory
    # The levels were scaled differently: one shared γ would not have given these steps.
    gamma = np.asarray(state.gamma)
    assert gamma.max() > 1.5 * gamma.min()
