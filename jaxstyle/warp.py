"""Warping frames by optical flow, occlusion masks and the flicker metric: pure functions on arrays.

Conventions (one film, frames t-1 → t):

* A flow is float32[H, W, 2] in pixels, (dx, dy): the pixel at (x, y) of the frame the flow is laid
  on moves to (x + dx, y + dy) in the other frame.
* ``flow_fwd`` (t-1 → t) is laid on frame t-1's grid; ``flow_bwd`` (t → t-1) on frame t's.
* ``warp(previous, flow_bwd)`` brings frame t-1 onto frame t's grid (backward warping: every pixel
  of t samples t-1 at x + flow_bwd(x), bilinearly).

These are what `jaxstyle video` needs (Ruder et al. 2016, "Artistic style transfer for videos") and
what the flicker benchmark measures (Lai et al. 2018, "Learning Blind Video Temporal Consistency").
No file or library I/O here; `jaxstyle.flow` computes flows from frames, `jaxstyle.video_io` reads
and writes films.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

# Ruder et al. 2016 (after Sundaram et al. 2010): forward-backward consistency and motion boundaries.
CONSISTENCY_RELATIVE = 0.01
CONSISTENCY_ABSOLUTE = 0.5
BOUNDARY_RELATIVE = 0.01
BOUNDARY_ABSOLUTE = 0.002


def _sample(image: Array, x: Array, y: Array) -> Array:
    """Bilinear samples of image float[H, W, C] at float coordinates x, y [H, W]; coordinates are
    clamped to the frame (edge pixels repeat)."""
    h, w = image.shape[:2]
    x = jnp.clip(x, 0.0, w - 1.0)
    y = jnp.clip(y, 0.0, h - 1.0)
    x0 = jnp.clip(jnp.floor(x), 0, w - 1).astype(jnp.int32)
    y0 = jnp.clip(jnp.floor(y), 0, h - 1).astype(jnp.int32)
    x1 = jnp.minimum(x0 + 1, w - 1)
    y1 = jnp.minimum(y0 + 1, h - 1)
    fx = (x - x0)[..., None]
    fy = (y - y0)[..., None]
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def _grid(h: int, w: int) -> tuple[Array, Array]:
    y, x = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                        indexing="ij")
    return x, y


def warp(image: Array, flow: Array) -> Array:
    """Backward bilinear warp: out[y, x] = image[y + flow[y, x, 1], x + flow[y, x, 0]].

    Args:
      image: float32[H, W, C].
      flow: float32[H, W, 2] in pixels, (dx, dy), laid on the output's grid (for a previous frame:
        the backward flow t → t-1).

    Returns:
      float32[H, W, C]. Samples outside the frame take the nearest edge pixel; `occlusion_mask`
      marks them invalid.
    """
    image = jnp.asarray(image, jnp.float32)
    flow = jnp.asarray(flow, jnp.float32)
    x, y = _grid(*image.shape[:2])
    return _sample(image, x + flow[..., 0], y + flow[..., 1])


def _squared_gradient(flow: Array) -> Array:
    """|∇flow|² = Σ over both components of (∂/∂x)² + (∂/∂y)², central differences inside the
    frame and one-sided ones at its edges (`numpy.gradient`)."""
    gy, gx = jnp.gradient(flow, axis=(0, 1))
    return jnp.sum(gx * gx + gy * gy, axis=-1)


def occlusion_mask(flow_fwd: Array, flow_bwd: Array) -> Array:
    """Where frame t's pixels are visible in frame t-1 too: 1 there, 0 where they are occluded or
    disoccluded, on motion boundaries, or carried out of the frame.

    Ruder et al. 2016, eqs. (5)-(6), after Sundaram et al. 2010: with ŵ = flow_bwd(x) and
    w̃ = flow_fwd(x + ŵ) (the forward flow sampled where x comes from),
      inconsistent:     |w̃ + ŵ|² > 0.01·(|w̃|² + |ŵ|²) + 0.5
      motion boundary:  |∇ŵ|²    > 0.01·|ŵ|² + 0.002
    and, beyond the paper, x + ŵ outside frame t-1 (nothing there to be consistent with).

    Args:
      flow_fwd: float32[H, W, 2], t-1 → t, on frame t-1's grid.
      flow_bwd: float32[H, W, 2], t → t-1, on frame t's grid.

    Returns:
      float32[H, W] of 0 and 1 (the weights c of the temporal loss).
    """
    flow_fwd = jnp.asarray(flow_fwd, jnp.float32)
    flow_bwd = jnp.asarray(flow_bwd, jnp.float32)
    h, w = flow_bwd.shape[:2]
    x, y = _grid(h, w)
    sx, sy = x + flow_bwd[..., 0], y + flow_bwd[..., 1]
    fwd_there = _sample(flow_fwd, sx, sy)
    total = fwd_there + flow_bwd
    inconsistent = (jnp.sum(total * total, -1) > CONSISTENCY_RELATIVE * (
        jnp.sum(fwd_there * fwd_there, -1) + jnp.sum(flow_bwd * flow_bwd, -1))
        + CONSISTENCY_ABSOLUTE)
    boundary = _squared_gradient(flow_bwd) > (
        BOUNDARY_RELATIVE * jnp.sum(flow_bwd * flow_bwd, -1) + BOUNDARY_ABSOLUTE)
    outside = (sx < 0) | (sx > w - 1) | (sy < 0) | (sy > h - 1)
    return jnp.where(inconsistent | boundary | outside, 0.0, 1.0).astype(jnp.float32)


def pair_warping_errors(frames: Array, flows_bwd: Array, masks: Array) -> Array:
    """Per pair of consecutive frames, Lai et al. 2018's temporal warping error:
    E_t = Σ_x M_t(x)·‖V_t(x) − warp(V_{t-1}, flow_t)(x)‖² / Σ_x M_t(x), the squared colour
    distance (summed over channels) averaged over the visible pixels. A pair with no visible
    pixel averages over all of them.

    Args:
      frames: float32[T, H, W, C], the output film (any scale; [0, 1] in jaxstyle).
      flows_bwd: float32[T-1, H, W, 2]: flow t → t-1 for t = 1 … T-1 (of the INPUT film).
      masks: float32[T-1, H, W], `occlusion_mask` of each pair (1: visible in both).

    Returns:
      float32[T-1].
    """
    frames = jnp.asarray(frames, jnp.float32)
    warped = jax.vmap(warp)(frames[:-1], flows_bwd)
    diff = jnp.sum((frames[1:] - warped) ** 2, axis=-1)  # [T-1, H, W]
    masks = jnp.asarray(masks, jnp.float32)
    count = jnp.sum(masks, axis=(1, 2))
    errors = jnp.sum(masks * diff, axis=(1, 2)) / jnp.maximum(count, 1e-12)
    return jnp.where(count > 0, errors, jnp.mean(diff, axis=(1, 2)))


def warping_error(frames: Array, flows_bwd: Array, masks: Array) -> Array:
    """The flicker metric of a film: the mean over its frame pairs of `pair_warping_errors`
    (Lai et al. 2018, eq. 12) -> float32[]."""
    return jnp.mean(pair_warping_errors(frames, flows_bwd, masks))


def affine_flow(height: int, width: int, shift: Array, angle: Array, scale: Array) -> Array:
    """The exact flow of a similarity transform about the frame's centre: the frame moved by it is
    ``warp(image, flow)``, whose pixel x samples the image at c + scale·R(angle)·(x − c) + shift.

    Args:
      shift: float32[2], (dx, dy) in pixels; angle: float32[] in radians; scale: float32[].

    Returns:
      float32[H, W, 2] (a whole-pixel shift with angle 0 and scale 1 is a constant flow).
    """
    x, y = _grid(height, width)
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    cos, sin = jnp.cos(angle) * scale, jnp.sin(angle) * scale
    px = cx + cos * (x - cx) - sin * (y - cy) + shift[0]
    py = cy + sin * (x - cx) + cos * (y - cy) + shift[1]
    return jnp.stack([px - x, py - y], axis=-1).astype(jnp.float32)


def inside_mask(flow: Array) -> Array:
    """float32[H, W]: 1 where x + flow(x) lies inside the frame (the warped image holds a real
    sample there), 0 where `warp` repeats an edge pixel."""
    h, w = flow.shape[:2]
    x, y = _grid(h, w)
    sx, sy = x + flow[..., 0], y + flow[..., 1]
    return ((sx >= 0) & (sx <= w - 1) & (sy >= 0) & (sy <= h - 1)).astype(jnp.float32)
