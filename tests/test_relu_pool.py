"""The ReLU and max pooling that keep less for the backward pass (issue 27): values and gradients
equal JAX's own `jax.nn.relu` and reshape-max pooling, ties and odd sizes included."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstyle import kernels


def _reference_pool(x):
    b, h, w, c = x.shape
    r = jax.nn.relu(x)[:, : h // 2 * 2, : w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, c)
    return r.max(axis=(2, 4))


def _with_ties(shape, seed=0):
    x = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    x[0, 0, 1] = x[0, 0, 0]  # tied positive or negative maxima
    x[0, 2:4, 2:4, 0] = 0.5  # four tied positive maxima
    x[0, 2:4, 0:2, 1] = 0.0  # a window of zeros: relu's gradient 0 there
    return jnp.asarray(x)


@pytest.mark.parametrize("shape", [(2, 6, 8, 5), (1, 7, 9, 3)])
def test_relu_max_pool_equals_jax(shape):
    x = _with_ties(shape)
    g = jnp.asarray(np.random.default_rng(1).normal(
        size=(shape[0], shape[1] // 2, shape[2] // 2, shape[3])).astype(np.float32))
    y, vjp = jax.vjp(kernels.relu_max_pool, x)
    y_ref, vjp_ref = jax.vjp(_reference_pool, x)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(vjp(g)[0], vjp_ref(g)[0])


@pytest.mark.parametrize("relu", [kernels.relu_masked, kernels.relu_kept])
def test_relus_equal_jax(relu):
    x = _with_ties((2, 5, 6, 4))
    g = jnp.asarray(np.random.default_rng(2).normal(size=x.shape).astype(np.float32))
    y, vjp = jax.vjp(relu, x)
    y_ref, vjp_ref = jax.vjp(jax.nn.relu, x)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(vjp(g)[0], vjp_ref(g)[0])
