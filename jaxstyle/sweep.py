"""Parameter sweeps: many settings of one content image as ONE batched, compiled run.

A sweep is a list of `Config`s that differ only in settings that change no shape: the loss weights
(``content_weight``, ``style_weight``, ``tv_weight``, the per-layer weights), the style blend, the
learning rate, the seed and the initial image. Each becomes one problem of the vmapped loop of
`optimize.run_steps`, with its own loss weights (a `losses.LossSpec.stack`ed spec: runtime arrays
with a leading problem axis), its own blended style target, its own step size (``step_scale``) and
its own start. Batches of at most ``batch_size`` problems are padded to the same size, so a sweep
compiles one program per scale, whatever the number of settings.

Every other setting (image size, scales, layers, optimizer, normalization, ...) changes the
compiled program; `config.check_sweep` rejects a sweep over one with a one-line `ConfigError`.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxstyle import guidance as guidance_lib
from jaxstyle import stylize as stylize_lib
from jaxstyle.config import SWEEPABLE, Config, check_sweep
from jaxstyle.errors import ConfigError
from jaxstyle.imageops import match_colors
from jaxstyle.models import vgg19

Array = jax.Array

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
        cells.append((settings, base.replace(**settings)))
    return cells


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
                  every: tuple[int, ...] = (),
                  guidance: guidance_lib.Guidance | None = None,
                  bucket: bool = False) -> list[stylize_lib.Result]:
    """Stylizes one content image under every config of ``cfgs`` (see the module docstring).

    Args:
      content: float32[H, W, 3] in [0, 1]; styles: float32[Hs, Ws, 3] each.
      cfgs: configs that differ only in `SWEEPABLE` fields (`config.check_sweep`).
      batch_size: the most problems per compiled run; every batch is padded to the same size.
      guidance: where each style goes (`guidance.from_masks` / `from_maps`), the same in every
        cell; None: everywhere.
      bucket: run on the content's shape bucket (`stylize.stylize_batch`), as a lone run does.

    Returns:
      One `stylize.Result` per config (``images`` float32[1, h, w, 3]), in order. Each equals the
      same config run alone by `stylize.stylize_batch`, within float tolerance.
    """
    check_sweep(cfgs)
    if cfgs[0].loss.color_match:  # every cell has the same content: recolour the styles once
        styles = [match_colors(np.asarray(s), np.asarray(content)) for s in styles]
        cfgs = [c.replace(color_match=False) for c in cfgs]
    size = min(batch_size, len(cfgs))
    results: list[stylize_lib.Result] = []
    for first in range(0, len(cfgs), size):
        real = list(cfgs[first:first + size])
        padded = real + [real[0]] * (size - len(real))  # one program for every batch
        report = None
        if on_progress is not None:
            report = lambda p, f=first, n=len(real): on_progress(SweepProgress(f, n, p))  # noqa: E731
        result = stylize_lib.stylize_batch(
            vgg, _copies(content, size), styles, padded,
            init_image=init_image, on_progress=report, every=every, guidance=guidance,
            bucket=bucket)
        results += [result.problem(i) for i in range(len(real))]
    return results


def _copies(content: Array, count: int) -> Array:
    """float32[H, W, 3] -> float32[count, H, W, 3], made on the host where it is held (an eager
    broadcast compiled a program for every photo's shape)."""
    if isinstance(content, np.ndarray) or getattr(content, "is_fully_addressable", False):
        host = np.asarray(content, np.float32)
        return jnp.asarray(np.ascontiguousarray(np.broadcast_to(host, (count,) + host.shape)))
    return jnp.broadcast_to(jnp.asarray(content, jnp.float32), (count,) + content.shape)
