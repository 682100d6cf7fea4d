"""The targets of a run's problems, as compiled programs: the content images' features, the
style images' Grams (plain or guided, blended), and the per-problem loss spec (relative weights
from each problem's own targets). `stylize.stylize_batch` calls them once per scale.

Content targets are computed problem by problem (`problems.over_problems`), so that a problem's
targets, and so its run, are the same whatever batch it is in.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp

from jaxstyle import losses, optimize, problems
from jaxstyle.config import Config
from jaxstyle.models import vgg19

Array = jax.Array


def _content(vgg: vgg19.VGG, contents: Array, spec: losses.LossSpec, dtype: str,
             sequential: bool, valid: dict | None = None) -> dict:
    """{layer: float32[P, h, w, C]}: each of ``contents`` float32[P, H, W, 3]'s features, image by
    image as the same per-image program (`problems.over_problems`); ``valid``: a bucket's masks
    of the photo, {level: float32[P, ...]} (`jaxstyle.buckets`)."""
    if valid is None:
        one = lambda image: losses.content_targets(vgg, image[None], spec, jnp.dtype(dtype))  # noqa: E731
        return {k: v[:, 0] for k, v in problems.over_problems(one, sequential)(contents).items()}
    own = lambda image, masks: losses.content_targets(  # noqa: E731
        vgg, image[None], spec, jnp.dtype(dtype), {k: m[None] for k, m in masks.items()})
    return {k: v[:, 0] for k, v in problems.over_problems(own, sequential)(contents, valid).items()}


@functools.partial(jax.jit, static_argnames=("dtype", "sequential"))
def plain(vgg: vgg19.VGG, contents: Array, styles: Sequence[Array], blend: tuple[float, ...],
          spec: losses.LossSpec, dtype: str, sequential: bool,
          valid: dict | None = None) -> losses.Targets:
    """`losses.Targets` of ``contents`` float32[P, H, W, 3] and ``styles`` float32[Hs, Ws, 3]
    each, blended by ``blend`` (their batch axis is added here: eagerly, `[None]` was a program of
    its own per style shape)."""
    return losses.Targets(
        content=_content(vgg, contents, spec, dtype, sequential, valid),
        style=losses.style_targets(vgg, [s[None] for s in styles], blend, spec,
                                   jnp.dtype(dtype)))


# A bucketed run's targets, in two programs: a transposed portrait's content goes through the
# transposed network (`buckets.transposed_network`), its styles through the network as it is
# (their Grams do not depend on the photo's orientation). One program taking both networks
# instead broke batch = alone in bfloat16 (Adam, 3 steps: 6e-4 apart).
bucket_content = jax.jit(_content, static_argnames=("dtype", "sequential"))


@functools.partial(jax.jit, static_argnames=("dtype",))
def style(vgg: vgg19.VGG, styles: Sequence[Array], blend: tuple[float, ...],
          spec: losses.LossSpec, dtype: str) -> dict:
    """The blended style targets alone (a bucketed run's, see `bucket_content`)."""
    return losses.style_targets(vgg, [s[None] for s in styles], blend, spec, jnp.dtype(dtype))


@functools.partial(jax.jit, static_argnames=("dtype", "sequential"))
def guided(vgg: vgg19.VGG, contents: Array, styles: Sequence[Array], style_guidance,
           region_styles, content_guidance, spec: losses.LossSpec, dtype: str,
           sequential: bool) -> losses.Targets:
    """`plain`'s with each style confined to its regions (`losses.guided_style_targets`; the
    guidance as `guidance.Guidance` resizes it to the scale)."""
    return losses.Targets(
        content=_content(vgg, contents, spec, dtype, sequential),
        style=losses.guided_style_targets(vgg, [s[None] for s in styles], style_guidance,
                                          region_styles, spec,
                                          jnp.dtype(dtype)),
        guidance=dict(content_guidance))


@functools.partial(jax.jit, static_argnames=("relative", "sequential"))
def scaled_spec(spec: losses.LossSpec, targets: losses.Targets, contents: Array, relative: bool,
                sequential: bool) -> tuple[losses.LossSpec, losses.Targets]:
    """(the run's per-problem spec, `optimize.problem_targets`) in one program. Relative weights
    are computed problem by problem (`problems.over_problems`), each from its own content and
    target only: the same computation whatever the batch."""
    num_problems = contents.shape[0]
    if relative:
        per_problem = optimize.problem_targets(targets, num_problems)

        def one(row, content_t, style_t, valid, image):
            own = losses.Targets(content=content_t, style=style_t, valid=valid)  # each [1, ...]
            scaled = losses.relative_spec(row, own, image[None])
            return dataclasses.replace(scaled, content_weights=scaled.content_weights[0],
                                       style_weights=scaled.style_weights[0],
                                       tv_weight=scaled.tv_weight[0])

        spec = problems.over_problems(one, sequential)(spec, per_problem.content,
                                                       per_problem.style, per_problem.valid,
                                                       contents)
    return spec, optimize.problem_targets(targets, num_problems)


def problem_spec(cfgs: Sequence[Config], targets: losses.Targets, contents: Array
                 ) -> losses.LossSpec:
    """The loss spec of P problems, always per problem (`losses.LossSpec.stack`: weights
    float32[P, L], tv float32[P]): each problem's weights come from its own config and, for
    relative weights, from its own content image and style target only, so a problem's loss never
    depends on the other problems of its batch. One program serves single runs, batches and sweeps.

    targets: as from `losses.targets` for ``contents`` float32[P, h, w, 3] (style [1, ...] or one
    row per problem)."""
    spec = losses.LossSpec.stack([losses.LossSpec.from_config(c) for c in cfgs])
    # Relative: not sweepable, the same for every problem.
    return scaled_spec(spec, targets, contents, cfgs[0].loss.loss_scale == "relative",
                       problems.sequential_problems(contents, cfgs[0].optimizer.exact_batch))[0]
