"""Parameter sweeps: many settings of one content image as ONE batched, compiled run.

A sweep is a list of `Config`s that differ only in settings that change no shape: the loss weights
(``content_weight``, ``style_weight``, ``tv_weight``, the per-layer weights), the style blend, the
learning rate, the seed and the initial image. Each becomes one problem of the vmapped loop of
`optimize.run_steps`, with its own loss weights (a `losses.LossSpec.stack`ed spec: runtime arrays
with a leading problem axis), its own blended style target, its own step size (``step_scale``) and
its own start. Batches of at most ``batch_size`` problems are padded to the same size, so a sweep
compiles one program per scale, whatever the number of settings.

Every other setting (image size, scales, layers, optimizer, normalization, ...) changes the
compiled program; `check` rejects a sweep over one with a one-line `ConfigError`.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxstyle import losses, optimize
from jaxstyle import stylize as stylize_lib
from jaxstyle.config import Config
from jaxstyle.errors import ConfigError
from jaxstyle.imageops import original_colors, resize
from jaxstyle.models import vgg19

Array = jax.Array

# Config fields a sweep may vary: none of them changes a shape or a static argument.
SWEEPABLE = ("content_weight", "style_weight", "tv_weight", "content_layer_weights",
             "style_layer_weights", "style_blend_weights", "learning_rate", "seed", "init")


def grid(base: Config, axes: Mapping[str, Sequence[Any]]) -> list[tuple[dict, Config]]:
    """The Cartesian product of ``axes`` ({field: values}, in order; the last varies fastest) over
    ``base``: [(settings {field: value}, Config)]. ConfigError for a field that is not sweepable
    or a value that is not valid."""
    for name in axes:
        if name not in SWEEPABLE:
            raise ConfigError(
                f"cannot sweep {name.replace('_', '-')}: it changes the compiled program (shapes, "
                f"layers or optimizer); sweepable: {', '.join(s.replace('_', '-') for s in SWEEPABLE)}")
        if not axes[name]:
            raise ConfigError(f"sweep of {name.replace('_', '-')} has no values")
    names = list(axes)
    cells = []
    for values in itertools.product(*(axes[n] for n in names)):
        settings = dict(zip(names, values))
        cells.append((settings, dataclasses.replace(base, **settings)))
    return cells


def check(cfgs: Sequence[Config]) -> None:
    """ConfigError unless every config equals the first outside `SWEEPABLE` (and, with different
    learning rates, all set one explicitly)."""
    first = cfgs[0]
    for cfg in cfgs[1:]:
        for field in dataclasses.fields(Config):
            if field.name not in SWEEPABLE and getattr(cfg, field.name) != getattr(first, field.name):
                raise ConfigError(f"a sweep cannot vary {field.name.replace('_', '-')}: it changes "
                                  "the compiled program; run it separately")


@dataclasses.dataclass(frozen=True)
class SweepProgress:
    """After each compiled chunk: problems ``first`` … ``first + count - 1`` of the sweep (the
    rows of ``progress.state`` beyond ``count`` are padding)."""

    first: int
    count: int
    progress: stylize_lib.Progress


def stylize_sweep(vgg: vgg19.VGG, content: Array, styles: Sequence[Array], cfgs: Sequence[Config],
                  batch_size: int = 4, init_image: Array | None = None,
                  on_progress: Callable[[SweepProgress], None] | None = None,
                  every: tuple[int, ...] = ()) -> list[stylize_lib.Result]:
    """Stylizes one content image under every config of ``cfgs`` (see the module docstring).

    Args:
      content: float32[H, W, 3] in [0, 1]; styles: float32[Hs, Ws, 3] each.
      cfgs: configs that differ only in `SWEEPABLE` fields (`check`).
      batch_size: the most problems per compiled run; every batch is padded to the same size.

    Returns:
      One `stylize.Result` per config (``images`` float32[1, h, w, 3]), in order. Each equals the
      same config run alone by `stylize.stylize_batch`, within float tolerance.
    """
    check(cfgs)
    base = cfgs[0]
    vgg = vgg.with_pooling(base.pooling)
    content = jnp.asarray(content, jnp.float32)
    spec0 = losses.LossSpec.from_config(base)
    vgg = optimize.prepared(vgg, spec0)
    # One Method for all: learning rate 1, the per-problem rate is the runtime step scale.
    method = dataclasses.replace(optimize.Method.from_config(base), learning_rate=1.0)
    size = min(batch_size, len(cfgs))
    results: list[stylize_lib.Result] = []
    for first in range(0, len(cfgs), size):
        real = list(cfgs[first:first + size])
        padded = real + [real[0]] * (size - len(real))
        report = None
        if on_progress is not None:
            report = lambda p, f=first, n=len(real): on_progress(SweepProgress(f, n, p))  # noqa: E731
        images, diverged, loss = _run_batch(vgg, content, styles, padded, method, init_image,
                                            report, every)
        results += [stylize_lib.Result(images[i:i + 1], diverged[i:i + 1], loss[i:i + 1])
                    for i in range(len(real))]
    return results


def _run_batch(vgg, content, styles, cfgs, method, init_image, on_progress, every):
    base = cfgs[0]
    p = len(cfgs)
    spec = losses.LossSpec.stack([losses.LossSpec.from_config(c) for c in cfgs])
    step_scale = jnp.asarray([c.step_size for c in cfgs], jnp.float32)
    height, width, _ = content.shape
    sizes = stylize_lib.scale_sizes(base, height, width)
    min_side = vgg19.min_input_side(spec.layers)
    state = None
    for index, (h, w) in enumerate(sizes):
        if min(h, w) < min_side:
            raise ConfigError(f"the content image at {max(h, w)} px is {w}x{h}, too small for layer "
                              f"{spec.layers[-1]} (needs {min_side} px on the short side); raise "
                              "the size")
        scaled = resize(content[None], h, w)
        style_long = max(min_side, round(base.style_scale * max(h, w)))
        scaled_styles = [
            resize(s, *stylize_lib.style_size(s.shape[0], s.shape[1], style_long, min_side))[None]
            for s in map(lambda s: jnp.asarray(s, jnp.float32), styles)]
        # Each style's Grams once (blend 1 each), then every problem's own blend of them.
        one_style = [stylize_lib._targets(vgg, scaled, [s], jnp.ones((1,)), spec, base.compute_dtype)
                     for s in scaled_styles]
        blends = np.asarray([c.blend_weights(len(styles)) for c in cfgs], np.float32)  # [P, S]
        targets = losses.Targets(
            content={k: jnp.broadcast_to(v[None], (p,) + v.shape)
                     for k, v in one_style[0].content.items()},
            style={k: sum(jnp.asarray(blends[:, j])[:, None, None, None] * t.style[k][None]
                          for j, t in enumerate(one_style))
                   for k in spec.style_layers})
        if state is not None:
            images = resize(state.image, h, w)
        else:
            images = jnp.concatenate([
                stylize_lib.initial_images(c, scaled, [s[0] for s in scaled_styles], init_image)
                for c in cfgs])
        diverged = None if state is None else state.diverged
        state = optimize.init_state(images, method)
        if diverged is not None:
            state = dataclasses.replace(state, diverged=diverged)
        report = None
        if on_progress is not None:
            report = lambda s, n, i=index: on_progress(  # noqa: E731
                stylize_lib.Progress(i, len(sizes), n, base.num_iterations, s))
        if not bool(jnp.all(state.diverged)):
            state = optimize.run(state, base.num_iterations, vgg, targets, spec, method,
                                 base.compute_dtype, every, report, step_scale=step_scale)
    images = np.asarray(state.image)
    if base.original_colors:
        originals = np.asarray(resize(content[None], *images.shape[1:3]))
        images = np.asarray(original_colors(images, np.broadcast_to(originals, images.shape)))
    return images, np.asarray(state.diverged), np.asarray(state.loss)
