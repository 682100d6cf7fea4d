"""How much of an 8-bit PNG's loss a better rounding could win back (issue 13's target is measured
on the PNG that ``jaxstyle stylize`` writes).

Rounding every value to the nearest of 256 levels adds independent noise of variance 1/12 (in
0-255 units), which total variation sees: ½Σ(255·Δx)² grows by about N/6 over N values. Here the
rounding is chosen instead to lower the loss: each value may take any level within ``--span`` of
its nearest one (``--span 0``: its floor or its ceiling only), by iterated conditional modes on the
exact total variation plus the content and style terms linearized at the current 8-bit image
(their gradient recomputed once a pass). A checkerboard's two colours are updated in turn: a
pixel's four neighbours are all of the other colour, so each half-sweep minimizes exactly and the
energy never rises.

For comparison, the bound for linear noise shaping on a 2-D grid (error feedback, whose noise
spectrum S has ∫∫log S fixed by the white noise it shapes): the total-variation weight of the noise,
4 sin²(ω₁/2) + 4 sin²(ω₂/2), can at best be met with a geometric mean of exp(4G/π) ≈ 3.21 against
its arithmetic mean 4 for white noise (G: Catalan's constant), so shaping removes at most ~20 % of
the rounding's total-variation cost.

  jaxstyle stylize content.png --style style.png --bit-depth 16 -o float.png \\
      --weights vgg19.safetensors --content-weight 10000.0 --style-weight 1000000000.0 \\
      --tv-weight 3.0757400999615533e-05
  python -m jaxstyle.bench.rounding --weights vgg19.safetensors --image float.png \\
      --content content.png --style style.png

Prints one JSON line: the loss of the image as read (16 bits), of its nearest 8-bit rounding, and
after each pass of the chosen rounding, each with its total-variation part.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import jax
import jax.numpy as jnp

from jaxstyle.bench.cli_quality import REFERENCE_WEIGHTS, read_image, reference_objective

Array = jax.Array
CATALAN = 0.915965594177219


def shaping_bound() -> float:
    """The least fraction of white rounding noise's total-variation cost that linear noise shaping
    on a 2-D grid can leave: exp(4G/π) / 4."""
    return math.exp(4 * CATALAN / math.pi) / 4


def _neighbour_cost(levels: Array, candidate: Array) -> Array:
    """Σ over the 4-neighbours j of (candidate − levels_j)², per value. levels, candidate:
    float32[H, W, C] in 0-255 units; a neighbour outside the image counts nothing."""
    padded = jnp.pad(levels, ((1, 1), (1, 1), (0, 0)))
    neighbours = (padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:])
    h, w, _ = levels.shape
    rows = jnp.arange(h)[:, None, None]
    cols = jnp.arange(w)[None, :, None]
    inside = (rows > 0, rows < h - 1, cols > 0, cols < w - 1)
    return sum(jnp.where(m, (candidate - n) ** 2, 0.0) for n, m in zip(neighbours, inside))


@jax.jit
def _sweep(levels: Array, slope: Array, low: Array, high: Array, tv_weight: Array) -> Array:
    """One sweep over both checkerboard colours: each value moves by −1, 0 or +1 within
    [low, high] to minimize ½·tv_weight·Σ(Δ levels)² + slope·levels, its neighbours held.
    levels, slope, low, high: float32[H, W, C]."""
    h, w, _ = levels.shape
    colour = (jnp.arange(h)[:, None, None] + jnp.arange(w)[None, :, None]) % 2

    def energy(candidate):
        # Each of a value's pairs is counted once here, as in the total variation's sum.
        return 0.5 * tv_weight * _neighbour_cost(levels, candidate) + slope * candidate

    for this_colour in (0, 1):
        best, best_energy = levels, energy(levels)
        for move in (-1.0, 1.0):
            candidate = jnp.clip(levels + move, low, high)
            e = energy(candidate)
            best = jnp.where(e < best_energy, candidate, best)
            best_energy = jnp.minimum(e, best_energy)
        levels = jnp.where(colour == this_colour, best, levels)
    return levels


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--weights", required=True, help="the reference's network (.pth or converted)")
    p.add_argument("--image", required=True, help="the float result: a 16-bit PNG")
    p.add_argument("--content", required=True)
    p.add_argument("--style", required=True)
    p.add_argument("--span", type=int, default=1,
                   help="levels a value may move from its nearest one (0: floor or ceiling)")
    p.add_argument("--passes", type=int, default=6)
    p.add_argument("--sweeps", type=int, default=5, help="sweeps per pass (one gradient a pass)")
    args = p.parse_args(argv)

    objective = reference_objective(args.content, args.style, args.weights)
    tv_weight = jnp.float32(REFERENCE_WEIGHTS["tv_weight"])

    @jax.jit
    def loss_parts(levels):  # float32[H, W, C] in 0-255 -> (loss, its total-variation part)
        loss, terms = objective(levels[None] / 255.0)
        return loss, terms["tv"][0]

    @jax.jit
    def content_style_slope(levels):  # d(content + style)/d level, float32[H, W, C]
        def content_style(lv):
            loss, tv = loss_parts(lv)
            return loss - tv
        return jax.grad(content_style)(levels)

    def record(levels):
        loss, tv = loss_parts(levels)
        return {"loss": float(loss), "tv": float(tv)}

    exact = jnp.clip(read_image(args.image)[0], 0.0, 1.0) * 255.0
    nearest = jnp.round(exact)
    if args.span == 0:
        low, high = jnp.floor(exact), jnp.minimum(jnp.floor(exact) + 1, 255.0)
    else:
        low, high = jnp.maximum(nearest - args.span, 0.0), jnp.minimum(nearest + args.span, 255.0)
    levels, passes = nearest, []
    for _ in range(args.passes):
        slope = content_style_slope(levels)
        for _ in range(args.sweeps):
            levels = _sweep(levels, slope, low, high, tv_weight)
        passes.append(record(levels))
    print(json.dumps({"image": args.image, "span": args.span, "float": record(exact),
                      "nearest_8bit": record(nearest), "chosen_8bit_by_pass": passes,
                      "largest_move": float(jnp.max(jnp.abs(levels - exact))),
                      "shaping_bound_tv_fraction": round(shaping_bound(), 4)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
