"""VGG-19's convolutional stack as a Flax module, and the pure `features` function built on it.

The network takes RGB float32 images in [0, 1] and applies the preprocessing its weights were
trained with (channel order, scale, mean/std: stored with the converted weights), so callers never
think about it. Only the layers up to the deepest requested one are computed.

Three formulation choices are made for speed and are pinned against the plain formulation by tests:
  * convolutions carry a custom VJP whose input gradient is an ordinary NHWC/HWIO convolution with
    the spatially flipped, in/out-swapped kernel. JAX's own transpose rule emits a convolution with
    kernel layout ``01oi`` plus a reverse, which XLA's CPU backend leaves as a slow generic loop nest
    when it sits inside a while loop (``lax.scan``/``fori_loop``): its convolution canonicalization
    only visits the entry computation. `prepare` computes the flipped kernels once, outside loops.
  * on CPU, the wide convolutions (512 channels in and out) run as Winograd F(2x2, 3x3): 16
    matrix products on transformed tiles, about twice as fast there as XLA's direct convolution.
  * 2x2 pooling is a reshape and a reduction rather than ``reduce_window``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Iterable, Mapping, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxstyle.errors import ConfigError

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

    def with_pooling(self, pooling: str) -> "VGG":
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        return dataclasses.replace(self, pooling=pooling)


# ----------------------------------------------------------------------------------------------
# Numerical building blocks.

_DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def _conv_same(x: Array, kernel: Array) -> Array:
    return lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=_DIMENSIONS)


def flip_kernel(kernel: Array) -> Array:
    """float[3, 3, Cin, Cout] -> float[3, 3, Cout, Cin]: the kernel whose SAME convolution is the
    transpose (input gradient) of a SAME convolution with ``kernel``."""
    return jnp.flip(kernel, (0, 1)).swapaxes(2, 3)


def _materialized(array: Array) -> Array:
    # The barrier keeps XLA from folding a flip back into the convolution (as a reversed `01oi`
    # kernel, the non-canonical form this custom VJP exists to avoid) or a transform into the loop.
    return lax.optimization_barrier(array)


# Winograd F(2x2, 3x3) (Lavin & Gray 2016): a 3x3 convolution as 16 matrix products on 4x4 input
# tiles, 2.25x fewer multiplications. XLA's CPU convolutions run well below the matmul peak from
# 128 channels up (64x64, 256 -> 256: 30-34 ms direct, 22 ms this way; 32x32, 512 -> 512: 41 ms
# against 20 ms). The tile transforms cost memory traffic in proportion to Cin + Cout while the
# saving grows with Cin * Cout, so narrow layers lose (128 -> 128: 40 ms direct, 46 ms
# Winograd). On GPUs the convolution libraries do this themselves. So: CPU, Cin * Cout >= 128 * 256.
_WINOGRAD_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float32)
_WINOGRAD_G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], np.float32)
_WINOGRAD_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float32)
WINOGRAD_MIN_CHANNEL_PRODUCT = 128 * 256
# The transformed tiles of a whole 64x64x256 layer (16 MB in, 16 MB out) overflow a 32 MB L3 and
# made the layer slower than direct; a band of tile rows at a time keeps them cache-resident.
WINOGRAD_BAND_BYTES = 16 << 20
# Bands are unrolled into the program (compile time and size grow with their number): at most 8,
# larger than the budget on very large images (4096 px would otherwise unroll hundreds).
WINOGRAD_MAX_BANDS = 8


def use_winograd(cin: int, cout: int) -> bool:
    """Whether a cin -> cout 3x3 convolution runs as Winograd F(2x2, 3x3) (see above)."""
    return cin * cout >= WINOGRAD_MIN_CHANNEL_PRODUCT and jax.default_backend() == "cpu"


def winograd_kernel(kernel: Array) -> Array:
    """float[3, 3, Cin, Cout] -> float[16, Cin, Cout]: G·k·Gᵀ per channel pair.

    Written as weighted sums of the nine [Cin, Cout] slices (one fused pass) rather than an einsum,
    which XLA turns into slow small-matrix products: this runs on every call of an un`prepare`d
    network."""
    k = kernel.astype(jnp.float32)
    rows = [_combine(_WINOGRAD_G[a], [k[i] for i in range(3)]) for a in range(4)]
    u = jnp.stack([_combine(_WINOGRAD_G[b], [r[j] for j in range(3)])
                   for r in rows for b in range(4)])
    return u.astype(kernel.dtype)


def _combine(coefficients, arrays):
    """Σ c·a over the non-zero (constant) coefficients: adds that XLA fuses into one pass."""
    terms = [a if c == 1 else -a if c == -1 else c * a for c, a in zip(coefficients, arrays) if c]
    out = terms[0]
    for t in terms[1:]:
        out = out + t
    return out


def _winograd_band(xp: Array, u: Array, th: int, tw: int) -> Array:
    """Winograd on th x tw output tiles. xp: float[B, 2th+2, 2tw+2, Cin] (padded input rows of the
    band) -> float[B, 2th, 2tw, Cout]."""
    b, c = xp.shape[0], xp.shape[-1]
    # Bᵀ·d·B separably: rows first (on the full width), then columns.
    rows = [xp[:, i:i + 2 * th:2] for i in range(4)]
    rows = jnp.stack([_combine(_WINOGRAD_BT[k], rows) for k in range(4)])
    cols = [rows[:, :, :, j:j + 2 * tw:2] for j in range(4)]
    v = jnp.stack([_combine(_WINOGRAD_BT[k], cols) for k in range(4)], 1).reshape(16, -1, c)
    m = jnp.einsum("tnc,tco->tno", v, u, preferred_element_type=jnp.float32).astype(xp.dtype)
    m = m.reshape(4, 4, b, th, tw, -1)
    half = [_combine(_WINOGRAD_AT[p], [m[k] for k in range(4)]) for p in range(2)]
    out = [[_combine(_WINOGRAD_AT[q], [hp[k] for k in range(4)]) for q in range(2)] for hp in half]
    out = jnp.stack([jnp.stack(o, axis=3) for o in out], axis=2)  # [B, th, 2, tw, 2, Cout]
    return out.reshape(b, 2 * th, 2 * tw, -1)


def _winograd_conv(x: Array, u: Array) -> Array:
    """SAME 3x3 convolution of x: float[B, H, W, Cin] with ``winograd_kernel`` u -> [B, H, W, Cout]."""
    b, h, w, c = x.shape
    th, tw = (h + 1) // 2, (w + 1) // 2  # 2x2 output tiles
    xp = jnp.pad(x, ((0, 0), (1, 2 * th - h + 1), (1, 2 * tw - w + 1), (0, 0)))
    band_row_bytes = 16 * b * tw * (c + u.shape[-1]) * x.dtype.itemsize
    rows_per_band = max(1, min(th, WINOGRAD_BAND_BYTES // band_row_bytes),
                        -(-th // WINOGRAD_MAX_BANDS))
    bands, previous = [], None
    for r0 in range(0, th, rows_per_band):
        r1 = min(th, r0 + rows_per_band)
        band = xp[:, 2 * r0:2 * r1 + 2]
        if previous is not None:  # one band after another, so only one band's tiles are live
            band, _ = lax.optimization_barrier((band, previous))
        previous = _winograd_band(band, u, r1 - r0, tw)
        bands.append(previous)
    out = bands[0] if len(bands) == 1 else jnp.concatenate(bands, axis=1)
    return out[:, :h, :w]


class PreparedKernel(NamedTuple):
    """What the convolution needs besides the kernel, computed once outside a loop (`prepare`).

    grad_kernel: ``flip_kernel(kernel)``, float[3, 3, Cout, Cin], for the input gradient.
    winograd / winograd_grad: ``winograd_kernel`` of the kernel and of the flipped kernel,
    float[16, Cin, Cout] / [16, Cout, Cin], where `use_winograd`; else None.
    """

    grad_kernel: Array
    winograd: Array | None = None
    winograd_grad: Array | None = None


def prepare_kernel(kernel: Array) -> PreparedKernel:
    cin, cout = kernel.shape[2:]
    flipped = _materialized(flip_kernel(kernel))
    return PreparedKernel(
        flipped,
        _materialized(winograd_kernel(kernel)) if use_winograd(cin, cout) else None,
        _materialized(winograd_kernel(flipped)) if use_winograd(cout, cin) else None)


def _conv(x: Array, kernel: Array, winograd: Array | None) -> Array:
    cin, cout = kernel.shape[2:]
    if not use_winograd(cin, cout):
        return _conv_same(x, kernel)
    return _winograd_conv(x, winograd if winograd is not None else winograd_kernel(kernel))


@jax.custom_vjp
def conv3x3(x: Array, kernel: Array, bias: Array, prepared: PreparedKernel | None = None) -> Array:
    """3x3 SAME convolution plus bias. x: float[B, H, W, Cin] -> float[B, H, W, Cout].

    prepared: optional ``prepare_kernel(kernel)`` computed once outside a loop (see module doc).
    Differentiable in x, kernel and bias; gradients equal those of the plain formulation.
    """
    return _conv(x, kernel, None if prepared is None else prepared.winograd) + bias


def _conv3x3_fwd(x, kernel, bias, prepared):
    return conv3x3(x, kernel, bias, prepared), (x, kernel, prepared)


def _conv3x3_bwd(residuals, g):
    x, kernel, prepared = residuals
    if prepared is None:
        flipped, winograd_grad = _materialized(flip_kernel(kernel)), None
    else:
        flipped, winograd_grad = prepared.grad_kernel, prepared.winograd_grad
    dx = _conv(g, flipped.astype(g.dtype), winograd_grad)
    # Dead code (removed by XLA) unless someone differentiates with respect to the weights.
    _, kernel_vjp = jax.vjp(lambda k: _conv_same(x, k), kernel)
    (dkernel,) = kernel_vjp(g)
    dbias = jnp.sum(g, axis=tuple(range(g.ndim - 1))).astype(kernel.dtype)
    return dx, dkernel, dbias, jax.tree.map(jnp.zeros_like, prepared)


conv3x3.defvjp(_conv3x3_fwd, _conv3x3_bwd)


def pool2x2(x: Array, pooling: str = "max") -> Array:
    """2x2 stride-2 pooling (floor on odd sizes, like torch and Keras). float[B, H, W, C] ->
    float[B, H//2, W//2, C]. Reshape-based: faster to differentiate on CPU than reduce_window."""
    b, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, c)
    return x.max(axis=(2, 4)) if pooling == "max" else x.mean(axis=(2, 4))


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
        if self.has_variable("prepared", "grad_kernel"):
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
        wanted = set(self.outputs)
        result = {}
        for name in LAYER_NAMES[: last + 1]:
            if name.startswith("conv"):
                x = Conv3x3(CONV_SHAPES[name][1], dtype=self.dtype, name=name)(x)
            elif name.startswith("relu"):
                x = nn.relu(x)
            else:
                x = pool2x2(x, self.pooling)
            if name in wanted:
                result[name] = x
        return result


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


def features(vgg: VGG, images: Array, layers: Iterable[str], dtype: jnp.dtype = jnp.float32
             ) -> dict[str, Array]:
    """Activations of ``images`` at ``layers``.

    Args:
      vgg: from `load` (optionally `prepare`d).
      images: float32[B, H, W, 3] RGB in [0, 1], H, W >= 16.
      layers: names from `LAYER_NAMES`, e.g. ``("relu4_2", "relu1_1")``.
      dtype: compute dtype of the convolutions (float32, or bfloat16 for speed on hardware with it).

    Returns:
      ``{name: float[B, h, w, C]}`` in ``dtype``. Pure: safe under ``jit``, ``grad`` (w.r.t. images
      or weights) and ``vmap``.
    """
    layers = check_layers(layers, vgg)
    variables = {"params": vgg.params}
    if vgg.prepared is not None:
        variables["prepared"] = {name: {k: v for k, v in p._asdict().items() if v is not None}
                                 for name, p in vgg.prepared.items()}
    module = VGG19(outputs=layers, pooling=vgg.pooling, dtype=dtype)
    return module.apply(variables, vgg.preprocessing.apply(images))


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


def load(path: str | os.PathLike, source: str | None = None, pooling: str = "max") -> VGG:
    """The network from a converted ``.safetensors`` file, or from any supported source file
    (Keras ``.h5``, torchvision or caffe ``.pth``), converted in memory.

    Raises `jaxstyle.errors.JaxstyleError` with a one-line message for a missing or bad file.
    """
    from jaxstyle import weights  # I/O lives there; imported here to keep this module numerical.

    loaded = weights.read(path, source=source)
    params = {name: {"kernel": jnp.asarray(k), "bias": jnp.asarray(b)}
              for name, (k, b) in loaded.layers.items()}
    return VGG(params=params, preprocessing=loaded.preprocessing, source=loaded.source).with_pooling(pooling)


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
