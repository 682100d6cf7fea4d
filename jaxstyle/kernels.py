"""Convolution formulations shared by jaxstyle's networks: pure functions on NHWC arrays.

Each is pinned against the plain ``lax`` formulation by tests; they exist for speed:
  * `conv3x3` carries a custom VJP whose input gradient is an ordinary NHWC/HWIO convolution with
    the spatially flipped, in/out-swapped kernel. JAX's own transpose rule emits a convolution with
    kernel layout ``01oi`` plus a reverse, which XLA's CPU backend leaves as a slow generic loop nest
    when it sits inside a while loop (``lax.scan``/``fori_loop``): its convolution canonicalization
    only visits the entry computation. `prepare_kernel` computes the flipped kernels once, outside
    loops.
  * on CPU, the wide convolutions (Cin·Cout >= 128·256) run as Winograd F(2x2, 3x3) in cache-sized
    bands: 16 matrix products on transformed tiles, about twice as fast there as XLA's direct
    convolution. Their input gradient reuses the forward transform (one transformed copy of each
    kernel, not two).
  * `pool2x2` is a reshape and a reduction rather than ``reduce_window``.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array

_DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def conv_same(x: Array, kernel: Array) -> Array:
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
# The input gradient's kernel is the flipped one (`flip_kernel`), and G·J = P·G for the reversal J
# and the swap P of rows 0 and 3, so its transform is u[P·, P·] with Cin and Cout swapped. The
# gradient therefore reuses the forward transform (no second copy of every kernel) with P folded
# into the tile transforms: Bᵀ's rows and Aᵀ's columns permuted, u contracted on its Cout axis.
_FLIP = [3, 1, 2, 0]
_WINOGRAD_BT_FLIPPED = _WINOGRAD_BT[_FLIP]
_WINOGRAD_AT_FLIPPED = _WINOGRAD_AT[:, _FLIP]
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


def _winograd_band(xp: Array, u: Array, th: int, tw: int, flipped: bool = False) -> Array:
    """Winograd on th x tw output tiles. xp: float[B, 2th+2, 2tw+2, Cin] (padded input rows of the
    band) -> float[B, 2th, 2tw, Cout]. ``flipped``: convolve with the kernel's `flip_kernel`
    instead, u staying the forward transform float[16, Cout, Cin] (see _FLIP)."""
    b, c = xp.shape[0], xp.shape[-1]
    bt, at = (_WINOGRAD_BT_FLIPPED, _WINOGRAD_AT_FLIPPED) if flipped else (_WINOGRAD_BT, _WINOGRAD_AT)
    # Bᵀ·d·B separably: rows first (on the full width), then columns.
    rows = [xp[:, i:i + 2 * th:2] for i in range(4)]
    rows = jnp.stack([_combine(bt[k], rows) for k in range(4)])
    cols = [rows[:, :, :, j:j + 2 * tw:2] for j in range(4)]
    v = jnp.stack([_combine(bt[k], cols) for k in range(4)], 1).reshape(16, -1, c)
    m = jnp.einsum("tnc,toc->tno" if flipped else "tnc,tco->tno", v, u,
                   preferred_element_type=jnp.float32).astype(xp.dtype)
    m = m.reshape(4, 4, b, th, tw, -1)
    half = [_combine(at[p], [m[k] for k in range(4)]) for p in range(2)]
    out = [[_combine(at[q], [hp[k] for k in range(4)]) for q in range(2)] for hp in half]
    out = jnp.stack([jnp.stack(o, axis=3) for o in out], axis=2)  # [B, th, 2, tw, 2, Cout]
    return out.reshape(b, 2 * th, 2 * tw, -1)


def _winograd_conv(x: Array, u: Array, flipped: bool = False) -> Array:
    """SAME 3x3 convolution of x: float[B, H, W, Cin] with ``winograd_kernel`` u -> [B, H, W, Cout]
    (``flipped``: with the kernel's `flip_kernel`, u still float[16, Cout, Cin])."""
    b, h, w, c = x.shape
    th, tw = (h + 1) // 2, (w + 1) // 2  # 2x2 output tiles
    xp = jnp.pad(x, ((0, 0), (1, 2 * th - h + 1), (1, 2 * tw - w + 1), (0, 0)))
    band_row_bytes = 16 * b * tw * (u.shape[1] + u.shape[2]) * x.dtype.itemsize
    rows_per_band = max(1, min(th, WINOGRAD_BAND_BYTES // band_row_bytes),
                        -(-th // WINOGRAD_MAX_BANDS))
    bands, previous = [], None
    for r0 in range(0, th, rows_per_band):
        r1 = min(th, r0 + rows_per_band)
        band = xp[:, 2 * r0:2 * r1 + 2]
        if previous is not None:  # one band after another, so only one band's tiles are live
            band, _ = lax.optimization_barrier((band, previous))
        previous = _winograd_band(band, u, r1 - r0, tw, flipped)
        bands.append(previous)
    out = bands[0] if len(bands) == 1 else jnp.concatenate(bands, axis=1)
    return out[:, :h, :w]


class PreparedKernel(NamedTuple):
    """What the convolution needs besides the kernel, computed once outside a loop (`prepare`).

    grad_kernel: ``flip_kernel(kernel)``, float[3, 3, Cout, Cin], for the input gradient of a
    direct convolution; None where `use_winograd`.
    winograd: ``winograd_kernel(kernel)``, float[16, Cin, Cout], where `use_winograd` (the input
    gradient reuses it, see _FLIP); else None.
    """

    grad_kernel: Array | None
    winograd: Array | None = None


def prepare_kernel(kernel: Array) -> PreparedKernel:
    cin, cout = kernel.shape[2:]
    if use_winograd(cin, cout):
        return PreparedKernel(None, _materialized(winograd_kernel(kernel)))
    return PreparedKernel(_materialized(flip_kernel(kernel)))


def _conv(x: Array, kernel: Array, winograd: Array | None) -> Array:
    cin, cout = kernel.shape[2:]
    if not use_winograd(cin, cout):
        return conv_same(x, kernel)
    return _winograd_conv(x, winograd if winograd is not None else winograd_kernel(kernel))


def _input_gradient(g: Array, kernel: Array, prepared: PreparedKernel | None) -> Array:
    """The input gradient of a SAME conv with ``kernel`` for the output gradient ``g``: the SAME
    convolution with the flipped kernel (Winograd: the forward transform, flipped; see _FLIP)."""
    cin, cout = kernel.shape[2:]
    if use_winograd(cout, cin):
        u = prepared.winograd if prepared is not None else _materialized(winograd_kernel(kernel))
        return _winograd_conv(g, u.astype(g.dtype), flipped=True)
    flipped = prepared.grad_kernel if prepared is not None else _materialized(flip_kernel(kernel))
    return conv_same(g, flipped.astype(g.dtype))


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
    dx = _input_gradient(g, kernel, prepared)
    # Dead code (removed by XLA) unless someone differentiates with respect to the weights.
    _, kernel_vjp = jax.vjp(lambda k: conv_same(x, k), kernel)
    (dkernel,) = kernel_vjp(g)
    dbias = jnp.sum(g, axis=tuple(range(g.ndim - 1))).astype(kernel.dtype)
    return dx, dkernel, dbias, jax.tree.map(jnp.zeros_like, prepared)


conv3x3.defvjp(_conv3x3_fwd, _conv3x3_bwd)


def pool2x2(x: Array, pooling: str = "max") -> Array:
    """2x2 stride-2 pooling (floor on odd sizes, like torch and Keras). float[B, H, W, C] ->
    float[B, H//2, W//2, C]. Reshape-based: faster to differentiate on CPU than reduce_window."""
    if pooling == "max":
        return _max_pool(x)
    b, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, c)
    return x.max(axis=(2, 4)) if pooling == "max" else x.mean(axis=(2, 4))


def _max_pool_plain(x: Array) -> Array:
    b, h, w, c = x.shape
    return x[:, : h // 2 * 2, : w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


# Max pooling with its own VJP: the backward recomputes which inputs were the maxima from the
# input (kept anyway: the ReLU before it is a Gram's or the pooling's input) and the small output,
# fused with the gradient. JAX's own rule kept that choice as a float32 mask of the input's size,
# 256 B per pixel at relu1_2 (measured: XLA's temporaries of an Adam step 2540 -> 2180 B per
# pixel at 128 px; docs/performance.md).
@jax.custom_vjp
def _max_pool(x: Array) -> Array:
    return _max_pool_plain(x)


def _max_pool_fwd(x):
    y = _max_pool_plain(x)
    return y, (x, y)


def _max_pool_bwd(residuals, g):
    x, y = residuals
    b, h, w, c = x.shape
    xs = x[:, : h // 2 * 2, : w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, c)
    hit = xs == y[:, :, None, :, None]
    # Split equally between tied maxima, as JAX's own gradient of `max` does.
    ties = jnp.sum(hit, axis=(2, 4), keepdims=True).astype(g.dtype)
    dx = jnp.where(hit, g[:, :, None, :, None] / ties, 0.0).reshape(b, h // 2 * 2, w // 2 * 2, c)
    return (jnp.pad(dx, ((0, 0), (0, h - h // 2 * 2), (0, w - w // 2 * 2), (0, 0))
                    ).astype(x.dtype),)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)



# ReLU and max pooling that keep for the backward pass only what it needs (issue 27). With the
# gradient taken for the image alone, a convolution's backward needs no activation (its input
# gradient is a convolution of the output gradient); what XLA kept were the ReLUs' float32
# inputs (for their masks) and the poolings' float32 inputs (for the choice of maxima): 512 B per
# pixel at relu1_2 / pool1 alone.
def _fenced(x: Array) -> Array:
    """x, materialized when it is not float32. XLA's CPU backend computes a fusion of bfloat16
    operations in float32 and rounds at its boundaries, so where a fusion ends changes the
    result; fencing the ReLU's gradient keeps that boundary fixed whatever program it sits in
    (a precaution for batch = alone, tests/test_invariants.py, which passes with it)."""
    return x if x.dtype == jnp.float32 else lax.optimization_barrier(x)


@jax.custom_vjp
def relu_masked(x: Array) -> Array:
    """ReLU that keeps a bool mask (1 byte an element instead of x's 4) for its backward: for
    activations nothing else keeps. float[...] -> float[...], values and gradient as
    `jax.nn.relu`'s (gradient 0 at 0)."""
    return jnp.maximum(x, 0)


def _relu_masked_fwd(x):
    return jnp.maximum(x, 0), x > 0


def _relu_masked_bwd(positive, g):
    return (_fenced(jnp.where(positive, g, 0).astype(g.dtype)),)


relu_masked.defvjp(_relu_masked_fwd, _relu_masked_bwd)


@jax.custom_vjp
def relu_kept(x: Array) -> Array:
    """ReLU whose backward reads its mask off its output (y > 0 exactly where x > 0): for an
    activation kept anyway (a Gram's input), so that its input need not be. Values and gradient
    as `jax.nn.relu`'s."""
    return jnp.maximum(x, 0)


def _relu_kept_fwd(x):
    y = jnp.maximum(x, 0)
    return y, y


def _relu_kept_bwd(y, g):
    return (_fenced(jnp.where(y > 0, g, 0).astype(g.dtype)),)


relu_kept.defvjp(_relu_kept_fwd, _relu_kept_bwd)


def relu_max_pool(x: Array) -> Array:
    """``pool2x2(relu(x), "max")`` keeping, for the backward, one uint8 per pooled element (bit k:
    input k of its 2x2 window is a maximum, and that maximum is positive) instead of x and
    relu(x): 1 byte per 4 input elements where JAX kept 8. float[B, H, W, C] ->
    float[B, H//2, W//2, C]; the gradient equals JAX's for ``pool2x2(jax.nn.relu(x))``, ties
    split equally."""
    return _relu_max_pool(x, (x.shape[1] % 2, x.shape[2] % 2))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _relu_max_pool(x: Array, odd: tuple[int, int]) -> Array:
    return _max_pool_plain(jnp.maximum(x, 0))


def _window(x: Array) -> Array:
    """float[B, H, W, C] -> [B, H//2, W//2, C, 4]: each 2x2 window's inputs (row-major)."""
    b, h, w, c = x.shape
    xs = x[:, : h // 2 * 2, : w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, c)
    return xs.transpose(0, 1, 3, 5, 2, 4).reshape(b, h // 2, w // 2, c, 4)


_BITS = np.array([1, 2, 4, 8], np.uint8)


def _relu_max_pool_fwd(x, odd):
    r = jnp.maximum(x, 0)
    y = _max_pool_plain(r)
    hit = (_window(r) == y[..., None]) & (y[..., None] > 0)
    code = jnp.sum(jnp.where(hit, _BITS, np.uint8(0)), axis=-1, dtype=jnp.uint8)
    return y, code


def _relu_max_pool_bwd(odd, code, g):
    b, h, w, c = code.shape
    hit = (code[..., None] & _BITS) != 0  # [B, h, w, C, 4]
    ties = jnp.maximum(jnp.sum(hit, axis=-1, keepdims=True), 1).astype(g.dtype)
    dx = jnp.where(hit, g[..., None] / ties, 0).astype(g.dtype)
    dx = dx.reshape(b, h, w, c, 2, 2).transpose(0, 1, 4, 2, 5, 3).reshape(b, 2 * h, 2 * w, c)
    return (jnp.pad(dx, ((0, 0), (0, odd[0]), (0, odd[1]), (0, 0))),)


_relu_max_pool.defvjp(_relu_max_pool_fwd, _relu_max_pool_bwd)
