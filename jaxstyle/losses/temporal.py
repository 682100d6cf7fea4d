"""The temporal term of a film's frame (Ruder et al. 2016)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxstyle.losses.terms import sum_per_image

Array = jax.Array


# Temporal consistency of a film (Ruder et al. 2016, "Artistic style transfer for videos", eq. 7).
# Additive: without `Targets.temporal` (and `LossSpec.temporal_weight`) nothing above changes.


def temporal_loss(images: Array, warped: Array, mask: Array) -> Array:
    """Ruder et al.'s short-term temporal term, Σ c·(x − ω)² / (H·W·3), on the [0, 1] scale.

    The sum runs over pixels and channels; ω is the previous stylized frame warped onto this one
    (`jaxstyle.warp.warp`) and c the weights of `jaxstyle.warp.occlusion_mask` (0 where the
    previous frame does not see the pixel). On [0, 1] the term is 255² ≈ 6.5e4 times smaller than
    on neural-style's 0–255 scale, where Ruder et al. weigh it 1e3 (see `jaxstyle.video`).

    Args:
      images: float32[B, H, W, 3].
      warped: float32[B or 1, H, W, 3].
      mask: float32[B or 1, H, W, 1] (or [.., H, W, 3]) in [0, 1].

    Returns:
      float32[B].
    """
    diff = images.astype(jnp.float32) - warped.astype(jnp.float32)
    weighted = jnp.broadcast_to(mask.astype(jnp.float32) * diff * diff, images.shape)
    _, h, w, c = images.shape
    return sum_per_image(weighted) / (h * w * c)
