"""jaxstyle.vgg19 against an independent PyTorch VGG-19 built here from the same weight files.

The torch reference reads the synthetic .pth with torch.load (or the .h5 with h5py), preprocesses
per convention in torch, and runs F.conv2d / F.relu / F.max_pool2d or F.avg_pool2d.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from jax import lax

from jaxstyle import sources, vgg19
from jaxstyle.vgg19 import CONV_LAYERS

LAYERS = ("relu1_1", "pool1", "relu3_1", "conv4_2", "relu4_2", "relu5_1")
BLOCK_SIZES = (2, 2, 4, 4, 4)
RTOL = 1e-4

# ------------------------------------------------------------------------------------------------
# The independent reference.

TorchWeights = dict[str, tuple[torch.Tensor, torch.Tensor]]  # name -> (weight OIHW, bias)


def torch_weights_from_pth(path: Path) -> TorchWeights:
    state = torch.load(path, weights_only=True)
    indices = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)  # torchvision features.N
    return {name: (state[f"features.{i}.weight"], state[f"features.{i}.bias"])
            for (name, _, _), i in zip(CONV_LAYERS, indices)}


def torch_weights_from_h5(path: Path) -> TorchWeights:
    weights = {}
    with h5py.File(path, "r") as f:
        for name, _, _ in CONV_LAYERS:
            group = f"block{name[4]}_conv{name[6]}"
            kernel = torch.from_numpy(f[f"{group}/{group}/kernel:0"][()])  # HWIO
            weights[name] = (kernel.permute(3, 2, 0, 1).contiguous(),
                             torch.from_numpy(f[f"{group}/{group}/bias:0"][()]))
    return weights


def torch_preprocess(images: torch.Tensor, convention: str) -> torch.Tensor:
    """images: float[B, H, W, 3] RGB in [0, 1] -> float[B, 3, H, W] as the weights expect."""
    x = images.permute(0, 3, 1, 2)
    if convention == "torchvision":
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        return (x - mean) / std
    bgr = x[:, [2, 1, 0]]  # Caffe/Keras: BGR, 0..255, minus the BGR ImageNet mean
    return bgr * 255.0 - torch.tensor([103.939, 116.779, 123.68]).view(1, 3, 1, 1)


def torch_features(weights: TorchWeights, images: torch.Tensor, convention: str, pooling: str,
                   layers: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The reference VGG-19: {layer: float[B, h, w, C]} (NHWC, to compare with jaxstyle)."""
    x = torch_preprocess(images, convention)
    pool = F.max_pool2d if pooling == "max" else F.avg_pool2d
    out = {}
    for block, size in enumerate(BLOCK_SIZES, start=1):
        for i in range(1, size + 1):
            if all(name in out for name in layers):
                break
            weight, bias = weights[f"conv{block}_{i}"]
            x = F.conv2d(x, weight, bias, padding=1)
            out[f"conv{block}_{i}"] = x
            x = F.relu(x)
            out[f"relu{block}_{i}"] = x
        else:
            x = pool(x, 2, 2)
            out[f"pool{block}"] = x
    return {name: out[name].permute(0, 2, 3, 1) for name in layers}


# ------------------------------------------------------------------------------------------------
# Fixtures and helpers.

WEIGHTS = {  # convention -> (converted-file fixture, original-file fixture, reader for the torch side)
    "keras": ("keras_safetensors", "keras_h5", torch_weights_from_h5),
    "torchvision": ("torchvision_safetensors", "torchvision_pth", torch_weights_from_pth),
}


@pytest.fixture(scope="module")
def models(request) -> dict:
    """convention -> (convention, jaxstyle VGG loaded from the converted file, torch weights read
    independently from the original file)."""
    out = {}
    for convention, (converted, original, reader) in WEIGHTS.items():
        vgg = vgg19.load(request.getfixturevalue(converted))
        out[convention] = (convention, vgg, reader(request.getfixturevalue(original)))
    return out


# (convention, pooling) pairs for the costlier tests: each pooling mode, each convention.
PAIRS = [("keras", "max"), ("torchvision", "avg")]


def images(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, shape).astype(np.float32)


def cotangents(vgg: vgg19.VGG, shape: tuple[int, ...], layers=LAYERS, seed: int = 1) -> dict:
    """Fixed random weights for sum(features * cotangent): one per layer, of its shape."""
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal((shape[0], *vgg19.output_shape(name, *shape[1:3])))
            .astype(np.float32) for name in layers}


def rel_err(actual, expected) -> float:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


def assert_close(actual: dict, expected: dict, rtol: float = RTOL) -> None:
    assert set(actual) == set(expected)
    for name in expected:
        assert actual[name].shape == expected[name].shape, name
        assert rel_err(actual[name], expected[name]) < rtol, (name, rel_err(actual[name],
                                                                           expected[name]))


def reference(both, x: np.ndarray, pooling: str = "max", layers=LAYERS) -> dict[str, np.ndarray]:
    convention, _, tw = both
    with torch.no_grad():
        out = torch_features(tw, torch.from_numpy(x), convention, pooling, layers)
    return {k: v.numpy() for k, v in out.items()}


def torch_input_grad(both, x: np.ndarray, cot: dict, pooling: str = "max") -> np.ndarray:
    """d sum_l(features[l] * cot[l]) / d image by torch autograd, in float64."""
    convention, _, tw = both
    tw64 = {name: (w.double(), b.double()) for name, (w, b) in tw.items()}
    image = torch.from_numpy(x).double().requires_grad_(True)
    out = torch_features(tw64, image, convention, pooling, tuple(cot))
    sum((out[k] * torch.from_numpy(c).double()).sum() for k, c in cot.items()).backward()
    return image.grad.numpy()


# The VGG is an argument, not a closure constant: 80 MB of constants make XLA compile slowly.
@functools.partial(jax.jit, static_argnames=("layers",))
def jit_features(vgg: vgg19.VGG, x, layers: tuple[str, ...]) -> dict:
    return vgg19.features(vgg, x, layers)


def weighted_sum(vgg: vgg19.VGG, x, cot: dict, dtype=jnp.float32):
    """sum_l(features[l] * cot[l]): a scalar whose gradient is the VJP with the cotangents."""
    feats = vgg19.features(vgg, x, tuple(cot), dtype=dtype)
    return sum(jnp.sum(feats[k] * c) for k, c in cot.items())


jit_input_grad = jax.jit(jax.grad(weighted_sum, argnums=1), static_argnames=("dtype",))


# ------------------------------------------------------------------------------------------------
# Forward.


@pytest.mark.torch
@pytest.mark.parametrize("convention", list(WEIGHTS))
@pytest.mark.parametrize("pooling", vgg19.POOLINGS)
def test_features_match_torch(models, convention, pooling):
    """Batch of 2, non-square 40x56, six layers from relu1_1 to relu5_1, under jit."""
    both = models[convention]
    x = images((2, 40, 56, 3))
    ours = jit_features(both[1].with_pooling(pooling), jnp.asarray(x), LAYERS)
    assert_close(ours, reference(both, x, pooling))


@pytest.mark.torch
def test_load_sets_pooling_and_preprocessing(keras_safetensors, torchvision_safetensors):
    assert vgg19.load(keras_safetensors, pooling="avg").pooling == "avg"
    assert vgg19.load(keras_safetensors).preprocessing == sources.KERAS
    loaded = vgg19.load(torchvision_safetensors)
    assert (loaded.preprocessing, loaded.source) == (sources.TORCHVISION, "torchvision")


def test_load_from_original_file_equals_converted(keras_h5, keras_safetensors):
    direct, converted = vgg19.load(keras_h5), vgg19.load(keras_safetensors)
    assert (direct.preprocessing, direct.source) == (converted.preprocessing, converted.source)
    assert jax.tree.all(jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)),
                                     direct.params, converted.params))


@pytest.mark.parametrize("convention, pooling", PAIRS)
def test_odd_size(models, convention, pooling):
    """37x50: pooling floors odd sizes (37 -> 18 -> 9 -> 4 -> 2, 50 -> 25 -> 12 -> 6 -> 3)."""
    both = models[convention]
    x = images((1, 37, 50, 3), seed=2)
    ours = jit_features(both[1].with_pooling(pooling), jnp.asarray(x), LAYERS)
    assert ours["relu5_1"].shape == (1, 2, 3, 512)
    assert_close(ours, reference(both, x, pooling))


@pytest.mark.torch
def test_vmap_over_leading_axis(models):
    both = models["torchvision"]
    x = images((3, 1, 32, 48, 3), seed=3)
    run = jax.jit(jax.vmap(lambda v, im: vgg19.features(v, im, LAYERS), in_axes=(None, 0)))
    ours = run(both[1], jnp.asarray(x))
    assert ours["relu1_1"].shape == (3, 1, 32, 48, 64)
    assert_close({k: v[:, 0] for k, v in ours.items()}, reference(both, x[:, 0]))


# ------------------------------------------------------------------------------------------------
# Gradients.
#
# Against torch the gradients are compared in float64: a ReLU network's gradient jumps where a
# pre-activation changes sign, and two float32 implementations round differently, so an occasional
# pre-activation within rounding of zero flips its ReLU mask (one flip in ~300k units moves the
# input gradient by ~1e-3 relative; float64 torch and float32 torch agree, float32 XLA flipped one
# unit of conv1_2). In float64 no mask flips, and the gradients agree to ~1e-15.


@pytest.mark.torch
@pytest.mark.parametrize("convention, pooling", PAIRS)
def test_input_gradient_matches_torch_under_jit(models, convention, pooling):
    both = models[convention]
    vgg = both[1].with_pooling(pooling)
    x = images((2, 32, 40, 3), seed=4)
    cot = cotangents(vgg, x.shape)
    expected = torch_input_grad(both, x, cot, pooling)
    with jax.enable_x64(True):
        grad64 = jit_input_grad(vgg, jnp.asarray(x, jnp.float64),
                                jax.tree.map(lambda c: jnp.asarray(c, jnp.float64), cot),
                                dtype=jnp.float64)
        assert grad64.dtype == jnp.float64
    assert rel_err(grad64, expected) < RTOL
    if convention == "keras":
        # float32, as used in practice: right up to a few flipped ReLU masks (see above).
        grad32 = jit_input_grad(vgg, jnp.asarray(x), cot)
        assert grad32.dtype == jnp.float32 and rel_err(grad32, expected) < 1e-2


@pytest.mark.torch
def test_input_gradient_eager(models):
    both = models["keras"]
    x = images((1, 24, 20, 3), seed=8)
    cot = cotangents(both[1], x.shape, ("relu1_1", "pool1"))
    with jax.enable_x64(True):
        cot64 = {k: jnp.asarray(c, jnp.float64) for k, c in cot.items()}
        grad = jax.grad(weighted_sum, argnums=1)(both[1], jnp.asarray(x, jnp.float64), cot64,
                                                  dtype=jnp.float64)
    assert rel_err(grad, torch_input_grad(both, x, cot)) < RTOL


@pytest.mark.torch
@pytest.mark.parametrize("convention, where", [("keras", "outside"), ("torchvision", "inside")])
def test_input_gradient_in_scan_with_prepare(models, convention, where):
    """`prepare`d kernels used in a lax.scan body (prepare called before the loop, as documented,
    or inside the body) give torch's gradients at every step."""
    both = models[convention]
    layers = ("relu2_1", "pool2")
    xs = images((2, 1, 32, 40, 3), seed=5)
    cot = cotangents(both[1], xs.shape[1:], layers)

    @jax.jit
    def scanned(vgg, xs, cot):
        prepared = vgg19.prepare(vgg) if where == "outside" else None

        def body(carry, x):
            v = prepared if prepared is not None else vgg19.prepare(vgg)
            return carry, jax.grad(weighted_sum, argnums=1)(v, x, cot, dtype=xs.dtype)

        return lax.scan(body, 0, xs)[1]

    with jax.enable_x64(True):
        grads = scanned(both[1], jnp.asarray(xs, jnp.float64),
                        {k: jnp.asarray(c, jnp.float64) for k, c in cot.items()})
    for step in range(xs.shape[0]):
        assert rel_err(grads[step], torch_input_grad(both, xs[step], cot)) < RTOL


def plain_features(params: dict, images, preprocessing: vgg19.Preprocessing, pooling: str,
                   layers: tuple[str, ...]) -> dict:
    """VGG-19 in plain JAX (lax.conv_general_dilated, reduce_window pooling, no custom VJP)."""
    x = images[..., ::-1] if preprocessing.bgr else images
    mean = jnp.asarray(preprocessing.mean, x.dtype)
    x = (x * preprocessing.scale - mean) / jnp.asarray(preprocessing.std, x.dtype)
    out = {}
    for block, size in enumerate(BLOCK_SIZES, start=1):
        for i in range(1, size + 1):
            name = f"conv{block}_{i}"
            if all(n in out for n in layers):
                return {n: out[n] for n in layers}
            x = lax.conv_general_dilated(x, params[name]["kernel"], (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
            x = x + params[name]["bias"]
            out[name] = x
            x = jax.nn.relu(x)
            out[f"relu{block}_{i}"] = x
        if pooling == "max":
            x = lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        else:
            x = lax.reduce_window(x, 0.0, lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID") / 4
        out[f"pool{block}"] = x
    return {n: out[n] for n in layers}


@pytest.mark.parametrize("convention, pooling", PAIRS)
def test_weight_gradient_matches_plain_formulation(models, convention, pooling):
    """jax.grad through the custom-VJP convolutions, w.r.t. weights and image, equals jax.grad of
    the plain formulation (float64, for the reason above)."""
    vgg = models[convention][1].with_pooling(pooling)
    layers = ("relu1_1", "relu2_1", "pool2")
    x = images((2, 33, 40, 3), seed=6)
    cot = cotangents(vgg, x.shape, layers)

    def ours(params, x, cot):
        return weighted_sum(dataclasses.replace(vgg, params=params), x, cot, dtype=x.dtype)

    def plain(params, x, cot):
        feats = plain_features(params, x, vgg.preprocessing, pooling, layers)
        return sum(jnp.sum(feats[k] * c) for k, c in cot.items())

    used = [name for name, _, _ in CONV_LAYERS[:4]]  # conv1_1 ... conv2_2: all that pool2 needs
    with jax.enable_x64(True):
        params = {name: vgg.params[name] for name in used}
        args = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), (params, x, cot))
        g_ours = jax.jit(jax.grad(ours, argnums=(0, 1)))(*args)
        g_plain = jax.jit(jax.grad(plain, argnums=(0, 1)))(args[0], args[1], args[2])
    assert rel_err(g_ours[1], g_plain[1]) < RTOL
    for name in used:
        for part in ("kernel", "bias"):
            assert rel_err(g_ours[0][name][part], g_plain[0][name][part]) < RTOL, (name, part)


# ------------------------------------------------------------------------------------------------
# Only the needed layers.


def test_only_needed_layers_are_computed(models):
    both = models["keras"]
    vgg = both[1]
    first_only = dataclasses.replace(vgg, params={"conv1_1": vgg.params["conv1_1"]})
    x = images((1, 24, 20, 3), seed=7)
    ours = vgg19.features(first_only, jnp.asarray(x), ["relu1_1"])  # eager
    assert_close(ours, reference(both, x, layers=("relu1_1",)))
    with pytest.raises(ValueError, match="conv1_2"):
        vgg19.features(first_only, jnp.asarray(x), ["relu1_2"])


@pytest.mark.torch
def test_truncated_prepared_network_keeps_only_needed_layers(models):
    """`truncate` drops the convolutions past the deepest requested layer (and their prepared
    kernels); the truncated, prepared network still computes the requested features."""
    both = models["torchvision"]
    vgg = both[1]
    assert "conv5_4" in vgg.params
    cut = vgg19.prepare(vgg19.truncate(vgg, ["relu1_1", "relu4_2"]))
    assert list(cut.params) == list(cut.prepared) == [n for n, _, _ in CONV_LAYERS[:10]]
    x = images((1, 24, 20, 3), seed=8)
    layers = ("relu1_1", "relu4_2")
    assert_close(vgg19.features(cut, jnp.asarray(x), layers), reference(both, x, layers=layers))
    assert vgg19.truncate(cut, ["relu1_1"]).prepared.keys() == {"conv1_1"}
    with pytest.raises(ValueError, match="conv4_2"):
        vgg19.truncate(vgg19.truncate(vgg, ["relu4_1"]), ["relu4_2"])


@pytest.mark.parametrize("name", ["relu6_1", "conv4_5", "fc7", ""])
def test_unknown_layer_names_raise(keras_safetensors, name):
    vgg = vgg19.load(keras_safetensors)
    with pytest.raises(ValueError, match="unknown VGG-19 layer"):
        vgg19.features(vgg, jnp.zeros((1, 16, 16, 3)), ["relu1_1", name])
