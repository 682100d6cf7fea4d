"""Style-transfer losses: pure functions on arrays, safe under ``jit``, ``grad`` and ``vmap``.

Building blocks (`gram_matrix`, `content_loss`, `style_loss`, `total_variation`) return one value
per image (``float32[B]``) so batches of independent images stay independent. `LossSpec` carries the
layer names (static) and weights (runtime arrays: changing them does not recompile); `targets`
computes the content features and blended style Grams once; `total_loss` puts them together.

Two normalizations, side by side (C channels, N = H·W positions, F: float[B, N, C] features):

=============  ==================================  =====================================
term           "neural-style" (jcjohnson, default)  "gatys" (Gatys et al. 2016)
=============  ==================================  =====================================
Gram           FᵀF / (C·N)                         FᵀF
style layer    mean((G − A)²) over C²               Σ(G − A)² / (4·C²·N²)
content layer  mean((F − P)²) over N·C              ½·Σ(F − P)²
=============  ==================================  =====================================

Total variation is ½·Σ(255·Δx)² over horizontal and vertical neighbours (neural-style's TV on its
0–255 pixel scale), for both.

One module per concept: `terms` (Gram, content, style, TV), `objective` (the assembled loss), `w2`
(Wasserstein-2 style), `guided` (style by region), `masked` (padded images), `temporal` (films),
`relative` (weights relative to the targets' scales). Their public names are all here.
"""

from jaxstyle.losses.guided import guided_gram, guided_style_loss, guided_style_targets
from jaxstyle.losses.masked import (masked_content_loss, masked_gram, masked_style_loss,
                                    masked_total_variation, masked_w2_style_loss)
from jaxstyle.losses.relative import relative_spec, target_scales
from jaxstyle.losses.objective import (LossSpec, Targets, content_targets, guided_targets, loss_terms,
                                  style_grams, style_targets, targets, total_loss)
from jaxstyle.losses.temporal import temporal_loss
from jaxstyle.losses.terms import content_loss, gram_matrix, style_loss, total_variation
from jaxstyle.losses.w2 import (feature_moments, packed_moments, sqrtm_psd, w2_from_moments,
                                w2_style_loss, w2_target)

__all__ = [
    "LossSpec", "Targets", "targets", "content_targets", "style_targets", "style_grams",
    "loss_terms", "total_loss", "gram_matrix", "content_loss", "style_loss", "total_variation",
    "relative_spec", "target_scales", "sqrtm_psd", "feature_moments", "packed_moments",
    "w2_target", "w2_style_loss", "w2_from_moments", "guided_gram", "guided_style_loss",
    "guided_targets", "guided_style_targets", "temporal_loss", "masked_content_loss",
    "masked_gram", "masked_style_loss", "masked_w2_style_loss", "masked_total_variation",
]
