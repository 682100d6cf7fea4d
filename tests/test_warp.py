"""`jaxstyle.warp` against known answers (whole-pixel translations, a square moving over a static
background) and SciPy's bilinear interpolation as an independent reference."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from jaxstyle import warp

H, W = 24, 32


def random_image(seed=0, shape=(H, W, 3)):
    return np.random.default_rng(seed).uniform(size=shape).astype(np.float32)


def constant_flow(dx, dy, h=H, w=W):
    flow = np.zeros((h, w, 2), np.float32)
    flow[..., 0], flow[..., 1] = dx, dy
    return flow


@pytest.mark.parametrize("dx,dy", [(3, 0), (0, -2), (2, 5), (-4, -1)])
def test_warp_undoes_a_whole_pixel_translation(dx, dy):
    # Frame t is frame t-1 moved by (dx, dy): next[y, x] = previous[y - dy, x - dx]. The flow
    # t -> t-1 is (-dx, -dy) everywhere; wherever the source lies in the frame the warp is exact.
    previous = random_image()
    expected = np.roll(previous, (dy, dx), axis=(0, 1))
    out = np.asarray(warp.warp(previous, constant_flow(-dx, -dy)))
    ys = slice(max(dy, 0), H + min(dy, 0))
    xs = slice(max(dx, 0), W + min(dx, 0))
    np.testing.assert_array_equal(out[ys, xs], expected[ys, xs])


def test_warp_is_bilinear_like_scipy():
    image = random_image(1)
    rng = np.random.default_rng(2)
    flow = rng.uniform(-3, 3, size=(H, W, 2)).astype(np.float32)
    y, x = np.mgrid[0:H, 0:W].astype(np.float64)
    coords = [np.clip(y + flow[..., 1], 0, H - 1), np.clip(x + flow[..., 0], 0, W - 1)]
    expected = np.stack([ndimage.map_coordinates(image[..., c].astype(np.float64), coords,
                                                 order=1, mode="nearest") for c in range(3)], -1)
    np.testing.assert_allclose(np.asarray(warp.warp(image, flow)), expected, atol=2e-6)


def test_half_pixel_is_the_mean_of_neighbours():
    image = random_image(3)
    out = np.asarray(warp.warp(image, constant_flow(0.5, 0)))
    np.testing.assert_allclose(out[:, :-1], 0.5 * (image[:, :-1] + image[:, 1:]), atol=1e-6)


# A square of side S moving right by D pixels a frame over a static background.
S, D, X0, Y0 = 8, 3, 6, 8


def moving_square_flows():
    fwd = np.zeros((H, W, 2), np.float32)  # t-1 -> t, on t-1's grid: the square moves by +D
    fwd[Y0:Y0 + S, X0:X0 + S, 0] = D
    bwd = np.zeros((H, W, 2), np.float32)  # t -> t-1, on t's grid: the square came from -D
    bwd[Y0:Y0 + S, X0 + D:X0 + D + S, 0] = -D
    return fwd, bwd


def test_occlusion_mask_finds_the_disoccluded_strip_and_boundaries():
    fwd, bwd = moving_square_flows()
    mask = np.asarray(warp.occlusion_mask(fwd, bwd))
    assert mask.shape == (H, W) and set(np.unique(mask)) <= {0.0, 1.0}
    # Revealed background behind the square (columns X0 .. X0+D): seen in t, hidden in t-1.
    assert np.all(mask[Y0:Y0 + S, X0:X0 + D] == 0)
    # The square's inside (one pixel from its edges, where the flow is smooth) is consistent.
    assert np.all(mask[Y0 + 1:Y0 + S - 1, X0 + D + 1:X0 + D + S - 1] == 1)
    # Its edges are motion boundaries: central differences see the jump on both sides of it.
    assert np.all(mask[Y0:Y0 + S, X0 + D + S - 1:X0 + D + S + 1] == 0)
    assert np.all(mask[Y0 - 1, X0 + D:X0 + D + S] == 0)
    # Static background two pixels away from the square (before and after) is visible.
    far = np.ones((H, W), bool)
    far[Y0 - 2:Y0 + S + 2, X0 - 2:X0 + D + S + 2] = False
    assert np.all(mask[far] == 1)


def test_occlusion_mask_of_a_pan_marks_what_leaves_the_frame():
    # A camera pan: everything moves by +2 columns. Column 0..1 of frame t came from outside t-1.
    mask = np.asarray(warp.occlusion_mask(constant_flow(2, 0), constant_flow(-2, 0)))
    assert np.all(mask[:, :2] == 0) and np.all(mask[:, 2:] == 1)


def test_inconsistent_flows_are_occluded():
    # Forward and backward flows that disagree by more than the threshold √0.5 ≈ 0.71 px.
    mask = np.asarray(warp.occlusion_mask(constant_flow(0, 0), constant_flow(-1, 0)))
    assert np.all(mask[:, 1:] == 0)
    mask = np.asarray(warp.occlusion_mask(constant_flow(0.5, 0), constant_flow(-1, 0)))
    assert np.all(mask[:, 1:] == 1)  # |w + ŵ|² = 0.25 < 0.01·1.25 + 0.5


def test_warping_error_is_zero_on_an_exact_pan_and_matches_numpy():
    big = random_image(4, (H, W + 12, 3))
    frames = np.stack([big[:, 12 - 2 * t:12 - 2 * t + W] for t in range(5)])  # content moves +2/frame
    flows = np.stack([constant_flow(-2, 0)] * 4)
    masks = np.stack([np.asarray(warp.occlusion_mask(constant_flow(2, 0), f)) for f in flows])
    assert float(warp.warping_error(frames, flows, masks)) == pytest.approx(0.0, abs=1e-12)
    # A flickering film: NumPy's Lai et al. error with the same warps (exact whole-pixel rolls).
    noisy = frames + 0.1 * random_image(5, frames.shape)
    errors = []
    for t in range(1, 5):
        warped = np.roll(noisy[t - 1], 2, axis=1)
        sq = np.sum((noisy[t] - warped) ** 2, -1)
        errors.append(np.sum(sq * masks[t - 1]) / np.sum(masks[t - 1]))
    np.testing.assert_allclose(np.asarray(warp.pair_warping_errors(noisy, flows, masks)), errors,
                               rtol=1e-5)
    assert float(warp.warping_error(noisy, flows, masks)) == pytest.approx(np.mean(errors), rel=1e-5)
