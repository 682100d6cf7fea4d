"""The convolution formulations of `jaxstyle.kernels` against the plain ``lax`` ones: values and
all three gradients (custom VJP, flipped kernels, Winograd in bands), and pooling."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxstyle import kernels


def randn(shape, seed) -> jax.Array:
    """Standard normal float32 array (numpy's generator: no per-shape compilation)."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def rel(a, b) -> float:
    """Norm-relative difference of a to the reference b."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


# ------------------------------------------------------------------------------------------------
# Convolution and pooling.


def _plain_conv(x, kernel, bias):
    return lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                    dimension_numbers=("NHWC", "HWIO", "NHWC")) + bias


@pytest.mark.parametrize("precomputed", [False, True], ids=["flip-inside", "flip-kernel"])
def test_conv3x3_custom_vjp_equals_plain_grad(precomputed):
    x = randn((2, 7, 9, 3), 50)
    kernel = randn((3, 3, 3, 5), 51)
    bias = randn((5,), 52)
    cot = randn((2, 7, 9, 5), 53)
    grad_kernel = kernels.prepare_kernel(kernel) if precomputed else None

    out, vjp = jax.vjp(lambda x, k, b: kernels.conv3x3(x, k, b, grad_kernel), x, kernel, bias)
    out_plain, vjp_plain = jax.vjp(_plain_conv, x, kernel, bias)
    np.testing.assert_allclose(out, out_plain, rtol=1e-5, atol=1e-5)
    for got, want, name in zip(vjp(cot), vjp_plain(cot), ("x", "kernel", "bias")):
        assert got.shape == want.shape, name
        assert rel(got, want) < 1e-5, name
    # Under jit, through a scalar loss.
    f = lambda conv: lambda x, k, b: jnp.sum(jnp.tanh(conv(x, k, b)))  # noqa: E731
    got = jax.jit(jax.grad(f(lambda x, k, b: kernels.conv3x3(x, k, b, grad_kernel)), (0, 1, 2)))(
        x, kernel, bias)
    want = jax.grad(f(_plain_conv), (0, 1, 2))(x, kernel, bias)
    for a, b in zip(got, want):
        assert rel(a, b) < 1e-5


def test_flip_kernel_is_the_input_gradient_kernel():
    kernel = randn((3, 3, 4, 6), 6)
    flipped = kernels.flip_kernel(kernel)
    assert flipped.shape == (3, 3, 6, 4)
    g = randn((1, 5, 6, 6), 7)
    x = jnp.zeros((1, 5, 6, 4))
    _, vjp = jax.vjp(lambda x: _plain_conv(x, kernel, 0.0), x)
    assert rel(_plain_conv(g, flipped, 0.0), vjp(g)[0]) < 1e-5


@pytest.mark.parametrize("pooling", ["max", "avg"])
@pytest.mark.parametrize("shape", [(2, 8, 6, 3), (1, 7, 9, 4)], ids=["even", "odd"])
def test_pool2x2_equals_reduce_window(pooling, shape):
    x = randn(shape, 8)

    def plain(x):
        if pooling == "max":
            return lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        return lax.reduce_window(x, 0.0, lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID") / 4.0

    out = kernels.pool2x2(x, pooling)
    want = plain(x)
    assert out.shape == (shape[0], shape[1] // 2, shape[2] // 2, shape[3]) == want.shape
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)
    cot = randn(want.shape, 9)
    got_grad = jax.vjp(lambda x: kernels.pool2x2(x, pooling), x)[1](cot)[0]
    want_grad = jax.vjp(plain, x)[1](cot)[0]
    np.testing.assert_allclose(got_grad, want_grad, rtol=1e-6, atol=1e-6)
    # The odd last row/column gets no gradient (floor).
    if shape[1] % 2:
        assert not np.any(np.asarray(got_grad)[:, -1])


# Each dimension (channels, size parity, kernel transform inside or prepared, one band or one per
# tile row) takes both values; the un-prepared runs are slow (eager kernel transforms), so not all
# 16 combinations.
@pytest.mark.parametrize("channels,shape,precomputed,bands", [
    ((512, 512), (2, 6, 8), False, "one"),
    ((512, 512), (1, 5, 7), True, "per-row"),
    ((128, 256), (2, 6, 8), True, "one"),
    ((128, 256), (1, 5, 7), False, "per-row"),
    ((128, 256), (2, 6, 8), True, "per-row"),
], ids=["512-even-inside-one", "512-odd-prepared-rows", "256-even-prepared-one",
        "256-odd-inside-rows", "256-even-prepared-rows"])
def test_wide_convolution_winograd_path_equals_plain(channels, shape, precomputed, bands,
                                                      monkeypatch):
    # Wide convolutions take the Winograd F(2x2, 3x3) path on CPU; values and all three gradients
    # must equal the direct convolution's (odd sizes exercise the padded last tile, "per-row"
    # splits the image into one band of tiles per row, each with its own halo).
    cin, cout = channels
    assert kernels.use_winograd(cin, cout) and kernels.use_winograd(cout, cin)
    if bands == "per-row":
        monkeypatch.setattr(kernels, "WINOGRAD_BAND_BYTES", 1)
    b, h, w = shape
    x = randn((b, h, w, cin), 60)
    kernel = 0.02 * randn((3, 3, cin, cout), 61)
    bias = randn((cout,), 62)
    cot = randn((b, h, w, cout), 63)
    prepared = kernels.prepare_kernel(kernel) if precomputed else None
    out, vjp = jax.vjp(lambda x, k, b: kernels.conv3x3(x, k, b, prepared), x, kernel, bias)
    out_plain, vjp_plain = jax.vjp(_plain_conv, x, kernel, bias)
    assert rel(out, out_plain) < 1e-5
    for got, want in zip(vjp(cot), vjp_plain(cot)):
        assert rel(got, want) < 1e-5


def test_narrow_convolutions_stay_direct():
    # The first two blocks (<= 128 x 128 channels) would lose to the tile transforms.
    assert not kernels.use_winograd(64, 128)
    assert not kernels.use_winograd(128, 128)
