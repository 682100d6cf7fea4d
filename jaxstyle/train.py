"""Training a feed-forward style network (`jaxstyle.models.transformer`) with the perceptual losses.

Built only on jaxstyle's public functional API: `models.vgg19.features` and `losses` (the same loss
terms, normalizations and weights as ``stylize``). The style Grams are computed once; the content
target of each photo is its own VGG features. One step is one jitted pure function
``(params, opt_state, batch) -> (params, opt_state, metrics)`` with optax Adam; the batch axis is
sharded over a 1-D device mesh (`batch.device_mesh`: every device of every host), parameters and
optimizer state are replicated, so the same code runs on 1 and N devices.

The loss of a batch is the MEAN over its images of the weighted terms (content + style + TV), like
the PyTorch examples' ``mse_loss`` over a batch: the learning rate does not depend on the batch size.
A step whose loss is NaN or infinite leaves the parameters and optimizer state unchanged and
reports ``finite = False``, so the caller keeps the last finite network.

Stability under motion without a video data set (``jaxstyle train --temporal-weight W``): each
step also moves every photo of the batch by a random similarity transform (a shift of up to
`Motion.max_shift` pixels, a rotation and a scale change), whose flow is known exactly
(`warp.affine_flow`), and adds ``W · Σ c·(f(move(x)) − move(f(x)))² / (H·W·3)`` on [0, 1]
pixels, c = 1 where the moved frame holds real pixels (`warp.inside_mask`): the network's output
of the moved photo should be its output moved (the temporal term of `losses.temporal_loss`, as
in Ruder et al. 2016 and the stability literature: Gupta et al. 2017, Huang et al. 2017). The
transforms are drawn from the optimizer's step count, so a resumed run draws the same ones.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxstyle import losses, warp
from jaxstyle.batch import device_mesh
from jaxstyle.models import transformer, vgg19

__all__ = ["TrainLoss", "DEFAULT_CONTENT_LAYERS", "DEFAULT_STYLE_LAYERS", "style_targets",
           "loss", "init_optimizer", "make_step", "shard_batch", "replicate", "Motion",
           "random_motion", "temporal_term"]

Array = jax.Array

# Defaults that work for training (Johnson et al., the PyTorch examples): content relu2_2, style
# relu1_1 ... relu4_1. The weights depend on the VGG weights' scale; see `cli.train`.
DEFAULT_CONTENT_LAYERS = ("relu2_2",)
DEFAULT_STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainLoss:
    """Everything the loss needs besides the network and the batch (all runtime arrays).

    vgg: the (truncated, prepared) VGG-19. style: {layer: float32[1, C, C]}, the blended style Grams.
    spec: the `losses.LossSpec` (layer names static, weights runtime).
    dtype: compute dtype of both networks' convolutions (static).
    """

    vgg: vgg19.VGG
    style: dict
    spec: losses.LossSpec
    dtype: str = dataclasses.field(default="float32", metadata=dict(static=True))
    # The stability term's weight (float32[]; None: no term, the pytree and program of a run
    # without it) and the motions it draws (static).
    temporal_weight: Array | None = None
    motion: "Motion" = dataclasses.field(default=None, metadata=dict(static=True))


@dataclasses.dataclass(frozen=True)
class Motion:
    """The random similarity transforms of the stability term: a shift of up to ``max_shift``
    pixels on each axis, a rotation of up to ``max_degrees`` and a scale change of up to
    ``max_scale`` (a fraction), each uniform; small, like the motion between video frames."""

    max_shift: float = 8.0
    max_degrees: float = 2.0
    max_scale: float = 0.03


def style_targets(vgg: vgg19.VGG, style_images: Sequence[Array], blend_weights: Sequence[float],
                  spec: losses.LossSpec, dtype: Any = jnp.float32) -> dict:
    """The blend of the styles' Gram matrices, once. style_images: float32[1, Hs, Ws, 3] each."""
    grams = [losses.style_grams(vgg, jnp.asarray(s), spec, dtype) for s in style_images]
    return {name: sum(w * g[name] for w, g in zip(blend_weights, grams)) for name in spec.style_layers}


def make_loss(vgg: vgg19.VGG, style_images: Sequence[Array], blend_weights: Sequence[float],
              spec: losses.LossSpec, dtype: str = "float32", temporal_weight: float | None = None,
              motion: Motion | None = None) -> TrainLoss:
    """A `TrainLoss`: the VGG cut after the deepest loss layer and prepared, the style Grams;
    with ``temporal_weight`` (> 0) the stability term under ``motion`` (default `Motion()`)."""
    vgg = vgg19.prepare(vgg19.truncate(vgg, spec.layers))
    weight = (jnp.asarray(temporal_weight, jnp.float32) if temporal_weight else None)
    return TrainLoss(vgg, style_targets(vgg, style_images, blend_weights, spec, jnp.dtype(dtype)),
                     spec, dtype, weight, (motion or Motion()) if weight is not None else None)


def random_motion(key: Array, batch: int, height: int, width: int, motion: Motion) -> Array:
    """float32[B, H, W, 2]: one random `warp.affine_flow` per image (see `Motion`)."""
    shift_key, angle_key, scale_key = jax.random.split(key, 3)
    shifts = jax.random.uniform(shift_key, (batch, 2), minval=-motion.max_shift,
                                maxval=motion.max_shift)
    angles = jnp.deg2rad(jax.random.uniform(angle_key, (batch,), minval=-motion.max_degrees,
                                            maxval=motion.max_degrees))
    scales = 1.0 + jax.random.uniform(scale_key, (batch,), minval=-motion.max_scale,
                                      maxval=motion.max_scale)
    return jax.vmap(lambda s, a, z: warp.affine_flow(height, width, s, a, z))(shifts, angles,
                                                                              scales)


def temporal_term(params: transformer.Params, batch: Array, out: Array, flows: Array,
                  dtype: Any = jnp.float32) -> Array:
    """float32[B]: Σ c·(f(move(x)) − move(f(x)))² / (H·W·3) per image, with move = `warp.warp`
    by ``flows`` float32[B, H, W, 2], c = `warp.inside_mask`, f the network and ``out`` = f(batch)
    (gradients flow through both outputs)."""
    moved = jax.vmap(warp.warp)(batch, flows)
    moved_out = transformer.forward(params, moved, dtype).astype(jnp.float32)
    target = jax.vmap(warp.warp)(out.astype(jnp.float32), flows)
    mask = jax.vmap(warp.inside_mask)(flows)[..., None]
    return losses.temporal_loss(moved_out, target, mask)


def loss(params: transformer.Params, batch: Array, tl: TrainLoss,
         key: Array | None = None) -> tuple[Array, dict]:
    """The training objective of a batch: (float32[], {"content", "style", "tv": float32[]}, and
    "temporal" with a temporal weight), the mean over the batch of each weighted term.
    batch: float32[B, H, W, 3] in [0, 1]; key: draws the motions of the temporal term."""
    dtype = jnp.dtype(tl.dtype)
    out = transformer.forward(params, batch, dtype)
    content = vgg19.features(tl.vgg, batch, tl.spec.content_layers, dtype)
    content = {k: jax.lax.stop_gradient(v.astype(jnp.float32)) for k, v in content.items()}
    feats = vgg19.features(tl.vgg, out, tl.spec.layers, dtype)
    terms = losses.loss_terms(feats, out, losses.Targets(content=content, style=tl.style), tl.spec)
    if tl.temporal_weight is not None:
        b, h, w, _ = batch.shape
        flows = random_motion(jax.random.key(0) if key is None else key, b, h, w, tl.motion)
        terms["temporal"] = tl.temporal_weight * temporal_term(params, batch, out, flows, dtype)
    terms = {k: jnp.mean(v) for k, v in terms.items()}
    return sum(terms.values()), terms


# The update rule: Adam with its learning rate in the optimizer state (a runtime value: one compiled
# step serves every learning rate).
_ADAM = optax.inject_hyperparams(optax.adam)


def init_optimizer(params: transformer.Params, learning_rate: float) -> optax.OptState:
    return _ADAM(learning_rate=learning_rate).init(params)


@functools.partial(jax.jit, donate_argnums=(0, 1))
def _step(params, opt_state, batch, tl: TrainLoss):
    # The motions of the temporal term: drawn from Adam's step count (resumes draw the same).
    key = jax.random.fold_in(jax.random.key(0), opt_state.count)
    (value, terms), grads = jax.value_and_grad(loss, has_aux=True)(params, batch, tl, key)
    finite = jnp.isfinite(value)
    # The update function does not depend on the constructor's learning rate (it is in opt_state).
    updates, new_opt_state = _ADAM(learning_rate=0.0).update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
    metrics = {"loss": value, **terms, "finite": finite}
    return keep(new_params, params), keep(new_opt_state, opt_state), metrics


def make_step(tl: TrainLoss, mesh: Mesh | None = None) -> Callable:
    """The training step ``(params, opt_state, batch) -> (params, opt_state, metrics)``.

    One jitted program per batch shape (module-level, so several runs in a process share it);
    ``tl`` is replicated over ``mesh`` and passed as an argument, so loss weights stay runtime
    values. params and opt_state are donated: use the returned ones. Shard batches with
    `shard_batch` and replicate params/opt_state with `replicate` (same mesh).
    metrics: {"loss", "content", "style", "tv" (and "temporal" with a temporal weight):
    float32[], "finite": bool[]}.
    """
    tl = replicate(tl, mesh)
    return functools.partial(_step, tl=tl)


def replicate(tree, mesh: Mesh | None = None):
    """``tree`` placed whole on every device of ``mesh`` (default: all devices)."""
    mesh = mesh or device_mesh()
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def shard_batch(batch: np.ndarray, mesh: Mesh | None = None) -> Array:
    """float32[B, H, W, 3] (the same full batch on every host) split along B over ``mesh``.
    B must be a multiple of the device count."""
    mesh = mesh or device_mesh()
    sharding = NamedSharding(mesh, PartitionSpec("batch"))
    batch = np.asarray(batch, np.float32)
    return jax.make_array_from_callback(batch.shape, sharding, lambda index: batch[index])
