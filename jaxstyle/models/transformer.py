"""The image transformation network of feed-forward ("fast") style transfer: a Flax module and a
pure, jittable `apply`.

Johnson et al. 2016 ("Perceptual Losses for Real-Time Style Transfer") with instance normalization
(Ulyanov et al.), as in the official PyTorch examples: a 9x9 conv, two stride-2 3x3 convs, five
residual blocks, two nearest-neighbour 2x upsamplings each followed by a 3x3 conv (no transposed
convolutions: they leave checkerboard artifacts), a 9x9 conv to RGB. Reflection padding before
every conv; affine instance norm (eps 1e-5, biased variance, as torch) and ReLU after every conv
but the last. With ``base`` channels C (32 by default, ``width`` × 32 in general) the widths are
C, 2C, 4C: about 1.68 M parameters at C = 32.

Parameters (NHWC / HWIO, like the rest of jaxstyle)::

    {"in": {"conv": {"kernel": [9, 9, 3, C], "bias": [C]}, "norm": {"scale": [C], "bias": [C]}},
     "down1", "down2", "res1".."res5" ({"conv1", "norm1", "conv2", "norm2"}), "up1", "up2",
     "out": {"kernel": [9, 9, C, 3], "bias": [3]}}

`apply` takes float32[B, H, W, 3] in [0, 1] of any size (sides that are not multiples of 4 are
reflection-padded and cropped back) and returns RGB in [0, 1]. Training sees the unclipped output
(`forward`), as the PyTorch examples do, so the gradient never vanishes at the box.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxstyle.errors import ConfigError

__all__ = ["TransformerNet", "channels_for_width", "init", "forward", "apply", "base_channels",
           "num_params", "reflect_pad", "upsample2x", "instance_norm", "upsampled_conv",
           "phase_kernels"]

Array = jax.Array
Params = Any  # a nested dict of arrays, as above

EPS = 1e-5
NUM_RESIDUAL = 5
# The 3x3 reflection padding at a quarter of the size needs at least 2 pixels there.
MIN_SIDE = 8


def channels_for_width(width: float) -> int:
    """``base`` channels of a network ``width`` times the standard one (32 at width 1)."""
    if not width > 0:
        raise ConfigError(f"network width must be > 0; got {width}")
    return max(1, round(32 * width))


# ----------------------------------------------------------------------------------------------
# The operations around the convolutions (plain formulations; the tests pin them against torch).


def reflect_pad(x: Array, p: int) -> Array:
    """float[B, H, W, C] -> float[B, H+2p, W+2p, C], mirrored without repeating the edge
    (torch's ReflectionPad2d)."""
    return jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect")


def upsample2x(x: Array) -> Array:
    """Nearest-neighbour 2x: float[B, H, W, C] -> float[B, 2H, 2W, C]. A broadcast and a reshape
    (its gradient is a reshape and a sum, no scatter)."""
    b, h, w, c = x.shape
    return jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c)).reshape(b, 2 * h, 2 * w, c)


def instance_norm(x: Array, scale: Array, bias: Array) -> Array:
    """Per image and channel over H, W: (x − mean)/sqrt(var + 1e-5)·scale + bias, folded into one
    multiply-add per element. x: float[B, H, W, C]; scale, bias: float[C]."""
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=(1, 2), keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), axis=(1, 2), keepdims=True)
    a = scale * lax.rsqrt(var + EPS)
    return (xf * a + (bias - mean * a)).astype(x.dtype)


def _conv(x: Array, kernel: Array, bias: Array, stride: int) -> Array:
    """Reflection-padded convolution, float[B, H, W, Cin] -> float[B, H/stride, W/stride, Cout].

    Written as a SAME convolution of the padded input, cropped to the VALID window: the same
    numbers, but XLA's CPU backend runs SAME convolutions on its fast path and VALID ones on padded
    inputs as a slow generic loop (256 px, 32 -> 3, 9x9: 866 ms VALID, 24 ms this way; the whole
    network 3-4x faster)."""
    k = kernel.shape[0]
    xp = reflect_pad(x, k // 2)
    # The 3x3 convs take the k² products for their kernel gradient (see `_valid_conv`); on the
    # 9x9 ones those lose on this CPU (32 -> 3 at 256², batch 4: 1.5 s against XLA's 0.3 s).
    conv = _valid_conv if k == 3 else _valid_conv_plain
    return conv(xp, kernel.astype(x.dtype), stride) + bias.astype(x.dtype)


# Nearest 2x upsampling followed by a reflection-padded 3x3 conv, as one 2x2 conv on the small
# image. Output pixel (2i + a, 2j + b) sees upsampled rows 2i + a - 1 .. 2i + a + 1, i.e. rows
# {i - 1, i} of the small image for a = 0 and {i, i + 1} for a = 1, each with some of the 3x3
# kernel's rows summed; columns alike. So the four output phases are four 2x2 kernels over the
# small image, stacked as one kernel with 4·Cout outputs: 16 taps per small pixel instead of 36,
# in the forward pass and both gradients. The reflection padding of the upsampled image is, on
# the rows the conv reads, the upsampled edge padding of the small one (its row -1 is row 1 =
# small row 0). 256 px, batch 4, forward + backward: up1 318 -> 100 ms, up2 479 -> 151 ms.
_PHASE_TAPS = np.array([[[1, 0, 0], [0, 1, 1]],    # phase 0: tap 0 <- kernel row 0; tap 1 <- 1 + 2
                        [[1, 1, 0], [0, 0, 1]]],   # phase 1: tap 0 <- 0 + 1; tap 1 <- 2
                       np.float32)                 # [phase, tap, kernel row]


def phase_kernels(kernel: Array) -> Array:
    """float[3, 3, Cin, Cout] -> float[2, 2, Cin, 4·Cout], outputs ordered (row phase, column
    phase, Cout): the 2x2 kernels of `upsampled_conv`."""
    taps = jnp.asarray(_PHASE_TAPS, kernel.dtype)
    k = jnp.einsum("arh,bsw,hwio->rsiabo", taps, taps, kernel)
    return k.reshape(2, 2, kernel.shape[2], 4 * kernel.shape[3])


def upsampled_conv(x: Array, kernel: Array, bias: Array) -> Array:
    """``_conv(upsample2x(x), kernel, bias, 1)`` for a 3x3 ``kernel``, computed on the small image
    (see `_PHASE_TAPS`): float[B, H, W, Cin] -> float[B, 2H, 2W, Cout]."""
    b, h, w, _ = x.shape
    c = kernel.shape[3]
    xe = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    y = _valid_conv(xe, phase_kernels(kernel).astype(x.dtype), 1)  # [B, H+1, W+1, 4·Cout]
    y = y.reshape(b, h + 1, w + 1, 2, 2, c)
    # Phase (a, b) of small pixel (i, j) is at y[i + a, j + b]; interleave into the big image.
    rows = [jnp.stack([y[:, a:a + h, p:p + w, a, p] for p in range(2)], axis=3) for a in range(2)]
    return jnp.stack(rows, axis=2).reshape(b, 2 * h, 2 * w, c) + bias.astype(x.dtype)


def _valid_conv_plain(xp: Array, kernel: Array, stride: int) -> Array:
    """The VALID convolution of ``xp`` (already padded) as SAME, cropped (see `_conv`)."""
    k = kernel.shape[0]
    y = lax.conv_general_dilated(xp, kernel, (stride, stride), "SAME",
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
    crops = []
    for axis in (1, 2):
        n = xp.shape[axis]
        valid = (n - k) // stride + 1
        # SAME puts max((ceil(n/s) - 1)·s + k - n, 0) // 2 zeros before: output j reads input
        # rows from j·s - lo, so VALID output i is SAME output i + lo/s.
        lo = max((-(-n // stride) - 1) * stride + k - n, 0) // 2
        assert lo % stride == 0, (n, k, stride)
        crops.append(slice(lo // stride, lo // stride + valid))
    return y[:, crops[0], crops[1]]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _valid_conv(xp: Array, kernel: Array, stride: int) -> Array:
    """`_valid_conv_plain` with a kernel gradient of k² matrix products. XLA's CPU backend
    computes a kernel gradient as one convolution whose window is the whole image, on a slow
    path. Measured on the 2-core CPU, 256 px, batch 4, XLA's kernel gradient against the
    products (ms): 128² 128 -> 64, 1050 / 363; 128² 32 -> 64 stride 2, 360 / ~75; 256² 64 -> 32,
    866 / 602."""
    return _valid_conv_plain(xp, kernel, stride)


def _valid_conv_fwd(xp, kernel, stride):
    return _valid_conv_plain(xp, kernel, stride), (xp, kernel)


def _valid_conv_bwd(stride, residuals, dy):
    xp, kernel = residuals
    _, input_vjp = jax.vjp(lambda a: _valid_conv_plain(a, kernel, stride), xp)
    (dxp,) = input_vjp(dy)
    band = _kernel_gradient_band(dy.shape[0], dy.shape[1], dy.shape[2])
    return dxp, _kernel_gradient(xp, dy, kernel.shape[0], stride, band).astype(kernel.dtype)


# The kernel gradient's k² products contract all B·H·W output pixels. From 128² outputs up, one
# product per output row, summed afterwards, runs 1.2-2x faster than one product over all pixels
# (256², 64 -> 32: 602 against 1256 ms); below, the single product is faster. Bands of 32 rows
# were faster still for single layers (256², 64 -> 32: 389 against 463 ms; 64², 128 -> 128: 84
# against 94) but made the whole training step slower (7.1 against 6.3-6.5 s), so not used.
KERNEL_GRADIENT_ROWS_FROM = 128 * 128


def _kernel_gradient_band(batch: int, out_h: int, out_w: int) -> int:
    """Output rows per product of `_kernel_gradient` (0: one product over every pixel)."""
    return 1 if out_h * out_w >= KERNEL_GRADIENT_ROWS_FROM else 0


def _kernel_gradient(xp: Array, dy: Array, k: int, stride: int, band: int) -> Array:
    """dW[i, j] = Σ_{b, o} xp[b, o·stride + (i, j)]ᵀ · dy[b, o]: for each tap, the input window it
    saw against the output gradient. ``band``: output rows per product, the products summed
    afterwards (0: one product over all B·H·W pixels). xp: float[B, Hp, Wp, Cin]; dy: float[B, H,
    W, Cout] -> float32[k, k, Cin, Cout]."""
    b, (oh, ow), cin = xp.shape[0], dy.shape[1:3], xp.shape[3]

    def tap(i, j):
        window = lax.slice(xp, (0, i, j, 0),
                           (b, i + (oh - 1) * stride + 1, j + (ow - 1) * stride + 1, cin),
                           (1, stride, stride, 1))
        if band:
            groups = b * oh // band
            return jnp.einsum("gnc,gnd->gcd", window.reshape(groups, band * ow, cin),
                              dy.reshape(groups, band * ow, -1),
                              preferred_element_type=jnp.float32).sum(0)
        return jnp.einsum("bhwc,bhwd->cd", window, dy, preferred_element_type=jnp.float32)

    return jnp.stack([jnp.stack([tap(i, j) for j in range(k)]) for i in range(k)])


_valid_conv.defvjp(_valid_conv_fwd, _valid_conv_bwd)


# ----------------------------------------------------------------------------------------------
# The Flax module.


class Conv(nn.Module):
    """Reflection padding + convolution (``kernel`` [k, k, Cin, Cout], ``bias`` [Cout])."""

    features: int
    kernel_size: int
    stride: int = 1
    upsample: bool = False  # nearest 2x upsampling first (3x3 kernels only; see `upsampled_conv`)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        k = self.kernel_size
        fan_in = k * k * x.shape[-1]
        # torch's Conv2d default (Kaiming uniform, a=sqrt(5)): U(±1/sqrt(fan_in)) for both.
        bound = 1.0 / fan_in**0.5
        uniform = lambda key, shape: jax.random.uniform(key, shape, jnp.float32, -bound, bound)  # noqa: E731
        kernel = self.param("kernel", uniform, (k, k, x.shape[-1], self.features))
        bias = self.param("bias", uniform, (self.features,))
        if self.upsample:
            return upsampled_conv(x.astype(self.dtype), kernel, bias)
        return _conv(x.astype(self.dtype), kernel, bias, self.stride)


class InstanceNorm(nn.Module):
    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = x.shape[-1]
        return instance_norm(x, self.param("scale", nn.initializers.ones, (c,)),
                             self.param("bias", nn.initializers.zeros, (c,)))


class ConvNormReLU(nn.Module):
    features: int
    kernel_size: int
    stride: int = 1
    upsample: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = Conv(self.features, self.kernel_size, self.stride, self.upsample, self.dtype,
                 name="conv")(x)
        return nn.relu(InstanceNorm(name="norm")(x))


class Residual(nn.Module):
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = x.shape[-1]
        y = Conv(c, 3, dtype=self.dtype, name="conv1")(x)
        y = nn.relu(InstanceNorm(name="norm1")(y))
        y = InstanceNorm(name="norm2")(Conv(c, 3, dtype=self.dtype, name="conv2")(y))
        return x + y


class TransformerNet(nn.Module):
    """float[B, H, W, 3] (H, W multiples of 4) in [0, 1] -> float32[B, H, W, 3], unclipped.

    base: channels of the first layer (32: the standard network; see `channels_for_width`).
    dtype: compute dtype of the convolutions (bfloat16 for speed on hardware with it; the
      normalization statistics and the output are float32).
    """

    base: int = 32
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c, d = self.base, self.dtype
        x = ConvNormReLU(c, 9, dtype=d, name="in")(x)
        x = ConvNormReLU(2 * c, 3, 2, dtype=d, name="down1")(x)
        x = ConvNormReLU(4 * c, 3, 2, dtype=d, name="down2")(x)
        for i in range(NUM_RESIDUAL):
            x = Residual(dtype=d, name=f"res{i + 1}")(x)
        x = ConvNormReLU(2 * c, 3, upsample=True, dtype=d, name="up1")(x)
        x = ConvNormReLU(c, 3, upsample=True, dtype=d, name="up2")(x)
        return Conv(3, 9, dtype=d, name="out")(x).astype(jnp.float32)


# ----------------------------------------------------------------------------------------------
# Pure functions.


def init(key: Array, width: float = 1.0) -> Params:
    """Random parameters of a network ``width`` × the standard: torch's default initialization
    (convolution kernels and biases U(±1/sqrt(fan_in)); norm scales 1, biases 0).

    Drawn as one uniform vector and cut into the leaves: Flax's ``module.init`` compiles a random
    program per parameter (about 30 s on a 2-core CPU, jitted or not)."""
    module = TransformerNet(base=channels_for_width(width))
    shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))["params"]
    total = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(shapes))
    u = np.asarray(jax.random.uniform(key, (total,), jnp.float32, -1.0, 1.0))
    offset = 0

    def leaf(path, a, parent):
        nonlocal offset
        if "norm" in jax.tree_util.keystr(path[-2:-1]):
            return jnp.ones(a.shape) if path[-1].key == "scale" else jnp.zeros(a.shape)
        size = int(np.prod(a.shape))
        fan_in = int(np.prod(parent["kernel"].shape[:3]))
        values = u[offset:offset + size].reshape(a.shape) / np.sqrt(fan_in)
        offset += size
        return jnp.asarray(values, jnp.float32)

    def walk(tree, path=()):
        return {k: walk(v, path + (jax.tree_util.DictKey(k),)) if isinstance(v, dict)
                else leaf(path + (jax.tree_util.DictKey(k),), v, tree) for k, v in tree.items()}

    return walk(dict(shapes))


def base_channels(params: Params) -> int:
    """The ``base`` channel count that ``params`` were made for (read from their shapes)."""
    return int(params["in"]["conv"]["kernel"].shape[-1])


def num_params(params: Params) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(params))


def forward(params: Params, images: Array, dtype: Any = jnp.float32) -> Array:
    """The network on float32[B, H, W, 3] in [0, 1], any H, W >= 8: unclipped float32[B, H, W, 3].

    Sides that are not multiples of 4 are reflection-padded at the bottom/right and cropped back,
    so every image keeps its size. Differentiable in ``params`` and ``images``.
    """
    b, h, w, _ = images.shape
    if min(h, w) < MIN_SIDE:
        raise ConfigError(f"images must be at least {MIN_SIDE}x{MIN_SIDE} pixels; got {h}x{w}")
    ph, pw = -h % 4, -w % 4
    x = images
    if ph or pw:
        x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="reflect")
    y = TransformerNet(base=base_channels(params), dtype=dtype).apply({"params": params}, x)
    return y[:, :h, :w]


def apply(params: Params, images: Array, dtype: Any = jnp.float32) -> Array:
    """Stylizes: float32[B, H, W, 3] in [0, 1] -> float32[B, H, W, 3] in [0, 1]. Pure, jittable."""
    return jnp.clip(forward(params, images, dtype), 0.0, 1.0)
