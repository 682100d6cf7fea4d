"""One image across several devices: its rows sharded over a 1-D device mesh (issue 27).

The image float32[P, H, W, 3] and every image-shaped part of the optimizer state (the iterate,
Adam's moments, L-BFGS's history [P, m, H, W, 3]) are laid out with their H axis split over the
mesh axis ``"rows"``; the content targets (features [P, 1, h, w, C]) likewise; the network and
the style Grams are replicated. XLA's SPMD partitioner then runs every convolution on each
device's rows, exchanging the one-row borders a 3x3 convolution needs with its neighbours, and
sums the Grams' per-device partial products (an all-reduce of C x C floats per layer). So each
device holds about 1/n of the activations: an image larger than one device's memory runs on n.

The problems are vmapped (`problems.over_problems` with ``sequential=False``): the sequential loop
that a CPU otherwise uses would slice the problem axis, which is fine, but vmapping keeps the
program the same on every backend.

Heights should be a multiple of 16·n (n devices, 16 = VGG's four poolings before relu5_1), so
every device keeps whole rows down to the deepest layer; `rows_multiple` says which.

Numerical core: no file or network I/O here.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxstyle import losses, optimize, run_targets, starts
from jaxstyle.config import Config
from jaxstyle.imageops import fit_long_side, resize
from jaxstyle.models import vgg19

Array = jax.Array
AXIS = "rows"


def rows_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh, axis ``"rows"``, over ``devices`` (default: every device)."""
    return Mesh(np.array(list(devices if devices is not None else jax.devices())), (AXIS,))


def rows_multiple(mesh: Mesh, layers: Sequence[str] = ("relu5_1",)) -> int:
    """The multiple of rows that keeps whole rows on every device down to the deepest layer."""
    return vgg19.min_input_side(layers) * mesh.devices.size


def _spec_for(leaf, image_shape: tuple[int, ...]) -> PartitionSpec:
    """Rows split for any leaf that ends in the image's [H, W, 3] (or a feature map's [h, w, C]
    given as ``image_shape``), replicated otherwise."""
    shape = getattr(leaf, "shape", ())
    n = len(image_shape)
    if len(shape) >= n and tuple(shape[-n:]) == tuple(image_shape):
        return PartitionSpec(*([None] * (len(shape) - n)), AXIS)
    return PartitionSpec()


def shard_state(state: optimize.RunState, mesh: Mesh) -> optimize.RunState:
    """``state`` (P problems of H x W) with every image-shaped leaf split by rows over ``mesh``
    and the rest replicated."""
    hw3 = tuple(state.image.shape[-3:])
    return jax.tree.map(
        lambda x: jax.device_put(x, NamedSharding(mesh, _spec_for(x, hw3))), state)


def shard_targets(targets: losses.Targets, mesh: Mesh) -> losses.Targets:
    """Per-problem targets (`optimize.problem_targets`): content feature maps split by rows, the
    style Grams replicated."""
    def content(x):  # [P, 1, h, w, C]
        return jax.device_put(x, NamedSharding(mesh, PartitionSpec(None, None, AXIS)))

    replicated = NamedSharding(mesh, PartitionSpec())
    return dataclasses.replace(
        targets, content={k: content(v) for k, v in targets.content.items()},
        style=jax.device_put(targets.style, replicated))


def shard_images(images: Array, mesh: Mesh) -> Array:
    """float32[P, H, W, 3] split by rows over ``mesh``."""
    return jax.device_put(jnp.asarray(images, jnp.float32),
                          NamedSharding(mesh, PartitionSpec(None, AXIS)))


def run_steps(state: optimize.RunState, num_steps: int, vgg: vgg19.VGG, targets: losses.Targets,
              spec: losses.LossSpec, method: optimize.Method, mesh: Mesh,
              dtype: str = "float32", step_scale: Array | None = None) -> optimize.RunState:
    """`optimize.run_steps` with the image's rows sharded over ``mesh`` (the state and targets
    are laid out here; the returned state keeps the layout, so it can be passed back)."""
    vgg = jax.device_put(optimize.prepared(vgg, spec), NamedSharding(mesh, PartitionSpec()))
    state = shard_state(state, mesh)
    targets = shard_targets(targets, mesh)
    return optimize.run_steps(state, num_steps, vgg, targets, spec, method, dtype, step_scale,
                              sequential=False)


def stylize(vgg: vgg19.VGG, content: Array, styles: Sequence[Array], cfg: Config,
            mesh: Mesh | None = None) -> tuple[np.ndarray, float]:
    """One image, rows sharded over ``mesh`` (default: every device): content float32[H, W, 3] in
    [0, 1] -> (float32[h, w, 3] at the last scale, its loss before the last step).

    Every scale of ``cfg.schedule.all_scales`` as `stylize.stylize_batch` runs it for one image
    (targets, relative weights, initial image, the previous scale upsampled), without early
    stopping, averaging, guidance or a film's frame; each scale's height is rounded down to
    `rows_multiple` so that every device keeps whole rows."""
    from jaxstyle import stylize as stylize_lib  # the same initial images and weights

    mesh = mesh or rows_mesh()
    vgg = vgg.with_pooling(cfg.network.pooling)
    spec = losses.LossSpec.from_config(cfg)
    vgg = optimize.prepared(vgg, spec)
    method = optimize.Method.from_config(cfg)
    content = jnp.asarray(content, jnp.float32)
    multiple = rows_multiple(mesh, spec.layers)
    image, state = None, None
    for index, long_side in enumerate(cfg.schedule.all_scales):
        h, w = fit_long_side(content.shape[0], content.shape[1], long_side)
        h = max(multiple, h // multiple * multiple)
        scaled = resize(content[None], h, w)
        style_long = round(cfg.loss.style_scale * max(h, w))
        scaled_styles = [resize(jnp.asarray(s, jnp.float32),
                                *stylize_lib.style_size(s.shape[0], s.shape[1], style_long,
                                                        vgg19.min_input_side(spec.layers)))
                         for s in styles]
        targets = losses.targets(vgg, scaled, [s[None] for s in scaled_styles],
                                 np.asarray(cfg.loss.blend_weights(len(styles)), np.float32), spec,
                                 jnp.dtype(cfg.network.compute_dtype))
        run_spec = run_targets.problem_spec([cfg], targets, scaled)
        targets = optimize.problem_targets(targets, 1)
        image = (starts.initial_images(cfg, scaled, scaled_styles) if state is None
                 else resize(state.image, h, w))
        state = None
        state = optimize.init_state(shard_images(image, mesh), method)
        state = run_steps(state, cfg.schedule.scale_iterations[index], vgg, targets, run_spec,
                          method, mesh, cfg.network.compute_dtype)
    return np.asarray(state.image[0]), float(state.loss[0])
