"""Losses and VGG features against an independent PyTorch reference (tests/reference.py), and the
custom-VJP building blocks against their plain JAX formulations."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference as ref
from jaxstyle import losses, vgg19
from jaxstyle.config import Config
from helpers import CAFFE, TORCHVISION

H, W = 32, 40
SHALLOW = Config().replace(content_layers=("relu2_1",), style_layers=("relu1_1", "relu2_1"))


def randn(shape, seed) -> jax.Array:
    """Standard normal float32 array (numpy's generator: no per-shape compilation)."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def rel(a, b) -> float:
    """Norm-relative difference of a to the reference b."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


@pytest.fixture(scope="module")
def random_vgg() -> vgg19.VGG:
    """`vgg19.init`'s random network (caffe preprocessing), with small random biases added (init
    makes them zero) so that the reference comparison also covers the bias."""
    vgg = vgg19.init(jax.random.key(0), CAFFE)
    rng = np.random.default_rng(123)
    params = {name: {"kernel": np.asarray(p["kernel"]),
                     "bias": (0.1 * rng.standard_normal(np.shape(p["bias"]))).astype(np.float32)}
              for name, p in vgg.params.items()}
    return dataclasses.replace(vgg, params=params)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return {
        "content": rng.uniform(size=(2, H, W, 3)).astype(np.float32),
        "input": rng.uniform(size=(2, H, W, 3)).astype(np.float32),
        "style_a": rng.uniform(size=(28, 36, 3)).astype(np.float32),
        "style_b": rng.uniform(size=(40, 24, 3)).astype(np.float32),
    }


_targets = jax.jit(losses.targets)
_loss_and_grad = jax.jit(jax.value_and_grad(losses.total_loss, argnums=1, has_aux=True))
_features = jax.jit(vgg19.features, static_argnums=2)


# ------------------------------------------------------------------------------------------------
# Full loss and gradient against the PyTorch reference.

CASES = {
    # name: (preprocessing, batch, config, style names)
    "default": (CAFFE, 1, Config(), ("style_a",)),
    "torchvision-two-styles-blend": (
        TORCHVISION, 2,
        Config().replace(content_weight=1e4, style_weight=1e9, style_blend_weights=(0.3, 0.7),
                         style_layers=("relu1_1", "relu2_1", "relu3_1")),
        ("style_a", "style_b")),
    "avg-pooling": (CAFFE, 1, Config().replace(
        pooling="avg", style_layers=("relu1_1", "relu2_1", "pool2", "relu3_1"),
        content_layers=("relu3_1",)), ("style_b",)),
    "layer-weights-multi-content": (
        CAFFE, 1,
        Config().replace(content_layers=("conv2_2", "relu3_2"), content_layer_weights=(0.5, 3.0),
                         style_layers=("relu1_1", "relu2_1", "relu3_1"),
                         style_layer_weights=(2.0, 0.25, 1.5), tv_weight=5e-4),
        ("style_a",)),
    "gatys-batch": (
        CAFFE, 2,
        Config().replace(normalization="gatys", content_weight=1.0, style_weight=1.0,
                         style_layers=("relu1_1", "relu2_1", "relu3_1"),
                         content_layers=("relu3_1",), style_blend_weights=(0.3, 0.7)),
        ("style_a", "style_b")),
}


@pytest.mark.torch
@pytest.mark.parametrize("case", list(CASES))
def test_loss_and_gradient_match_torch_reference(case, random_vgg, images):
    preprocessing, batch, cfg, style_names = CASES[case]
    vgg = dataclasses.replace(random_vgg, preprocessing=preprocessing).with_pooling(
        cfg.network.pooling)
    spec = losses.LossSpec.from_config(cfg)
    styles = [images[name] for name in style_names]
    blend = cfg.loss.blend_weights(len(styles))
    content, x = images["content"][:batch], images["input"][:batch]

    tg = _targets(vgg, jnp.asarray(content), [jnp.asarray(s)[None] for s in styles], list(blend),
                  spec)
    (loss, terms), grad = _loss_and_grad(vgg, jnp.asarray(x), tg, spec)

    settings = cfg.loss
    content_w = [settings.content_weight * w for w in (settings.content_layer_weights
                                                       or (1.0,) * len(settings.content_layers))]
    style_w = [settings.style_weight * w for w in (settings.style_layer_weights
                                                   or (1.0,) * len(settings.style_layers))]
    ref_loss, ref_terms, ref_grad = ref.torch_total_loss_and_grad(
        vgg.params, preprocessing, x, content, styles, blend, settings.content_layers,
        settings.style_layers, content_w, style_w, settings.tv_weight, settings.normalization,
        cfg.network.pooling)

    assert np.isfinite(ref_loss) and ref_loss > 0
    assert abs(float(loss) - ref_loss) <= 1e-4 * ref_loss
    for name in ("content", "style", "tv"):
        assert terms[name].shape == (batch,) and terms[name].dtype == jnp.float32
        assert rel(terms[name], ref_terms[name]) < 1e-4, name
        assert np.all(ref_terms[name] > 0)  # every term really contributes
    assert grad.shape == x.shape
    assert rel(grad, ref_grad) < 1e-4


@pytest.mark.torch
@pytest.mark.parametrize("preprocessing", [CAFFE, TORCHVISION], ids=["caffe", "torchvision"])
def test_features_match_torch_reference(preprocessing, random_vgg, images):
    vgg = dataclasses.replace(random_vgg, preprocessing=preprocessing)
    layers = ("conv1_1", "relu1_2", "pool1", "relu2_1", "pool2")
    feats = _features(vgg, jnp.asarray(images["input"]), layers)
    expected = ref.torch_features(vgg.params, preprocessing, images["input"], layers, layout="NHWC")
    for name in layers:
        assert feats[name].shape == tuple(expected[name].shape), name
        assert rel(feats[name], expected[name].numpy()) < 1e-5, name


# ------------------------------------------------------------------------------------------------
# Gram matrix.


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("normalize", [True, False])
def test_gram_matrix_matches_einsum(dtype, normalize):
    f = randn((2, 5, 7, 6), 1).astype(dtype)
    g = losses.gram_matrix(f, normalize=normalize)
    assert g.dtype == jnp.float32 and g.shape == (2, 6, 6)
    f64 = np.asarray(f.astype(jnp.float32), np.float64).reshape(2, 35, 6)
    expected = np.einsum("bnc,bnd->bcd", f64, f64) / (35 * 6 if normalize else 1)
    np.testing.assert_allclose(np.asarray(g), expected, rtol=1e-5,
                               atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("normalize", [True, False])
def test_gram_custom_vjp_equals_plain_grad(normalize):
    f = randn((2, 6, 5, 8), 2)
    cot = randn((2, 8, 8), 3)  # not symmetric on purpose
    scale = 1.0 / (6 * 5 * 8) if normalize else 1.0

    def plain(x):
        x = x.reshape(2, 30, 8)
        return jnp.einsum("bnc,bnd->bcd", x, x) * scale

    out, vjp = jax.vjp(lambda x: losses.gram_matrix(x, normalize), f)
    out_plain, vjp_plain = jax.vjp(plain, f)
    np.testing.assert_allclose(out, out_plain, rtol=1e-5, atol=1e-6)
    assert rel(vjp(cot)[0], vjp_plain(cot)[0]) < 1e-5
    # Through a scalar loss, and under jit.
    loss = lambda fn: lambda x: jnp.sum(jnp.sin(fn(x)))  # noqa: E731
    g = jax.jit(jax.grad(loss(lambda x: losses.gram_matrix(x, normalize))))(f)
    assert rel(g, jax.grad(loss(plain))(f)) < 1e-5


def test_gram_vjp_bfloat16_input_gives_bfloat16_gradient():
    f = randn((1, 4, 4, 8), 4).astype(jnp.bfloat16)
    g = jax.grad(lambda x: jnp.sum(losses.gram_matrix(x) ** 2))(f)
    assert g.dtype == jnp.bfloat16
    g32 = jax.grad(lambda x: jnp.sum(losses.gram_matrix(x) ** 2))(f.astype(jnp.float32))
    assert rel(g.astype(jnp.float32), g32) < 2e-2


# ------------------------------------------------------------------------------------------------
# Structure: independence, jit/vmap, no retracing.


@pytest.mark.torch
def test_building_blocks_match_formulas():
    """content/style/TV terms against the torch reference on plain arrays (no network)."""
    import torch

    rng = np.random.default_rng(3)
    f = jnp.asarray(rng.standard_normal((2, 5, 6, 4)), jnp.float32)
    p = jnp.asarray(rng.standard_normal((1, 5, 6, 4)), jnp.float32)
    img = rng.uniform(size=(2, 7, 8, 3)).astype(np.float32)
    t = lambda a: torch.as_tensor(np.asarray(a, np.float64)).permute(0, 3, 1, 2)  # noqa: E731
    for norm in ("neural-style", "gatys"):
        a = losses.gram_matrix(p, normalize=norm != "gatys")
        assert rel(losses.content_loss(f, p, norm), ref.torch_content_loss(t(f), t(p), norm)) < 1e-6
        assert rel(losses.style_loss(f, a, norm),
                   ref.torch_style_loss(t(f), torch.as_tensor(np.asarray(a, np.float64)), norm)
                   ) < 1e-5
    tv = losses.total_variation(jnp.asarray(img))
    assert tv.shape == (2,)
    assert rel(tv, ref.torch_total_variation(torch.as_tensor(img, dtype=torch.float64))) < 1e-6


@pytest.fixture(scope="module")
def shallow_problem(random_vgg, images):
    spec = losses.LossSpec.from_config(SHALLOW)
    tg = _targets(random_vgg, jnp.asarray(images["content"]),
                  [jnp.asarray(images["style_a"])[None]], [1.0], spec)
    return random_vgg, spec, tg


def test_batch_images_are_independent(shallow_problem, images):
    vgg, spec, tg = shallow_problem
    x = jnp.asarray(images["input"])
    (loss, terms), grad = _loss_and_grad(vgg, x, tg, spec)
    total = 0.0
    for i in range(2):
        alone = losses.Targets(content={k: v[i:i + 1] for k, v in tg.content.items()},
                               style=tg.style)
        (loss_i, terms_i), grad_i = _loss_and_grad(vgg, x[i:i + 1], alone, spec)
        for name in terms:
            np.testing.assert_allclose(terms[name][i], terms_i[name][0], rtol=1e-5)
        assert rel(grad[i], grad_i[0]) < 1e-5
        total += float(loss_i)
    np.testing.assert_allclose(float(loss), total, rtol=1e-5)


def test_total_loss_under_vmap_equals_per_image(shallow_problem, images):
    """vmap over a problem axis (as optimize.run_steps does) gives each image's own loss/grad."""
    vgg, spec, tg = shallow_problem
    x = jnp.asarray(images["input"])
    per_problem = losses.Targets(content={k: v[:, None] for k, v in tg.content.items()},
                                 style={k: jnp.broadcast_to(v, (2,) + v.shape)
                                        for k, v in tg.style.items()})

    def one(image, t):
        return jax.value_and_grad(lambda im: losses.total_loss(vgg, im[None], t, spec)[0])(image)

    vloss, vgrad = jax.jit(jax.vmap(one))(x, per_problem)
    (_, terms), grad = _loss_and_grad(vgg, x, tg, spec)
    per_image = sum(terms.values())
    np.testing.assert_allclose(vloss, per_image, rtol=1e-5)
    assert rel(vgrad, grad) < 1e-5
    # The building blocks vmap too.
    f = randn((3, 2, 4, 4, 5), 10)
    g = jax.vmap(losses.gram_matrix)(f)
    np.testing.assert_allclose(g, losses.gram_matrix(f.reshape(6, 4, 4, 5)).reshape(3, 2, 5, 5),
                               rtol=1e-5, atol=1e-6)
    tv = jax.vmap(losses.total_variation)(jnp.asarray(images["input"])[:, None])
    np.testing.assert_allclose(tv[:, 0], losses.total_variation(jnp.asarray(images["input"])),
                               rtol=1e-6)


def test_weight_changes_do_not_retrace(shallow_problem, images):
    vgg, _, tg = shallow_problem
    traces = []

    @jax.jit
    def objective(vgg, images, targets, spec):
        traces.append(1)  # runs only while tracing
        return losses.total_loss(vgg, images, targets, spec)

    x = jnp.asarray(images["input"])
    base = losses.LossSpec.from_config(SHALLOW)
    _, terms = objective(vgg, x, tg, base)
    cfg = SHALLOW.replace(content_weight=2.0, style_weight=7.0, tv_weight=0.0,
                          style_layer_weights=(1.0, 3.0))
    changed = losses.LossSpec.from_config(cfg)
    _, terms2 = objective(vgg, x, tg, changed)
    assert len(traces) == 1
    np.testing.assert_allclose(terms2["content"], terms["content"] * 2.0 / 5.0, rtol=1e-5)
    np.testing.assert_allclose(terms2["tv"], 0.0)
    # Style: per-layer terms recombined with the new weights.
    feats = _features(vgg, x, SHALLOW.loss.style_layers)
    per_layer = [losses.style_loss(feats[n], tg.style[n]) for n in SHALLOW.loss.style_layers]
    np.testing.assert_allclose(terms["style"], 100.0 * (per_layer[0] + per_layer[1]), rtol=1e-4)
    np.testing.assert_allclose(terms2["style"], 7.0 * (per_layer[0] + 3.0 * per_layer[1]),
                               rtol=1e-4)
    # Changing a layer (static) does retrace.
    other = losses.LossSpec.from_config(SHALLOW.replace(content_layers=("relu1_1",)))
    content = _features(vgg, jnp.asarray(images["content"]), ("relu1_1",))
    objective(vgg, x, losses.Targets(content=content, style=tg.style), other)
    assert len(traces) == 2


# ------------------------------------------------------------------------------------------------
# The temporal term of a film's frame (Ruder et al. 2016), against NumPy and torch autograd.


@pytest.mark.torch
def test_temporal_loss_value_and_gradient_match_numpy_and_torch():
    import torch

    rng = np.random.default_rng(7)
    x = rng.uniform(size=(2, H, W, 3)).astype(np.float32)
    warped = rng.uniform(size=(2, H, W, 3)).astype(np.float32)
    mask = (rng.uniform(size=(2, H, W, 1)) > 0.3).astype(np.float32)
    value, grad = jax.jit(jax.value_and_grad(
        lambda im: jnp.sum(losses.temporal_loss(im, warped, mask)), has_aux=False))(jnp.asarray(x))
    per_image = losses.temporal_loss(jnp.asarray(x), warped, mask)
    expected = np.sum(mask * (x.astype(np.float64) - warped) ** 2, axis=(1, 2, 3)) / (H * W * 3)
    assert per_image.shape == (2,)
    np.testing.assert_allclose(per_image, expected, rtol=1e-5)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    loss = (torch.as_tensor(mask, dtype=torch.float64)
            * (xt - torch.as_tensor(warped, dtype=torch.float64)) ** 2).sum() / (H * W * 3)
    loss.backward()
    np.testing.assert_allclose(float(value), float(loss), rtol=1e-5)
    assert rel(grad, xt.grad.numpy()) < 1e-6


def test_temporal_term_is_added_only_when_given(shallow_problem, images):
    vgg, spec, tg = shallow_problem
    x = jnp.asarray(images["input"])
    # Absent: the pytrees keep their leaves (no temporal leaf), and the terms are the three.
    assert len(jax.tree.leaves(spec)) == 3 and spec.temporal_weight is None
    assert tg.temporal is None
    (loss, terms), grad = _loss_and_grad(vgg, x, tg, spec)
    assert set(terms) == {"content", "style", "tv"}
    rng = np.random.default_rng(8)
    warped = rng.uniform(size=x.shape).astype(np.float32)
    mask = (rng.uniform(size=x.shape[:3] + (1,)) > 0.5).astype(np.float32)
    weight = 300.0
    film_spec = dataclasses.replace(spec, temporal_weight=jnp.asarray(weight, jnp.float32))
    film_tg = dataclasses.replace(tg, temporal={"image": jnp.asarray(warped),
                                                "mask": jnp.asarray(mask)})
    (loss_t, terms_t), grad_t = _loss_and_grad(vgg, x, film_tg, film_spec)
    assert set(terms_t) == {"content", "style", "tv", "temporal"}
    diff = np.asarray(x, np.float64) - warped
    expected = weight * np.sum(mask * diff**2, axis=(1, 2, 3)) / (H * W * 3)
    np.testing.assert_allclose(terms_t["temporal"], expected, rtol=1e-5)
    np.testing.assert_allclose(float(loss_t), float(loss) + expected.sum(), rtol=1e-5)
    # The gradient adds the closed form 2·w·c·(x − ω)/(H·W·3) to the still image's.
    assert rel(np.asarray(grad_t) - np.asarray(grad), 2 * weight * mask * diff / (H * W * 3)) < 1e-4
    # Stacked specs carry the temporal weight per problem.
    stacked = losses.LossSpec.stack([film_spec, film_spec])
    assert stacked.temporal_weight.shape == (2,)
