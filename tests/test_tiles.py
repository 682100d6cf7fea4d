"""One image in overlapping tiles on one device (`jaxstyle.tiles`, issue 27), against whole-image
references: the Gram of the whole image, the gradient of `losses.total_loss`, an untiled run."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstyle import losses, optimize, sources, stylize, tiles
from jaxstyle.config import Config
from jaxstyle.models import vgg19

LAYERS = ("relu1_1", "relu2_1", "relu3_1")  # receptive-field radius 13 px at relu3_1
SIZE, TILE, OVERLAP = 96, 64, 32  # 2 x 2 tiles; each crop reaches 16 px past what it owns


@pytest.fixture(scope="module")
def setup():
    cfg = Config().replace(optimizer="adam", content_layers=("relu3_1",), style_layers=LAYERS,
                           num_iterations=12, init="content", image_size=SIZE)
    spec = losses.LossSpec.from_config(cfg)
    vgg = optimize.prepared(vgg19.init(jax.random.key(0), sources.TORCHVISION, "relu3_1"), spec)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    content = np.stack([0.5 + 0.4 * np.sin(6 * yy + 1), 0.5 + 0.4 * np.cos(5 * xx),
                        0.5 + 0.3 * np.sin(4 * (xx + yy))], -1).astype(np.float32)
    style = np.random.default_rng(0).random((64, 64, 3), dtype=np.float32)
    targets = losses.targets(vgg, jnp.asarray(content)[None], [jnp.asarray(style)[None]],
                             np.ones(1, np.float32), spec)
    return cfg, spec, vgg, content, style, targets


def test_the_tiles_own_a_partition_and_their_grams_sum_to_the_whole_gram(setup):
    _, _, vgg, content, _, _ = setup
    grid = tiles.grid(SIZE, SIZE, TILE, OVERLAP)
    assert len(grid) == 4
    owned = sum(tiles.owned_mask(t, (SIZE, SIZE)) for t in
                [tiles.Tile(0, 0, t.owned) for t in grid])
    np.testing.assert_array_equal(owned, np.ones((SIZE, SIZE)))  # every pixel owned once
    parts = tiles.gram_parts(vgg, jnp.asarray(content), grid, TILE, LAYERS)
    whole = vgg19.features(vgg, jnp.asarray(content)[None], LAYERS)
    for name in LAYERS:
        f = whole[name][0].reshape(-1, whole[name].shape[-1])
        gram = f.T @ f
        # Exact but for the summation order: float32 sums of ~10^3 products, bound 1e-5
        # relative to the largest entry (measured 2e-7 to 5e-7).
        error = jnp.max(jnp.abs(sum(p[name] for p in parts) - gram)) / jnp.max(jnp.abs(gram))
        assert float(error) < 1e-5, (name, float(error))


def test_the_tiled_gradient_is_the_whole_image_gradient(setup):
    cfg, spec, vgg, content, _, targets = setup
    image = jnp.asarray(np.clip(content + 0.1 * np.random.default_rng(1).standard_normal(
        content.shape), 0, 1), jnp.float32)
    grid = tiles.grid(SIZE, SIZE, TILE, OVERLAP)
    contents = [{k: v[0] for k, v in vgg19.features(
        vgg, jnp.asarray(content)[None, t.y:t.y + TILE, t.x:t.x + TILE],
        spec.content_layers).items()} for t in grid]
    counts = {n: np.float32(np.prod(vgg19.output_shape(n, SIZE, SIZE))) for n in spec.layers}
    tiled = tiles.gradient(vgg, image, grid, TILE, contents, targets.style, spec, counts)
    whole = jax.grad(lambda x: losses.total_loss(vgg, x[None], targets, spec)[0])(image)
    # Each crop holds the receptive field of what it owns, so the sum of the crops' gradients is
    # the whole gradient up to float32 rounding: bound 1e-4 of its largest entry.
    scale = float(jnp.max(jnp.abs(whole)))
    assert float(jnp.max(jnp.abs(tiled - whole))) < 1e-4 * scale


def test_a_tiled_run_reaches_the_untiled_loss_without_seams(setup):
    cfg, spec, vgg, content, style, targets = setup
    out = tiles.stylize(vgg, content, [style], cfg, size=TILE, overlap=OVERLAP)
    ref = stylize.stylize_batch(vgg, content[None], [style], cfg).images[0]

    def loss(image):  # computed independently, on the whole output
        return float(losses.total_loss(vgg, jnp.asarray(image)[None], targets, spec)[0])

    # The bound: within 2 % of the untiled run's loss (the gradients agree to rounding,
    # which Adam's sign-like first steps amplify: measured 1 % after 20 steps).
    assert abs(loss(out) / loss(ref) - 1) < 0.02, (loss(out), loss(ref))
    # No seam: the gradient energy on the columns and rows where a crop starts or ends (1 px
    # either side) within 1.2x the median column's or row's (the bound).
    energy = (np.diff(out, axis=0)[:, :-1] ** 2 + np.diff(out, axis=1)[:-1] ** 2).sum(-1)
    grid = tiles.grid(SIZE, SIZE, TILE, OVERLAP)
    edges = sorted({t.x for t in grid if t.x > 0} | {t.x + TILE for t in grid
                                                     if t.x + TILE < SIZE})
    for profile in (energy.mean(axis=0), energy.mean(axis=1)):
        for e in edges:
            assert profile[e - 1:e + 1].mean() <= 1.2 * np.median(profile), (e, profile)
