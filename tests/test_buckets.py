"""Shape buckets (issue 29): a photo padded to its bucket gives what the unpadded photo gives."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from jaxstyle import batch, buckets, losses, optimize, stylize, vgg19
from jaxstyle.config import Config
from jaxstyle.imageops import resize

CFG = Config(scales=(48, 96), num_iterations=12, content_weight=1.0, style_weight=100.0,
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
    cfg = Config(scales=(96,), num_iterations=3, style_layers=("relu1_1", "relu2_1"),
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
