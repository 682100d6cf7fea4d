"""The pyramid preconditioner: its metric against explicit upsampling matrices built with PyTorch,
and preconditioned L-BFGS against plain L-BFGS on the pyramid levels (the reparameterization it
stands for)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxstyle import optimize, pyramid


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


def test_preconditioned_lbfgs_is_lbfgs_on_the_pyramid_levels():
    """With H₀ = γ·ΣUₖUₖᵀ, L-BFGS on the image x takes the steps that plain L-BFGS takes on
    pyramid levels z with x = Pz (P = [I, U₁, U₂]), on an ill-conditioned quadratic, every step
    and through a wrapping memory. The gradients are small enough that the first step's unit-L1
    cap (a separate heuristic, on the gradient in each space) is inactive in both."""
    shape, levels, memory = (8, 8), 3, 4
    n = shape[0] * shape[1]
    p = np.concatenate([upsampling_matrix(shape, k) for k in range(levels)], axis=1)
    rng = np.random.default_rng(4)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    a = (q * np.geomspace(1e-2, 1.0, n)) @ q.T * 1e-2
    b = rng.standard_normal(n) * 1e-4

    def grad_x(x):
        return a @ x - b

    plain = optimize.scale_by_lbfgs(memory)
    pre = optimize.scale_by_lbfgs(memory, precondition=pyramid.as_preconditioner(levels))
    as_image = lambda v: jnp.asarray(v.reshape(shape + (1,)), jnp.float32)  # noqa: E731
    x = rng.standard_normal(n) * 1e-2
    z = np.concatenate([x, np.zeros(p.shape[1] - n)])
    state_x, state_z = pre.init(as_image(x)), plain.init(jnp.asarray(z, jnp.float32))
    for step in range(10):
        gz = p.T @ grad_x(p @ z)
        assert step or max(np.abs(gz).sum(), np.abs(grad_x(x)).sum()) < 1
        dz, state_z = plain.update(jnp.asarray(gz, jnp.float32), state_z,
                                   jnp.asarray(z, jnp.float32))
        dx, state_x = pre.update(as_image(grad_x(x)), state_x, as_image(x))
        z = z - np.asarray(dz, np.float64)
        x = x - np.asarray(dx, np.float64).ravel()
        np.testing.assert_allclose(x, p @ z, rtol=0, atol=1e-4 * np.abs(p @ z).max())
    assert int(state_x.stored) == int(state_z.stored) > memory
