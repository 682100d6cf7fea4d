"""Pure operations on image arrays (no files): sizes, resizing on the device, colour transfer.

An image is float32[..., H, W, 3], RGB in [0, 1]. `image_io` (Pillow, files) builds on these; the
numerical core (`stylize`, `batch`) uses them on device arrays.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from jaxstyle.errors import JaxstyleError

Array = jax.Array

# BT.601 RGB → YUV, as torch's image.rgb2yuv used by neural-style's -original_colors.
RGB_TO_YUV = np.array(
    [[0.299, 0.587, 0.114], [-0.14713, -0.28886, 0.436], [0.615, -0.51499, -0.10001]])
YUV_TO_RGB = np.linalg.inv(RGB_TO_YUV)  # the exact inverse, so an unchanged image round-trips


def fit_long_side(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(h, w) with the longer side equal to ``long_side``, aspect ratio kept, each side ≥ 1 px."""
    if long_side < 1:
        raise JaxstyleError(f"image size must be at least 1 pixel, got {long_side}")
    scale = long_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize(images: Array, height: int, width: int) -> Array:
    """float32[..., H, W, 3] -> float32[..., height, width, 3], Lanczos (antialiased when
    shrinking), clipped to [0, 1]. Jittable; returns ``images`` itself when the size matches."""
    if images.shape[-3:-1] == (height, width):
        return images
    return _resize(images, height, width)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _resize(images: Array, height: int, width: int) -> Array:
    # Jitted: called eagerly (on the host's loaded images), jax.image.resize would dispatch and
    # compile each of its ~20 primitives as a program of its own, in every process (~2 s).
    if images.ndim > 3:
        # One image at a time: a batched resize folds the images into the rows of its matrix
        # products, whose rounding then depends on the batch size (see `problems.over_problems`).
        flat = images.reshape((-1,) + images.shape[-3:])
        return lax.map(lambda image: _resize(image, height, width), flat).reshape(
            images.shape[:-3] + (height, width, images.shape[-1]))
    return jnp.clip(jax.image.resize(images, (height, width, images.shape[-1]), "lanczos3"),
                    0.0, 1.0)


def original_colors(stylized: Array, content: Array) -> Array:
    """Luminance transfer: the stylized image's brightness in the content image's colours.

    As neural-style's ``-original_colors 1``: both images go to YUV (BT.601), the result takes Y
    from ``stylized`` and U, V from ``content``, and goes back to RGB, clipped to [0, 1]. The
    style's textures and shading stay; its palette is replaced by the content's.

    Args:
      stylized, content: float[..., H, W, 3] in [0, 1], the same shape.
    Returns:
      float32[..., H, W, 3] in [0, 1].
    """
    stylized = jnp.asarray(stylized, jnp.float32)
    content = jnp.asarray(content, jnp.float32)
    luma = stylized @ jnp.asarray(RGB_TO_YUV[0], jnp.float32)
    yuv = (content @ jnp.asarray(RGB_TO_YUV.T, jnp.float32)).at[..., 0].set(luma)
    return jnp.clip(yuv @ jnp.asarray(YUV_TO_RGB.T, jnp.float32), 0.0, 1.0)


def _sym_power(cov: np.ndarray, power: float) -> np.ndarray:
    values, vectors = np.linalg.eigh(cov)
    values = np.maximum(values, 1e-8)  # a flat (e.g. grey) image has a singular covariance
    return (vectors * values**power) @ vectors.T


def match_colors(style: np.ndarray, content: np.ndarray, clip: bool = True) -> np.ndarray:
    """Colour matching (Gatys et al. 2017, section 5.1): ``style`` recoloured so that its RGB mean
    and covariance are the ``content``'s, by the affine map x ↦ A(x − μ_s) + μ_c with
    A = Σ_c^½ Σ_s^-½ (symmetric square roots, the "image analogies" variant).

    The style's textures and brushwork stay; its palette becomes the content's, so the transfer
    then keeps the content's colours while stylizing everything else (compare `original_colors`).

    Args:
      style, content: float[H, W, 3] (sizes may differ) in [0, 1].
      clip: clip the result to [0, 1] (moments are exact only where nothing was clipped).
    Returns:
      float32[Hs, Ws, 3].
    """
    s = np.asarray(style, np.float64).reshape(-1, 3)
    c = np.asarray(content, np.float64).reshape(-1, 3)
    mu_s, mu_c = s.mean(0), c.mean(0)
    cov_s = np.cov(s, rowvar=False, bias=True)
    cov_c = np.cov(c, rowvar=False, bias=True)
    a = _sym_power(cov_c, 0.5) @ _sym_power(cov_s, -0.5)
    out = (s - mu_s) @ a.T + mu_c
    if clip:
        out = np.clip(out, 0.0, 1.0)
    return out.reshape(np.shape(style)).astype(np.float32)
