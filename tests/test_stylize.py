"""The array API: sizes, scales, initial images, resuming, original colours, style blends. Tiny
images, a random shallow VGG and few iterations; every run with the same shapes and layers reuses
the same compiled loop."""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstyle import image_io, starts, stylize, vgg19
from jaxstyle.config import Config
from jaxstyle.errors import ConfigError
from helpers import CAFFE

# Shallow layers (compile fast), tiny size; all tests share the loop compiled for (24, 32).
BASE = Config().replace(content_layers=("relu2_1",), style_layers=("relu1_1", "relu2_1"),
                        image_size=32, num_iterations=4, lbfgs_memory=5)
# Loss identically zero: the optimizer never moves the image, so the result IS the start image.
FROZEN = BASE.replace(content_weight=0.0, style_weight=0.0, tv_weight=0.0)


def smooth_image(h, w, seed, lo=0.0, hi=1.0) -> np.ndarray:
    """A low-frequency colour image (resizing it by different methods gives nearly the same)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    channels = []
    for _ in range(3):
        f = sum(rng.uniform(0.5, 1.0) * np.sin(2 * np.pi * (rng.uniform(0.3, 1.2) * x
                                                             + rng.uniform(0.3, 1.2) * y)
                                               + rng.uniform(0, 2 * np.pi)) for _ in range(2))
        channels.append(f)
    img = np.stack(channels, -1)
    img = (img - img.min()) / (img.max() - img.min())
    return (lo + (hi - lo) * img).astype(np.float32)


def yuv(image) -> np.ndarray:
    """BT.601 RGB -> YUV (the transform neural-style's original colours use)."""
    m = np.array([[0.299, 0.587, 0.114], [-0.14713, -0.28886, 0.436], [0.615, -0.51499, -0.10001]])
    return np.asarray(image, np.float64) @ m.T


@pytest.fixture(scope="module")
def content():
    return smooth_image(30, 40, seed=1, lo=0.25, hi=0.75)  # -> 24 x 32 at image_size 32


@pytest.fixture(scope="module")
def styles():
    rng = np.random.default_rng(5)
    images = [smooth_image(20, 28, seed=2), smooth_image(30, 22, seed=3)]
    return [np.clip(im + 0.1 * rng.standard_normal(im.shape), 0, 1).astype(np.float32)
            for im in images]


def test_output_size_follows_image_size_and_aspect(vgg, content, styles):
    out = stylize.stylize(vgg, content, styles[:1], BASE)
    assert out.shape == (24, 32, 3) and out.dtype == np.float32
    assert np.all(np.isfinite(out)) and out.min() >= 0.0 and out.max() <= 1.0
    assert not np.allclose(out, image_io.resize(content, 24, 32), atol=1e-3)  # it did something
    assert stylize.scale_sizes(BASE, 40, 30) == [(32, 24)]  # portrait
    assert stylize.scale_sizes(BASE.replace(image_size=64), 30, 40) == [(48, 64)]
    assert stylize.scale_sizes(BASE.replace(scales=(16, 32)), 30, 40) == [(12, 16),
                                                                                         (24, 32)]


def test_stylize_batch_result_fields(vgg, content, styles):
    result = stylize.stylize_batch(vgg, content[None], styles[:1], BASE)
    assert result.images.shape == (1, 24, 32, 3)
    assert result.diverged.tolist() == [False]
    assert result.loss.shape == (1,) and np.isfinite(result.loss[0]) and result.loss[0] > 0
    np.testing.assert_array_equal(result.images[0], stylize.stylize(vgg, content, styles[:1], BASE))


def test_coarse_to_fine_reports_every_scale_and_ends_at_the_last_size(vgg, content, styles):
    cfg = BASE.replace(scales=(24, 32))
    seen = []

    def on_progress(p: stylize.Progress):
        seen.append((p.scale_index, p.num_scales, p.iteration, p.num_iterations, p.images.shape))

    result = stylize.stylize_batch(vgg, content[None], styles[:1], cfg, on_progress=on_progress,
                                   every=(2,))
    assert result.images.shape == (1, 24, 32, 3)
    assert seen == [(0, 2, 2, 4, (1, 18, 24, 3)), (0, 2, 4, 4, (1, 18, 24, 3)),
                    (1, 2, 2, 4, (1, 24, 32, 3)), (1, 2, 4, 4, (1, 24, 32, 3))]


def test_noise_init_is_deterministic_and_position_independent(vgg, content, styles):
    cfg = FROZEN.replace(init="noise", seed=7)
    a = stylize.stylize(vgg, content, styles[:1], cfg)
    b = stylize.stylize(vgg, content, styles[:1], cfg)
    np.testing.assert_array_equal(a, b)
    c = stylize.stylize(vgg, content, styles[:1], cfg.replace(seed=8))
    assert not np.allclose(a, c)
    # Uniform noise, unrelated to the content.
    assert 0.0 <= a.min() and a.max() <= 1.0 and abs(a.mean() - 0.5) < 0.05
    assert np.abs(np.corrcoef(a.ravel(), image_io.resize(content, 24, 32).ravel())[0, 1]) < 0.1
    # A batch's noise start does not depend on the image's position in it.
    contents = jnp.asarray(np.stack([image_io.resize(content, 24, 32),
                                     smooth_image(24, 32, seed=9)]))
    first = np.asarray(starts.initial_images(cfg, contents, []))
    alone = np.asarray(starts.initial_images(cfg, contents[1:], []))
    np.testing.assert_array_equal(first[0], first[1])
    np.testing.assert_array_equal(first[1], alone[0])
    np.testing.assert_array_equal(first[0], a)  # and it is where the run above started
    # With real weights, the same seed still gives the same result.
    real = BASE.replace(init="noise", seed=7)
    np.testing.assert_array_equal(stylize.stylize(vgg, content, styles[:1], real),
                                  stylize.stylize(vgg, content, styles[:1], real))


@pytest.mark.parametrize("init", ["content", "style", "image"])
def test_init_starts_from_the_chosen_image(vgg, content, styles, init):
    init_image = smooth_image(50, 35, seed=11)
    cfg = FROZEN.replace(init=init)
    out = stylize.stylize(vgg, content, styles, cfg, init_image=init_image)
    source = {"content": content, "style": styles[0], "image": init_image}[init]
    expected = image_io.resize(source, 24, 32)  # resized (aspect not kept) to the content's size
    assert out.shape == (24, 32, 3)
    err = np.abs(out - expected).mean()
    assert err < 0.03
    for other_name, other in (("content", content), ("style", styles[0]), ("image", init_image)):
        if other_name != init:
            assert np.abs(out - image_io.resize(other, 24, 32)).mean() > 3 * err


def test_resume_starts_from_the_given_images_and_runs_the_remaining_iterations(vgg, content,
                                                                                 styles):
    start_images = smooth_image(24, 32, seed=13)[None]
    # Zero loss: the result is exactly where the run started.
    frozen = stylize.stylize_batch(vgg, content[None], styles[:1], FROZEN,
                                   start=stylize.Start(0, 1, start_images))
    np.testing.assert_array_equal(frozen.images, start_images)

    cfg = BASE.replace(num_iterations=6)
    seen = []
    result = stylize.stylize_batch(
        vgg, content[None], styles[:1], cfg, start=stylize.Start(0, 2, start_images),
        on_progress=lambda p: seen.append((p.scale_index, p.iteration, int(p.state.step[0]))),
        every=(1,))
    assert seen == [(0, 3, 1), (0, 4, 2), (0, 5, 3), (0, 6, 4)]
    # It moved from the start images, not from the content.
    assert not np.allclose(result.images, start_images, atol=1e-4)
    assert (np.abs(result.images - start_images).mean()
            < np.abs(result.images - image_io.resize(content, 24, 32)).mean())


def test_resume_at_a_later_scale_skips_the_earlier_ones(vgg, content, styles):
    cfg = FROZEN.replace(scales=(24, 32))
    start_images = smooth_image(18, 24, seed=14)[None]  # the size of scale 0: resized to scale 1
    seen = []
    result = stylize.stylize_batch(vgg, content[None], styles[:1], cfg,
                                   start=stylize.Start(1, 3, start_images),
                                   on_progress=lambda p: seen.append((p.scale_index, p.iteration)))
    assert seen == [(1, 4)]
    assert result.images.shape == (1, 24, 32, 3)
    np.testing.assert_allclose(result.images[0], image_io.resize(start_images[0], 24, 32),
                               atol=0.03)


def test_resume_reports_progress_at_multiples_of_every(vgg, content, styles):
    """Periods in ``every`` (snapshots, GIF frames: the CLI tests ``iteration % period == 0``) are
    absolute iteration numbers, so a run resumed at iteration 3 must still report at 4, 6 and 8."""
    cfg = FROZEN.replace(num_iterations=8)
    seen = []
    stylize.stylize_batch(vgg, content[None], styles[:1], cfg,
                          start=stylize.Start(0, 3, smooth_image(24, 32, seed=15)[None]),
                          on_progress=lambda p: seen.append(p.iteration), every=(2,))
    assert {4, 6, 8} <= set(seen)
    assert seen[-1] == 8


def test_original_colors_keeps_the_contents_chroma(vgg, styles):
    content = smooth_image(24, 32, seed=16, lo=0.3, hi=0.7)  # already the output size
    cfg = BASE.replace(num_iterations=6)
    plain = stylize.stylize(vgg, content, styles[:1], cfg)
    kept = stylize.stylize(vgg, content, styles[:1], cfg.replace(original_colors=True))
    np.testing.assert_allclose(kept, image_io.original_colors(plain, content), atol=1e-6)
    inside = np.all((kept > 1e-4) & (kept < 1 - 1e-4), axis=-1)  # pixels the clip left alone
    assert inside.mean() > 0.5
    np.testing.assert_allclose(yuv(kept)[inside][:, 1:], yuv(content)[inside][:, 1:], atol=1e-5)
    np.testing.assert_allclose(yuv(kept)[inside][:, 0], yuv(plain)[inside][:, 0], atol=1e-5)
    assert not np.allclose(yuv(plain)[..., 1:], yuv(content)[..., 1:], atol=1e-3)


def test_multiple_styles_blend(vgg, content, styles):
    cfg = BASE.replace(style_blend_weights=(0.3, 0.7))
    blended = stylize.stylize(vgg, content, styles, cfg)
    assert blended.shape == (24, 32, 3)
    # Blend weights are normalized: (3, 7) is (0.3, 0.7).
    np.testing.assert_allclose(
        stylize.stylize(vgg, content, styles, cfg.replace(style_blend_weights=(3, 7))),
        blended, atol=1e-5)
    # A blend of (1, 0) is the first style alone; (0, 1) the second.
    only_first = stylize.stylize(vgg, content, styles,
                                 cfg.replace(style_blend_weights=(1.0, 0.0)))
    np.testing.assert_allclose(only_first, stylize.stylize(vgg, content, styles[:1], BASE),
                               atol=1e-5)
    only_second = stylize.stylize(vgg, content, styles,
                                  cfg.replace(style_blend_weights=(0.0, 1.0)))
    np.testing.assert_allclose(only_second, stylize.stylize(vgg, content, styles[1:], BASE),
                               atol=1e-5)
    for other in (only_first, only_second):
        assert not np.allclose(blended, other, atol=1e-4)
    with pytest.raises(ConfigError):
        stylize.stylize(vgg, content, styles, cfg.replace(style_blend_weights=(1.0,)))


@pytest.mark.parametrize("case", ["panorama-style", "small-content"])
def test_too_small_for_the_deepest_layer_is_a_user_error(case):
    """Both sides of every network input must survive the pooling down to the deepest layer
    (relu5_1: 16 px). `Config` only checks the LONG side (image_size >= 16) and `stylize_batch`
    scales by the long side, so a wide style image or a small image_size gives a short side that
    pools to nothing. Acceptable outcomes: a one-line `JaxstyleError` naming the problem, or a
    normal finite result (e.g. if the short side were raised to 16 px). Not a ZeroDivisionError."""
    from jaxstyle.errors import JaxstyleError

    vgg = vgg19.init(jax.random.key(0), CAFFE)  # default layers: down to relu5_1
    content = smooth_image(30, 40, seed=1)
    style = smooth_image(30, 40, seed=2)
    cfg = Config().replace(image_size=32, num_iterations=2)
    if case == "panorama-style":
        style = smooth_image(8, 48, seed=2)  # -> 5 x 32 at the style's long side of 32
    else:
        cfg = Config().replace(image_size=16, num_iterations=2)  # 30 x 40 content -> 12 x 16
    try:
        result = stylize.stylize_batch(vgg, content[None], [style], cfg)
    except JaxstyleError as e:
        assert "\n" not in str(e) and str(e)
        return
    assert np.all(np.isfinite(result.images)) and not result.diverged.any()


def test_divergence_still_returns_the_last_scales_size(vgg, content, styles):
    """`stylize_batch` documents its `Result` as "at the last scale's size" (the CLI saves it as the
    output). A run that diverges at the first scale must still come back at that size (its last
    finite images, upsampled), flagged diverged, not silently at the first scale's size."""
    cfg = BASE.replace(scales=(24, 32), style_weight=1e38)  # the loss overflows
    result = stylize.stylize_batch(vgg, content[None], styles[:1], cfg)
    assert result.diverged.tolist() == [True]
    assert np.all(np.isfinite(result.images))
    assert result.images.shape == (1, 24, 32, 3)
