"""The VGG-19 model: architecture table, preprocessing, the Flax module and the pure `features`.

The network takes RGB float32 images in [0, 1] and applies the preprocessing its weights were
trained with (channel order, scale, mean/std: stored with the converted weights), so callers never
think about it. Only the layers up to the deepest requested one are computed. The convolutions are
`jaxstyle.kernels.conv3x3` (custom VJP, Winograd on CPU); `prepare` transforms their kernels once,
outside loops.

This module only takes arrays: reading a weights file is `jaxstyle.weights`' job, and
`jaxstyle.vgg19.load` joins the two for users.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Iterable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxstyle.errors import ConfigError
from jaxstyle.kernels import (PreparedKernel, conv3x3, pool2x2, prepare_kernel, relu_kept,
                              relu_masked, relu_max_pool)

__all__ = ["CONV_LAYERS", "CONV_SHAPES", "LAYER_NAMES", "POOLINGS", "Preprocessing", "VGG",
           "Conv3x3", "VGG19", "check_layers", "features", "truncate", "prepare", "init",
           "min_input_side", "output_shape"]

Array = jax.Array

# (name, input channels, output channels) of the sixteen 3x3 convolutions, in order.
CONV_LAYERS: tuple[tuple[str, int, int], ...] = (
    ("conv1_1", 3, 64), ("conv1_2", 64, 64),
    ("conv2_1", 64, 128), ("conv2_2", 128, 128),
    ("conv3_1", 128, 256), ("conv3_2", 256, 256), ("conv3_3", 256, 256), ("conv3_4", 256, 256),
    ("conv4_1", 256, 512), ("conv4_2", 512, 512), ("conv4_3", 512, 512), ("conv4_4", 512, 512),
    ("conv5_1", 512, 512), ("conv5_2", 512, 512), ("conv5_3", 512, 512), ("conv5_4", 512, 512),
)
CONV_SHAPES: dict[str, tuple[int, int]] = {name: (cin, cout) for name, cin, cout in CONV_LAYERS}


def _layer_names() -> tuple[str, ...]:
    names = []
    for name, _, _ in CONV_LAYERS:
        block, index = name[4:].split("_")
        names += [name, f"relu{block}_{index}"]
        if name in ("conv1_2", "conv2_2", "conv3_4", "conv4_4", "conv5_4"):
            names.append(f"pool{block}")
    return tuple(names)


# Every addressable layer, in network order: conv1_1, relu1_1, conv1_2, relu1_2, pool1, ..., pool5.
LAYER_NAMES: tuple[str, ...] = _layer_names()
POOLINGS = ("max", "avg")


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How RGB in [0, 1] becomes the network's input: ``(rgb[, ::-1 if bgr] * scale - mean) / std``.

    ``mean`` and ``std`` are given in the network's channel order and scale.
    """

    bgr: bool
    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def apply(self, images: Array) -> Array:
        """images: float[..., 3] RGB in [0, 1] -> the network's input, same shape and dtype."""
        x = images[..., ::-1] if self.bgr else images
        mean = jnp.asarray(self.mean, images.dtype)
        std = jnp.asarray(self.std, images.dtype)
        return (x * self.scale - mean) / std

    def to_dict(self) -> dict:
        return {"bgr": self.bgr, "scale": self.scale, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Preprocessing":
        return cls(bool(d["bgr"]), float(d["scale"]), tuple(map(float, d["mean"])),
                   tuple(map(float, d.get("std", (1.0, 1.0, 1.0)))))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class VGG:
    """A loaded VGG-19: weights (a pytree) plus how to feed it. Pass it to `features`.

    params: ``{"conv1_1": {"kernel": float32[3, 3, Cin, Cout], "bias": float32[Cout]}, ...}``; may
        hold only a prefix of the sixteen layers (the deepest layer computable is then the last one).
    prepared: ``{"conv1_1": PreparedKernel, ...}``: flipped (and Winograd) kernels made by
        `prepare` once outside a loop; None computes them inside (fine under a top-level ``jit``;
        inside ``lax.scan`` prefer `prepare`).
    """

    params: dict
    preprocessing: Preprocessing = dataclasses.field(metadata=dict(static=True))
    pooling: str = dataclasses.field(default="max", metadata=dict(static=True))
    prepared: dict | None = None
    source: str = dataclasses.field(default="", metadata=dict(static=True))
    # Rematerialize each block (conv…pool) in the backward pass instead of keeping its
    # activations: see `features`' ``remat``.
    remat: bool = dataclasses.field(default=False, metadata=dict(static=True))

    def with_remat(self, remat: bool = True) -> "VGG":
        return dataclasses.replace(self, remat=bool(remat))

    def with_pooling(self, pooling: str) -> "VGG":
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        return dataclasses.replace(self, pooling=pooling)


# ----------------------------------------------------------------------------------------------
# The Flax module.


class Conv3x3(nn.Module):
    """One VGG convolution (3x3, SAME, bias). Params: ``kernel`` float32[3, 3, Cin, Cout], ``bias``."""

    features: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel = self.param("kernel", nn.initializers.he_normal(), (3, 3, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        prepared = None
        if any(self.has_variable("prepared", field) for field in PreparedKernel._fields):
            prepared = PreparedKernel(*(self.get_variable("prepared", field)
                                        if self.has_variable("prepared", field) else None
                                        for field in PreparedKernel._fields))
        if self.dtype != jnp.float32:
            kernel, bias = kernel.astype(self.dtype), bias.astype(self.dtype)
            prepared = jax.tree.map(lambda a: a.astype(self.dtype), prepared)
        return conv3x3(x.astype(self.dtype), kernel, bias, prepared)


class VGG19(nn.Module):
    """VGG-19 features, NHWC, on already-preprocessed input.

    Returns ``{name: activation}`` for ``outputs`` (names from `LAYER_NAMES`) and computes nothing
    past the deepest of them.
    """

    outputs: tuple[str, ...]
    pooling: str = "max"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> dict[str, Array]:
        last = max(LAYER_NAMES.index(name) for name in self.outputs)
        conv = lambda name, x: Conv3x3(  # noqa: E731
            CONV_SHAPES[name][1], dtype=self.dtype, name=name)(x)
        return _layers(x, LAYER_NAMES[: last + 1], set(self.outputs), conv, self.pooling)[1]


def _layers(x: Array, names: tuple[str, ...], wanted, conv, pooling: str) -> tuple[Array, dict]:
    """The layers ``names`` on x, ``conv(name, x)`` for the convolutions: (output, {wanted:
    activation}).

    The ReLUs and poolings keep for the backward pass only what it needs (`kernels.relu_masked`,
    `relu_kept`, `relu_max_pool`): a bool mask where the activation is not returned, the output
    where it is (a Gram keeps it anyway), one uint8 per pooled element for a ReLU and max pooling
    whose ReLU is not returned. Same values and gradients as `jax.nn.relu` and `pool2x2`."""
    out = {}
    skip = None
    for i, name in enumerate(names):
        if name == skip:
            continue
        if name.startswith("conv"):
            x = conv(name, x)
        elif name.startswith("relu"):
            following = names[i + 1] if i + 1 < len(names) else None
            if (following is not None and following.startswith("pool") and pooling == "max"
                    and name not in wanted):
                x, name, skip = relu_max_pool(x), following, following
            else:
                x = (relu_kept if name in wanted else relu_masked)(x)
        else:
            x = pool2x2(x, pooling)
        if name in wanted:
            out[name] = x
    return x, out


# ----------------------------------------------------------------------------------------------
# Public functions.


def check_layers(layers: Iterable[str], vgg: VGG | None = None) -> tuple[str, ...]:
    """Validates layer names (and that ``vgg`` has their weights); returns them in network order."""
    layers = tuple(dict.fromkeys(layers))
    if not layers:
        raise ConfigError("no layers requested")
    unknown = [name for name in layers if name not in LAYER_NAMES]
    if unknown:
        raise ConfigError(f"unknown VGG-19 layer {unknown[0]!r}: use names like conv4_2, relu4_2, pool3"
                         f" (conv1_1 ... relu5_4, pool1 ... pool5)")
    ordered = tuple(sorted(layers, key=LAYER_NAMES.index))
    if vgg is not None:
        deepest = ordered[-1]
        needed = [n for n in LAYER_NAMES[: LAYER_NAMES.index(deepest) + 1] if n.startswith("conv")]
        missing = [n for n in needed if n not in vgg.params]
        if missing:
            raise ConfigError(f"layer {deepest!r} needs weights for {missing[0]}, which these weights lack")
    return ordered


def features(vgg: VGG, images: Array, layers: Iterable[str], dtype: jnp.dtype = jnp.float32,
             remat: bool | None = None) -> dict[str, Array]:
    """Activations of ``images`` at ``layers``.

    Args:
      vgg: from `jaxstyle.vgg19.load` or `init` (optionally `prepare`d).
      images: float32[B, H, W, 3] RGB in [0, 1], H, W >= 16.
      layers: names from `LAYER_NAMES`, e.g. ``("relu4_2", "relu1_1")``.
      dtype: compute dtype of the convolutions (float32, or bfloat16 for speed on hardware with it).
      remat: wrap each block (the layers up to and including a pooling) in ``jax.checkpoint``,
        keeping only the block's input and the requested activations for the backward pass and
        recomputing the rest there (one more forward per step). None: ``vgg.remat``. Same values
        as without (the same operations, recomputed). Off by default: on the CPU backend XLA's
        temporaries grew with it (2455 -> 2704 B per pixel at 512 px, Adam; docs/performance.md),
        since the first block, which remat cannot shrink, holds the peak.

    Returns:
      ``{name: float[B, h, w, C]}`` in ``dtype``. Pure: safe under ``jit``, ``grad`` (w.r.t. images
      or weights) and ``vmap``.
    """
    layers = check_layers(layers, vgg)
    if vgg.remat if remat is None else remat:
        return _blockwise(vgg, vgg.preprocessing.apply(images), layers, jnp.dtype(dtype))
    variables = {"params": vgg.params}
    if vgg.prepared is not None:
        variables["prepared"] = {name: {k: v for k, v in p._asdict().items() if v is not None}
                                 for name, p in vgg.prepared.items()}
    module = VGG19(outputs=layers, pooling=vgg.pooling, dtype=dtype)
    return module.apply(variables, vgg.preprocessing.apply(images))


def _blocks(last: str) -> list[tuple[str, ...]]:
    """The layers up to ``last`` cut after each pooling: VGG's blocks."""
    blocks, block = [], []
    for name in LAYER_NAMES[: LAYER_NAMES.index(last) + 1]:
        block.append(name)
        if name.startswith("pool"):
            blocks.append(tuple(block))
            block = []
    return blocks + ([tuple(block)] if block else [])


def _run_block(x: Array, params: dict, prepared: dict, names: tuple[str, ...],
               wanted: tuple[str, ...], pooling: str, dtype) -> tuple[Array, dict]:
    """The layers ``names`` on x (the same operations as `VGG19`): (output, {wanted: activation})."""
    def conv(name, x):
        kernel, bias = params[name]["kernel"], params[name]["bias"]
        p = prepared.get(name)
        if dtype != jnp.float32:
            kernel, bias = kernel.astype(dtype), bias.astype(dtype)
            p = jax.tree.map(lambda a: a.astype(dtype), p)
        return conv3x3(x.astype(dtype), kernel, bias, p)

    return _layers(x, names, set(wanted), conv, pooling)


def _blockwise(vgg: VGG, x: Array, layers: tuple[str, ...], dtype) -> dict[str, Array]:
    """`features` with each block rematerialized: ``jax.checkpoint`` (nothing saveable inside)
    around each block, so the backward pass keeps only the blocks' inputs and the requested
    activations, and recomputes one block's forward at a time."""
    result = {}
    prepared = vgg.prepared or {}
    for names in _blocks(layers[-1]):
        wanted = tuple(n for n in names if n in layers)
        block = functools.partial(_run_block, names=names, wanted=wanted, pooling=vgg.pooling,
                                  dtype=dtype)
        block = jax.checkpoint(block, policy=jax.checkpoint_policies.nothing_saveable)
        convs = [n for n in names if n.startswith("conv")]
        x, out = block(x, {n: vgg.params[n] for n in convs},
                       {n: prepared[n] for n in convs if n in prepared})
        result.update(out)
    return result


def truncate(vgg: VGG, layers: Iterable[str]) -> VGG:
    """``vgg`` without the weights of convolutions deeper than the deepest of ``layers`` (what
    `features` would not use anyway), so that `prepare` neither computes nor keeps theirs."""
    deepest = check_layers(layers, vgg)[-1]
    needed = LAYER_NAMES[: LAYER_NAMES.index(deepest) + 1]
    keep = lambda tree: tree and {n: v for n, v in tree.items() if n in needed}  # noqa: E731
    return dataclasses.replace(vgg, params=keep(vgg.params), prepared=keep(vgg.prepared))


@jax.jit
def prepare(vgg: VGG) -> VGG:
    """Adds the flipped input-gradient (and Winograd) kernels. Call it once and reuse the result
    (every call of `optimize.run_steps` with an unprepared network redoes it), and never inside a
    ``lax.scan``/``fori_loop`` body, so that XLA sees loop-invariant kernels."""
    prepared = {name: prepare_kernel(p["kernel"]) for name, p in vgg.params.items()}
    return dataclasses.replace(vgg, prepared=prepared)


def init(key: Array, preprocessing: Preprocessing, last_layer: str = "relu5_1",
         pooling: str = "max") -> VGG:
    """Randomly initialised weights (He normal): for tests and benchmarks, where speed does not
    depend on the values."""
    module = VGG19(outputs=(last_layer,), pooling=pooling)
    params = module.init(key, jnp.zeros((1, 16, 16, 3)))["params"]
    return VGG(params=jax.tree.map(jnp.asarray, dict(params)), preprocessing=preprocessing,
               pooling=pooling, source="random")


def min_input_side(layers: Iterable[str]) -> int:
    """The smallest image side for which every layer of ``layers`` is at least 1x1: 2 ** (number
    of poolings before the deepest)."""
    deepest = check_layers(layers)[-1]
    pools = sum(name.startswith("pool") for name in LAYER_NAMES[: LAYER_NAMES.index(deepest) + 1])
    return 2**pools


@functools.lru_cache(maxsize=None)
def output_shape(layer: str, height: int, width: int) -> tuple[int, int, int]:
    """(h, w, C) of ``layer``'s activation for an HxW input."""
    h, w = height, width
    for name in LAYER_NAMES[: LAYER_NAMES.index(layer) + 1]:
        if name.startswith("pool"):
            h, w = h // 2, w // 2
        elif name.startswith("conv"):
            c = CONV_SHAPES[name][1]
    return h, w, c
