"""Shape buckets (issue 29): a photo padded to its bucket gives what the unpadded photo gives."""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstyle import batch, buckets, losses, optimize, run_targets, stylize, vgg19
from jaxstyle.config import Config
from jaxstyle.imageops import resize

CFG = Config().replace(scales=(48, 96), num_iterations=12, content_weight=1.0, style_weight=100.0,
                       tv_weight=1e-6, style_layers=("relu1_1", "relu2_1", "relu3_1"),
                       content_layers=("relu3_1",))


@pytest.fixture(scope="module")
def vgg(keras_safetensors):
    return vgg19.load(keras_safetensors)


def _image(seed, h, w):
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(size=(h // 8 + 1, w // 8 + 1, 3)).astype(np.float32)
    return np.asarray(resize(jnp.asarray(coarse), h, w))


def test_bucket_shapes():
    assert buckets.bucket_shape(384, 512) == (384, 512)  # 4:3 is a bucket
    assert buckets.bucket_shape(288, 512) == (384, 512)  # 16:9 shares it
    assert buckets.bucket_shape(512, 400) == (512, 512)
    assert buckets.bucket_shape(50, 96) == (64, 96)
    assert buckets.bucket_shape(66, 96) == (96, 96)


def _unpadded_loss(vgg, image, content, style, cfg):
    """The loss of ``image`` computed independently, on the unpadded photo (no masks)."""
    spec = losses.LossSpec.from_config(cfg)
    h, w = image.shape[:2]
    st = resize(jnp.asarray(style), *stylize.style_size(*style.shape[:2], max(h, w), 16))
    t = losses.targets(vgg, resize(jnp.asarray(content), h, w)[None], [st[None]], [1.0], spec)
    return float(losses.total_loss(vgg, jnp.asarray(image)[None], t, spec)[0])


def test_padded_run_matches_an_unpadded_run(vgg):
    content, style = _image(1, 50, 96), _image(2, 64, 64)
    plain = stylize.stylize_batch(vgg, content[None], [style], CFG)
    padded = stylize.stylize_batch(vgg, content[None], [style], CFG, bucket=True)
    assert padded.images.shape == plain.images.shape == (1, 50, 96, 3)  # the photo's exact size
    a = _unpadded_loss(vgg, plain.images[0], content, style, CFG)
    b = _unpadded_loss(vgg, padded.images[0], content, style, CFG)
    assert abs(b - a) / a < 0.01, (a, b)


def test_photos_of_one_bucket_share_the_step_program_and_batch_equals_alone(vgg):
    style = _image(3, 64, 64)
    wide, wider = _image(4, 72, 96), _image(5, 66, 96)  # 4:3 and 16:11: both 96x72
    assert buckets.bucket_shape(66, 96) == buckets.bucket_shape(72, 96) == (96, 96)
    cfg = Config().replace(scales=(96,), num_iterations=3, style_layers=("relu1_1", "relu2_1"),
                           content_layers=("relu2_1",))
    alone = [stylize.stylize_batch(vgg, c[None], [style], cfg, bucket=True).images[0]
             for c in (wide, wider)]
    before = optimize.run_steps._cache_size()
    stylize.stylize_batch(vgg, wider[None], [style], cfg, bucket=True)
    assert optimize.run_steps._cache_size() == before  # the 16:11 photo compiled nothing new
    results = batch.stylize_many(vgg, [wide, wider], [style], cfg, bucket=True)
    for result, own in zip(results, alone):
        assert result.images[0].shape == own.shape
        np.testing.assert_allclose(result.images[0], own, atol=2e-4)


def test_transposed_network_gives_the_transposed_features(vgg):
    """Against the plain network on the untransposed image (the Winograd and flipped kernels
    are transposed by permutation, not recomputed: their gradients are checked too)."""
    net = optimize.prepared(vgg, losses.LossSpec.from_config(CFG))
    image = jnp.asarray(_image(6, 40, 24))[None]
    layers = ("relu1_1", "relu3_1")
    plain = vgg19.features(net, image, layers)
    turned = vgg19.features(buckets.transposed_network(net), image.swapaxes(1, 2), layers)
    for name in layers:
        np.testing.assert_allclose(turned[name].swapaxes(1, 2), plain[name], rtol=1e-4,
                                   atol=1e-4 * float(jnp.max(plain[name])))
    grad = lambda n, x: jax.grad(lambda y: jnp.sum(vgg19.features(n, y, layers)["relu3_1"]  # noqa: E731
                                                  ** 2))(x)
    np.testing.assert_allclose(grad(buckets.transposed_network(net), image.swapaxes(1, 2))
                               .swapaxes(1, 2), grad(net, image), rtol=1e-3,
                               atol=1e-4 * float(jnp.max(jnp.abs(grad(net, image)))))


def test_host_resize_is_jax_resize():
    rng = np.random.default_rng(7)
    for h, w, height, width in ((96, 128, 48, 64), (37, 53, 64, 90), (50, 96, 25, 48)):
        x = rng.uniform(size=(2, h, w, 3)).astype(np.float32)
        np.testing.assert_allclose(buckets.resize(x, height, width),
                                   resize(jnp.asarray(x), height, width), atol=1e-5)


@pytest.mark.parametrize("init,steps", [("content", 12), ("noise", 4)])
def test_a_portrait_runs_transposed_as_it_ran_upright(vgg, monkeypatch, init, steps):
    """A 96x50 portrait (bucket 96x64) runs as a 50x96 landscape (bucket 64x96) with transposed
    kernels: its image has the photo's exact size and orientation, and its loss (computed
    independently on the unpadded image) is within 1 % of the same run upright (the same noise:
    drawn in one orientation) and, from the content, of an unpadded run. (From noise, float
    rounding grows faster: 0.9 % apart after 12 steps, so 4 here.)"""
    content, style = _image(8, 96, 50), _image(9, 64, 64)
    cfg = CFG.replace(init=init, num_iterations=steps)
    turned = stylize.stylize_batch(vgg, content[None], [style], cfg, bucket=True)
    monkeypatch.setattr(buckets, "TRANSPOSE", False)
    upright = stylize.stylize_batch(vgg, content[None], [style], cfg, bucket=True)
    assert turned.images.shape == upright.images.shape == (1, 96, 50, 3)
    a, b = (_unpadded_loss(vgg, r.images[0], content, style, cfg) for r in (upright, turned))
    assert abs(b - a) / a < 0.01, (a, b)
    if init == "content":
        plain = stylize.stylize_batch(vgg, content[None], [style], cfg)
        c = _unpadded_loss(vgg, plain.images[0], content, style, cfg)
        assert abs(b - c) / c < 0.01, (b, c)
        assert np.abs(turned.images - upright.images).max() < 8 / 255


def test_portraits_and_landscapes_share_the_step_program(vgg):
    """A 3:4 portrait after a 4:3 landscape of the same size compiles no step, target or state
    program; in one folder, each equals its run alone."""
    style = _image(10, 64, 64)
    wide, tall = _image(11, 72, 96), _image(12, 96, 72)
    cfg = Config().replace(scales=(48, 96), num_iterations=3, style_layers=("relu1_1", "relu2_1"),
                           content_layers=("relu2_1",))
    alone = [stylize.stylize_batch(vgg, c[None], [style], cfg, bucket=True).images[0]
             for c in (wide, tall)]
    programs = (optimize.run_steps, run_targets.bucket_content, run_targets.style,
                run_targets.scaled_spec, optimize._fresh_state)
    before = [f._cache_size() for f in programs]
    again = stylize.stylize_batch(vgg, _image(13, 96, 72)[None], [style], cfg, bucket=True)
    assert [f._cache_size() for f in programs] == before
    assert again.images.shape == (1, 96, 72, 3)
    results = batch.stylize_many(vgg, [wide, tall], [style], cfg, bucket=True)
    for result, own in zip(results, alone):
        assert result.images[0].shape == own.shape
        np.testing.assert_allclose(result.images[0], own, atol=2e-4)
