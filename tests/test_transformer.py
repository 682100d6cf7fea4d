"""The transformation network against an independent PyTorch implementation with identical weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import torch_fast
from jaxstyle.errors import ConfigError
from jaxstyle.models import transformer


def _randomized(params, seed):
    """Non-trivial norm scales/biases (init makes them 1 and 0), so the test sees them used."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: jnp.asarray(np.asarray(a) + 0.1 * rng.standard_normal(a.shape),
                                              jnp.float32), params)


@pytest.fixture(scope="module")
def params():
    return _randomized(transformer.init(jax.random.key(0), width=0.25), 1)


def test_standard_network_has_the_reference_parameter_count():
    shapes = jax.eval_shape(transformer.TransformerNet().init, jax.random.key(0),
                            jnp.zeros((1, 16, 16, 3)))
    assert sum(int(np.prod(a.shape)) for a in jax.tree.leaves(shapes)) == 1_679_235
    assert transformer.channels_for_width(0.5) == 16


@pytest.mark.torch
def test_forward_matches_torch(params):
    images = np.random.default_rng(2).random((2, 24, 32, 3), dtype=np.float32)
    ours = np.asarray(jax.jit(transformer.forward)(params, images))
    ref = torch_fast.forward(jax.tree.map(np.asarray, params), images)
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.torch
def test_any_size_is_padded_and_cropped_back(params):
    images = np.random.default_rng(3).random((1, 18, 21, 3), dtype=np.float32)
    out = np.asarray(jax.jit(transformer.apply)(params, images))
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
    # The reference: reflect-pad to multiples of 4 at the bottom/right, run, crop.
    padded = np.pad(images, ((0, 0), (0, 2), (0, 3), (0, 0)), mode="reflect")
    ref = np.clip(torch_fast.forward(jax.tree.map(np.asarray, params), padded), 0, 1)[:, :18, :21]
    np.testing.assert_allclose(out, ref, atol=1e-4)
    with pytest.raises(ConfigError, match="at least 8x8"):
        transformer.apply(params, images[:, :6])


@pytest.mark.torch
def test_gradients_match_torch(params):
    """d(sum of output · weights)/d(params) against torch autograd in float64."""
    import torch

    images = np.random.default_rng(4).random((1, 16, 16, 3), dtype=np.float32)
    probe = np.random.default_rng(5).standard_normal((1, 16, 16, 3)).astype(np.float32)
    grads = jax.jit(jax.grad(lambda p: jnp.sum(transformer.forward(p, images) * probe)))(params)
    leaves = {jax.tree_util.keystr(k): torch.tensor(np.asarray(v, np.float64), requires_grad=True)
              for k, v in jax.tree_util.tree_leaves_with_path(params)}
    tparams = jax.tree_util.tree_map_with_path(lambda k, _: leaves[jax.tree_util.keystr(k)], params)
    out = torch_fast.forward(tparams, images, numpy=False)
    (out * torch.tensor(probe, dtype=torch.float64)).sum().backward()
    # A conv bias before an instance norm has zero gradient: the scale is the largest gradient.
    scale = max(np.abs(t.grad.numpy()).max() for t in leaves.values())
    for k, g in jax.tree_util.tree_leaves_with_path(grads):
        ref = leaves[jax.tree_util.keystr(k)].grad.numpy()
        np.testing.assert_allclose(np.asarray(g), ref, rtol=1e-3, atol=1e-5 * scale,
                                   err_msg=jax.tree_util.keystr(k))


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("band", [0, 1, 2, 6])
def test_kernel_gradient_products_equal_the_plain_gradient(stride, band):
    """Every way `_valid_conv` splits its kernel gradient (one product, per row, bands of rows)
    equals XLA's own gradient of the plain convolution (the tiny images above only take the
    single product, which larger ones do not)."""
    rng = np.random.default_rng(6)
    xp = jnp.asarray(rng.standard_normal((2, 14, 10, 5)), jnp.float32)  # sizes the network pads to
    kernel = jnp.asarray(rng.standard_normal((3, 3, 5, 4)), jnp.float32)
    y, vjp = jax.vjp(lambda k: transformer._valid_conv_plain(xp, k, stride), kernel)
    dy = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
    assert band == 0 or (y.shape[0] * y.shape[1]) % band == 0  # 2·12 rows (stride 1) or 2·6 (2)
    got = transformer._kernel_gradient(xp, dy, 3, stride, band)
    np.testing.assert_allclose(got, vjp(dy)[0], rtol=1e-4, atol=1e-4)


def test_kernel_gradient_band_choice():
    assert transformer._kernel_gradient_band(4, 64, 64) == 0  # one product over every pixel
    assert transformer._kernel_gradient_band(4, 128, 128) == 1  # one per output row


@pytest.mark.parametrize("shape", [(2, 2, 3, 5), (1, 5, 7, 4), (1, 64, 64, 2)])
def test_upsampled_conv_equals_upsampling_then_the_padded_conv(shape):
    """The 2x2 phase-kernel form (`upsampled_conv`) against nearest 2x upsampling, reflection
    padding and the 3x3 conv done literally in NumPy/XLA: value and every gradient. The 64² case
    takes the per-row kernel-gradient products (128² outputs); 2x2 is the smallest side the
    network feeds it."""
    rng = np.random.default_rng(7)
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((3, 3, shape[3], 6)), jnp.float32)
    bias = jnp.asarray(rng.standard_normal(6), jnp.float32)

    def literal(x, kernel, bias):
        big = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        big = jnp.pad(big, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
        return lax_conv(big, kernel) + bias

    ours, ours_vjp = jax.vjp(transformer.upsampled_conv, x, kernel, bias)
    ref, ref_vjp = jax.vjp(literal, x, kernel, bias)
    assert ours.shape == (shape[0], 2 * shape[1], 2 * shape[2], 6)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-4)
    dy = jnp.asarray(rng.standard_normal(ref.shape), jnp.float32)
    for got, want in zip(ours_vjp(dy), ref_vjp(dy)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3 * float(jnp.abs(want).max()))


def lax_conv(x, kernel):
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        precision=jax.lax.Precision.HIGHEST)
