"""How the P independent problems of one compiled program share it: vmapped, or one after
another inside the program (`over_problems`), and which of the two a backend uses
(`sequential_problems`). Every per-problem function of a run (the optimizer's step, the content
targets, the relative weights) is mapped over the problems this way, so that a batch gives each
problem the result it gets alone."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import NamedSharding

Array = jax.Array


def over_problems(fn: Callable, sequential: bool) -> Callable:
    """``fn`` of one problem mapped over a leading problem axis of all its arguments: `jax.vmap`,
    or with ``sequential`` a loop (one problem after another, inside the same program).

    Sequential, every problem runs the very same per-problem computation whatever the batch size,
    so a batch gives each problem the result it gets alone, to the last bit. Vmapped, the problems
    are folded into the rows of each matrix product, whose blocking (and so its rounding, ~1e-7)
    depends on the batch size; an optimizer amplifies that over its steps (e.g. Adam's first
    steps are the gradients' signs), to several levels of an 8-bit image in 30 steps. On a CPU,
    whose matrix products are already large, batching buys no speed (docs/performance.md), so
    stylize runs problems sequentially there; vmapped on accelerators and across devices."""
    if not sequential:
        return jax.vmap(fn)

    def mapped(first, *rest):
        count = jax.tree.leaves(first)[0].shape[0]
        take = lambda i, tree: jax.tree.map(  # noqa: E731
            lambda x: lax.dynamic_index_in_dim(x, i, keepdims=False), tree)
        shapes = jax.eval_shape(lambda: fn(take(0, first), *take(0, rest)))
        # A result shaped like the first argument (a step's new state) is written over it
        # (below): no second copy of the state, whose L-BFGS history is most of a run's memory.
        in_place = jax.tree.structure(shapes) == jax.tree.structure(first) and all(
            (x.shape[1:], x.dtype) == (y.shape, y.dtype)
            for x, y in zip(jax.tree.leaves(first), jax.tree.leaves(shapes)))
        if not in_place:
            out = jax.tree.map(lambda y: jnp.zeros((count,) + y.shape, y.dtype), shapes)
            body = lambda i, out: _put(out, i, fn(take(i, first), *take(i, rest)))  # noqa: E731
        else:
            # Each problem's state is the carry of its own loop (of hidden trip count 1), read
            # from the batch's carry before it is overwritten, which XLA updates in place: the L-BFGS history's ring buffer gets one new pair instead
            # of being copied whole (docs/performance.md, issue 27: 3180 -> 1672 bytes of
            # temporaries per pixel at 128 px, 50 pairs). The same loop runs in a batch and alone,
            # so its body compiles alike and a batch still equals its problems alone to the bit.
            def alone(state, args):
                return lax.fori_loop(0, lax.optimization_barrier(jnp.int32(1)),
                                     lambda _, s: fn(s, *args), state)

            if count == 1:  # the state without its problem axis is the carry: no copy at all
                return jax.tree.map(lambda y: y[None], alone(take(0, first), take(0, rest)))
            out = first
            body = lambda i, out: _put(out, i, alone(take(i, out), take(i, rest)))  # noqa: E731

        # The trip count hidden from XLA: a loop of known length 1 would be inlined and fused
        # differently from the same body in a longer loop, which changes the rounding.
        return lax.fori_loop(0, lax.optimization_barrier(jnp.int32(count)), body, out)

    return mapped


def _put(batch, i: Array, one):
    """``batch`` (a pytree with a leading problem axis) with problem ``i`` set to ``one``."""
    return jax.tree.map(lambda b, y: lax.dynamic_update_index_in_dim(b, y, i, 0), batch, one)


def sequential_problems(images: Array, exact: bool = False) -> bool:
    """Whether problems laid out like ``images`` float32[P, ...] run one after another
    (`over_problems`): on a CPU, or anywhere with ``exact`` (`Config.exact_batch`), unless they
    are split over several devices. On an H200 vmapped problems ran 1.5-5x faster than in turn
    (P=2 at 512 px: 4.95 vs 7.34 ms a step; P=8 at 128 px: 2.2 vs 11.0) but a batch moved a
    48 px image by up to 42 levels from its run alone in 8 steps, one after another by none."""
    sharding = getattr(images, "sharding", None)
    spread = isinstance(sharding, NamedSharding) and sharding.mesh.size > 1
    return (exact or jax.default_backend() == "cpu") and not spread
