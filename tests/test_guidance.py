"""Spatial and colour control: guided style (masks, semantic maps) against an independent float64
PyTorch reference and by its effect on tiny images; colour matching by its moments; every bad
input through the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import jax
import jax.numpy as jnp
import torch
from PIL import Image

import reference as ref
from jaxstyle import guidance, imageops, losses, stylize
from jaxstyle.config import Config
from jaxstyle.errors import JaxstyleError, JaxstyleWarning
from helpers import run_cli
from helpers import CAFFE

LAYERS = ("relu1_1", "relu2_1")
H, W = 32, 48


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def two_regions(h: int, w: int) -> np.ndarray:
    """Left/right masks float32[2, h, w] with a grey linear ramp over the middle quarter."""
    ramp = np.clip((np.arange(w) - 3 * w / 8) / (w / 4), 0.0, 1.0).astype(np.float32)
    right = np.broadcast_to(ramp, (h, w))
    return np.stack([1.0 - right, right])


# ------------------------------------------------------------------------------------------------
# The loss and its gradient against the float64 reference.


def torch_guided_gram(f: torch.Tensor, g: torch.Tensor, normalize: bool) -> torch.Tensor:
    """f: [1, C, h, w]; g: [R, h, w] -> [R, C, C]: Σ g² f fᵀ / Σ g² (× 1/C, or × N for gatys)."""
    _, c, h, w = f.shape
    flat = f.reshape(c, h * w)
    out = []
    for region in g:
        g2 = (region * region).reshape(h * w)
        gram = (flat * g2) @ flat.T / g2.sum()
        out.append(gram / c if normalize else gram * (h * w))
    return torch.stack(out)


@pytest.mark.torch
@pytest.mark.parametrize("normalization", ["neural-style", "gatys"])
def test_guided_loss_and_gradient_match_torch_reference(vgg, normalization):
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(1, H, W, 3)).astype(np.float32)
    content = rng.uniform(size=(1, H, W, 3)).astype(np.float32)
    styles = [rng.uniform(size=(28, 36, 3)).astype(np.float32),
              rng.uniform(size=(40, 24, 3)).astype(np.float32)]
    region_styles = np.array([[1.0, 0.0], [0.3, 0.7]], np.float32)
    masks = two_regions(H, W)
    style0_masks = np.stack([rng.uniform(size=(28, 36)), np.ones((28, 36))]).astype(np.float32)
    cfg = Config().replace(content_layers=("relu2_1",), style_layers=LAYERS,
                           style_layer_weights=(1.0, 2.0), normalization=normalization,
                           style_weight=1e3, content_weight=0.0,
                           tv_weight=0.0)  # the style term alone
    spec = losses.LossSpec.from_config(cfg)
    content_g = guidance.layer_masks(masks, H, W, LAYERS)
    style_g = [guidance.layer_masks(style0_masks, 28, 36, LAYERS), None]
    targets = jax.jit(losses.guided_targets)(
        vgg, jnp.asarray(content), [jnp.asarray(s)[None] for s in styles], style_g,
        jnp.asarray(region_styles), content_g, spec)
    (loss, terms), grad = jax.jit(jax.value_and_grad(losses.total_loss, argnums=1, has_aux=True))(
        vgg, jnp.asarray(x), targets, spec)

    # Reference: the same per-layer guidance arrays, everything else written independently.
    normalize = normalization != "gatys"
    sf = [ref.torch_features(vgg.params, CAFFE, s[None], LAYERS) for s in styles]
    t = {}
    for name in LAYERS:
        whole = ref.torch_gram(sf[1][name], normalize)[0]
        g0 = torch_guided_gram(sf[0][name], torch.as_tensor(np.asarray(style_g[0][name], np.float64)),
                               normalize)
        t[name] = [region_styles[r, 0] * g0[r] + region_styles[r, 1] * whole for r in range(2)]
    xt = torch.as_tensor(x, dtype=torch.float64).requires_grad_(True)
    feats = ref.torch_features(vgg.params, CAFFE, xt, LAYERS)
    style = 0.0
    for name, weight in zip(LAYERS, (1e3, 2e3)):
        g = torch.as_tensor(np.asarray(content_g[name], np.float64))
        _, c, h, w = feats[name].shape
        grams = torch_guided_gram(feats[name], g, normalize)
        for r in range(2):
            sq = ((grams[r] - t[name][r]) ** 2).sum()
            sq = sq / (4 * c**2 * (h * w) ** 2) if not normalize else sq / c**2
            style = style + weight * (g[r] ** 2).sum() / (h * w) * sq
    (ref_grad,) = torch.autograd.grad(style, xt)
    style = float(style.detach())
    assert style > 0 and rel(terms["style"], style) < 1e-4
    assert rel(loss, style) < 1e-4
    assert rel(grad, ref_grad.numpy()) < 1e-4


def test_guided_loss_in_bfloat16_is_close_to_float32(vgg):
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.uniform(size=(1, H, W, 3)), jnp.float32)
    spec = losses.LossSpec.from_config(Config().replace(content_layers=("relu2_1",),
                                                        style_layers=LAYERS))
    style = jnp.asarray(rng.uniform(size=(1, 24, 24, 3)), jnp.float32)
    content_g = guidance.layer_masks(two_regions(H, W), H, W, LAYERS)
    targets = losses.guided_targets(vgg, x, [style], [None], jnp.asarray([[1.0], [1.0]]),
                                    content_g, spec)
    objective = jax.jit(jax.value_and_grad(lambda im, d: losses.total_loss(vgg, im, targets, spec,
                                                                            d)[0]),
                        static_argnums=1)
    (l32, g32), (l16, g16) = objective(x * 0.9, jnp.float32), objective(x * 0.9, jnp.bfloat16)
    assert l32 > 0 and rel(l16, l32) < 0.05 and rel(g16, g32) < 0.1


def test_guidance_of_ones_is_the_plain_style_term(vgg):
    rng = np.random.default_rng(1)
    feats = jnp.asarray(rng.uniform(size=(2, 8, 12, 16)), jnp.float32)
    target = jnp.asarray(rng.uniform(size=(1, 16, 16)), jnp.float32)
    ones = jnp.ones((1, 8, 12))
    for normalization in ("neural-style", "gatys"):
        normalize = normalization != "gatys"
        np.testing.assert_allclose(losses.guided_gram(feats, ones, normalize)[:, 0],
                                   losses.gram_matrix(feats, normalize), rtol=1e-5)
        np.testing.assert_allclose(
            losses.guided_style_loss(feats, target[:, None], ones, normalization),
            losses.style_loss(feats, target, normalization), rtol=1e-5)


def test_layer_masks_follow_every_layer_size():
    masks = two_regions(H, W)
    per_layer = guidance.layer_masks(masks, H, W, ("relu1_1", "relu2_1", "relu3_1"))
    for name, size in (("relu1_1", (H, W)), ("relu2_1", (H // 2, W // 2)),
                       ("relu3_1", (H // 4, W // 4))):
        m = np.asarray(per_layer[name])
        assert m.shape == (2,) + size and m.min() >= 0 and m.max() <= 1
        np.testing.assert_allclose(m[0, :, 0], 1.0, atol=1e-6)  # left edge: all region 0
        np.testing.assert_allclose(m[1, :, -1], 1.0, atol=1e-6)
        np.testing.assert_allclose(m.sum(0), 1.0, atol=1e-5)  # a partition stays a partition


# ------------------------------------------------------------------------------------------------
# The effect on a tiny image: each half takes its own style; an unmasked half keeps the content.


def _styles():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:40, :40]
    stripes = np.zeros((40, 40, 3), np.float32)
    stripes[..., 0] = (yy // 3) % 2  # red and black horizontal stripes
    stripes[..., 1] = 0.1
    noise = np.stack([0.1 + 0 * xx, 0.8 * rng.random((40, 40)), 0.2 + 0.8 * rng.random((40, 40))],
                     -1).astype(np.float32)  # green-blue noise
    return stripes, noise


def _content():
    yc, xc = np.mgrid[:H, :W] / max(H, W)  # smooth, so that TV alone changes nothing
    return np.stack([0.3 + 0.4 * xc, 0.6 - 0.3 * yc, 0.5 + 0 * xc], -1).astype(np.float32)


EFFECT = Config().replace(style_layers=LAYERS, content_layers=("relu2_1",), optimizer="adam",
                          num_iterations=30, image_size=W)
SEAM = 10  # columns left out on each side of the seam: relu2_1's receptive field


def gram_distance(vgg, image, style) -> float:
    """Σ over layers of ‖G(image) − G(style)‖² / ‖G(style)‖², Grams from the float64 reference."""
    fi = ref.torch_features(vgg.params, CAFFE, image[None], LAYERS)
    fs = ref.torch_features(vgg.params, CAFFE, style[None], LAYERS)
    return sum(float(((ref.torch_gram(fi[k]) - ref.torch_gram(fs[k])) ** 2).sum()
                     / (ref.torch_gram(fs[k]) ** 2).sum()) for k in LAYERS)


def test_two_styles_with_left_right_masks_each_half_takes_its_own(vgg):
    stripes, noise = _styles()
    left = np.zeros((H, W), np.float32)
    left[:, :W // 2] = 1
    out = stylize.stylize(vgg, _content(), [stripes, noise], EFFECT,
                          guidance=guidance.from_masks(2, [left, 1 - left]))
    lhalf, rhalf = out[:, :W // 2 - SEAM], out[:, W // 2 + SEAM:]
    # Measured: left 0.20 (own style) vs 8.0 (the other); right 0.48 vs 1.42 (the same with a
    # 10x larger style weight: the margin does not hang on one setting).
    assert 10 * gram_distance(vgg, lhalf, stripes) < gram_distance(vgg, lhalf, noise)
    assert 2 * gram_distance(vgg, rhalf, noise) < gram_distance(vgg, rhalf, stripes)


def test_one_style_with_a_half_mask_leaves_the_other_half_as_content(vgg):
    stripes, _ = _styles()
    content = _content()
    left = np.zeros((H, W), np.float32)
    left[:, :W // 2] = 1
    out = stylize.stylize(vgg, content, [stripes], EFFECT, guidance=guidance.from_masks(1, [left]))
    changed = np.abs(out[:, :W // 2 - SEAM] - content[:, :W // 2 - SEAM]).mean()
    kept = np.abs(out[:, W // 2 + SEAM:] - content[:, W // 2 + SEAM:]).mean()
    assert changed > 0.2 and kept < 0.02, (changed, kept)  # measured 0.39 and 0.006


# ------------------------------------------------------------------------------------------------
# Semantic maps.


def _jpeg(image: np.ndarray, path) -> np.ndarray:
    Image.fromarray((image * 255).astype(np.uint8)).save(path, quality=75)
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), np.float32) / 255


RED, GREEN, BLUE = (1.0, 0.0, 0.0), (0.0, 0.6, 0.0), (0.0, 0.0, 1.0)


def test_noisy_jpeg_maps_give_their_colours_and_region_pairs(tmp_path):
    content_map = np.zeros((48, 64, 3), np.float32)
    content_map[:, :20], content_map[:, 20:40], content_map[:, 40:] = RED, GREEN, BLUE
    style_map = np.zeros((40, 40, 3), np.float32)
    style_map[:20], style_map[20:] = BLUE, RED
    content_map, style_map = _jpeg(content_map, tmp_path / "c.jpg"), _jpeg(style_map, tmp_path / "s.jpg")
    assert len(guidance.palette(content_map)) == 3 and len(guidance.palette(style_map)) == 2
    with pytest.warns(JaxstyleWarning, match="are in no style map"):  # green
        g = guidance.from_maps(content_map, [style_map])
    assert g.num_regions == 2 and len(g.labels) == 2
    for columns, rows in ((slice(0, 20), slice(20, 40)), (slice(40, 64), slice(0, 20))):  # red, blue
        # The content region and the style region of one colour are the same label.
        region = int(np.argmax(g.content_masks[:, :, columns].mean(axis=(1, 2))))
        assert g.content_masks[region][:, columns].mean() > 0.95
        assert g.style_masks[0][region][rows].mean() > 0.95
        assert g.style_masks[0][region].mean() < 0.55  # and only that part of the style image
    assert g.content_masks[:, :, 22:38].sum() == 0  # green keeps its content: no region there
    with pytest.raises(JaxstyleError, match="no style map"):
        guidance.from_maps(content_map, [np.full((40, 40, 3), 0.5, np.float32)])


# ------------------------------------------------------------------------------------------------
# Colour matching.


def test_match_colors_gives_the_contents_mean_and_covariance():
    rng = np.random.default_rng(0)
    mix = np.array([[0.2, 0.05, 0.0], [0.05, 0.1, 0.03], [0.0, 0.02, 0.15]])
    content = np.clip(0.5 + rng.standard_normal((30, 40, 3)) @ mix, 0, 1).astype(np.float32)
    style = rng.uniform(size=(25, 35, 3)).astype(np.float32) ** 2  # dark, uncorrelated
    out = imageops.match_colors(style, content, clip=False).reshape(-1, 3).astype(np.float64)
    c = content.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(out.mean(0), c.mean(0), atol=1e-3)
    np.testing.assert_allclose(np.cov(out, rowvar=False), np.cov(c, rowvar=False), atol=1e-3)
    clipped = imageops.match_colors(style, content)
    assert clipped.shape == style.shape and clipped.min() >= 0 and clipped.max() <= 1


# ------------------------------------------------------------------------------------------------
# The CLI: every bad input is one line, nothing is written.

FAST = ["--image-size", "32", "--num-iterations", "3", "--quiet", "--style-layers",
        "relu1_1,relu2_1", "--content-layers", "relu2_1"]


def _save(path, array):
    Image.fromarray((np.asarray(array) * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("guidance")
    rng = np.random.default_rng(0)
    left = np.zeros((24, 32), np.float32)
    left[:, :16] = 1
    cmap = np.zeros((24, 32, 3), np.float32)
    cmap[:, :16], cmap[:, 16:] = RED, BLUE
    smap = np.zeros((30, 30, 3), np.float32)
    smap[:15], smap[15:] = RED, GREEN
    (d / "text.png").write_text("not an image")
    return {"content": _save(d / "content.png", rng.random((24, 32, 3))),
            "style": _save(d / "style.png", rng.random((30, 30, 3))),
            "style2": _save(d / "style2.png", rng.random((20, 36, 3))),
            "left": _save(d / "left.png", left), "right": _save(d / "right.png", 1 - left),
            "black": _save(d / "black.png", np.zeros((8, 8))), "text": d / "text.png",
            "cmap": _save(d / "cmap.png", cmap), "smap": _save(d / "smap.png", smap),
            "grey_map": _save(d / "grey.png", np.full((30, 30, 3), 0.5))}


@pytest.mark.slow
def test_cli_masks_maps_doodle_and_color_match_write_outputs(capsys, files, keras_safetensors,
                                                             tmp_path):
    f = files
    common = ["--weights", keras_safetensors, *FAST]
    code, _, err = run_cli(capsys, "stylize", f["content"], "--style", f["style"], f["style2"],
                           "--style-masks", f["left"], f["right"], "--style-region-masks", f["left"],
                           f["right"], "--original-colors", "-o", tmp_path / "masks.png", *common)
    assert code == 0 and (tmp_path / "masks.png").exists(), err
    # Paint a doodle: no content image, a content map and noise.
    code, _, err = run_cli(capsys, "stylize", "--style", f["style"], "--content-map", f["cmap"],
                           "--style-map", f["smap"], "--init", "noise", "--optimizer", "adam",
                           "-o", tmp_path / "doodle.png", *common, "--scales", "16,32")
    assert code == 0 and (tmp_path / "doodle.png").exists(), err
    assert "jaxstyle: warning: content-map colour(s) #0000ff are in no style map" in err
    code, _, err = run_cli(capsys, "stylize", f["content"], "--style", f["style"], "--color-match",
                           "-o", tmp_path / "matched.png", *common)
    assert code == 0 and (tmp_path / "matched.png").exists(), err


BAD = {
    "mask not an image": (["--style-masks", "text"], "is not an image"),
    "mask count": (["--style-masks", "left", "right"], "2 --style-masks given for 1 style images"),
    "region mask count": (["--style-region-masks", "left", "right"], "--style-region-masks"),
    "all-black mask": (["--style-masks", "black"], "is all black"),
    "map not an image": (["--content-map", "text", "--style-map", "smap"], "is not an image"),
    "no colour in common": (["--content-map", "cmap", "--style-map", "grey_map"], "in no style map"),
    "map without style map": (["--content-map", "cmap"], "go together"),
    "maps and masks": (["--content-map", "cmap", "--style-map", "smap", "--style-masks", "left"],
                       "not both"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_cli_bad_guidance_is_one_line_and_writes_nothing(capsys, files, keras_safetensors,
                                                         tmp_path, case):
    extra, fragment = BAD[case]
    extra = [files.get(a, a) for a in extra]
    out = tmp_path / "out.png"
    code, _, err = run_cli(capsys, "stylize", files["content"], "--style", files["style"],
                           "--weights", keras_safetensors, "-o", out, *FAST, *extra)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and lines[0].startswith("jaxstyle: error: "), err
    assert fragment in lines[0] and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_cli_no_content_and_batches_are_one_line_errors(capsys, files, keras_safetensors, tmp_path):
    f = files
    cases = [
        (["--style", f["style"], "-o", tmp_path / "o.png"], "no content image"),
        (["--style", f["style"], "--content-map", f["cmap"], "--style-map", f["smap"],
          "-o", tmp_path / "o.png"], "--init noise"),
        ([f["content"], f["content"], "--style", f["style"], "--style-masks", f["left"],
          "-o", tmp_path / "o"], "one content image at a time"),
    ]
    for argv, fragment in cases:
        code, _, err = run_cli(capsys, "stylize", *argv, "--weights", keras_safetensors, *FAST)
        assert code == 1 and err.count("\n") == 1 and fragment in err, err
    assert list(tmp_path.iterdir()) == []
