"""The key invariant crossed over its variants: a batch of problems equals each problem alone, for
Adam and L-BFGS × Gram and W2 style terms × plain and guided (masked) styles × float32 and
bfloat16 features.

Bound: with `Config.exact_batch` (the default's behaviour on a CPU) `stylize.stylize_batch` runs
each problem with the same per-problem program as a lone run (`problems.over_problems`), so the
results are observed equal to the last bit, on a CPU and on an H200 alike; 1e-6 leaves room for
float rounding without allowing the amplified differences of a batch that shares its matrix
products (1e-5 to 1e-3 after a few steps here: see
test_optimize.test_batch_of_problems_equals_each_alone; up to 40 levels of 255 on an H200)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from helpers import random_images
from jaxstyle import guidance, stylize
from jaxstyle.config import Config

SMALL = dict(style_layers=("relu1_1", "relu2_1"), content_layers=("relu2_1",), image_size=24,
             num_iterations=3, content_weight=1.0, style_weight=1e3, tv_weight=1e-4)
VARIANTS = [
    (optimizer, style_loss, guided, dtype)
    for optimizer, style_loss, guided, dtype in itertools.product(
        ("adam", "lbfgs"), ("gram", "w2"), (False, True), ("float32", "bfloat16"))
    # Masks guide Gram matrices only; W2's matrix square roots stay float32 whatever the
    # features' dtype, so its bfloat16 variant adds time, not coverage.
    if not (style_loss == "w2" and (guided or dtype == "bfloat16"))
]


def _half_mask(h: int, w: int) -> np.ndarray:
    mask = np.zeros((h, w), np.float32)
    mask[:, : w // 2] = 1.0
    return mask


@pytest.mark.parametrize("optimizer,style_loss,guided,dtype", VARIANTS,
                         ids=["-".join([o, s, "guided" if g else "plain", d])
                              for o, s, g, d in VARIANTS])
def test_a_batch_equals_each_problem_alone(vgg, optimizer, style_loss, guided, dtype):
    cfg = Config().replace(**SMALL, optimizer=optimizer, style_loss=style_loss, compute_dtype=dtype,
                           exact_batch=True)
    contents = np.stack(random_images(1, [(24, 24), (24, 24)]))
    style = random_images(2, [(20, 28)])
    guide = (guidance.from_masks(1, [_half_mask(24, 24)], None, cfg.loss.blend_weights(1))
             if guided else None)
    batch = stylize.stylize_batch(vgg, contents, style, cfg, guidance=guide)
    for i in range(2):
        alone = stylize.stylize_batch(vgg, contents[i:i + 1], style, cfg, guidance=guide)
        np.testing.assert_allclose(batch.images[i], alone.images[0], atol=1e-6)
        np.testing.assert_allclose(batch.loss[i], alone.loss[0], rtol=1e-6)
    # The runs moved the images away from their contents (where they started).
    assert np.abs(batch.images - contents).max() > 1e-3
