"""L-BFGS as an optax transformation for one image-shaped parameter, without a line search:
one evaluation per step, as torch.optim.LBFGS runs in neural-style, with curvature pairs stored
only where sᵀy > 0 and an optional block-scalar initial inverse Hessian (`jaxstyle.pyramid`)."""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax
from jax import lax

Array = jax.Array


class LBFGSState(NamedTuple):
    """History of one L-BFGS problem. s, y: [memory, *shape] ring buffers (float32, or bfloat16 to
    halve the largest part of a run's memory); rho: float32[memory]
    (1/sᵀy); stored: pairs stored so far (the newest is at ``(stored - 1) % memory``); gamma:
    float32[K], the scales of the initial inverse Hessian's K blocks (plain L-BFGS: K = 1,
    sᵀy/yᵀy of the newest pair); previous_*: the last point."""

    s: Array
    y: Array
    rho: Array
    stored: Array
    gamma: Array
    count: Array
    previous_params: Array
    previous_grad: Array


def scale_by_lbfgs(memory_size: int = 100, history_dtype: str = "float32",
                   precondition: Sequence[Callable[[Array], Array]] | None = None
                   ) -> optax.GradientTransformation:
    """The L-BFGS direction H·g (to be scaled by −lr), for a single array parameter.

    Unlike `optax.scale_by_lbfgs` (meant to sit before a line search), a curvature pair is stored
    only when sᵀy > 0: without a line search, which is what makes L-BFGS cheap here (one
    evaluation per step, as torch.optim.LBFGS runs in neural-style), a pair with sᵀy <= 0 would
    make the direction ascend. The first step is the gradient scaled to unit L1 norm at most, as
    torch does, so a large loss scale cannot throw the image out of range on step one.

    history_dtype "bfloat16" stores the pairs rounded to 8 mantissa bits (half the memory: the
    history is 2·memory images, 0.6 GB at 512 px in float32); sᵀy, γ and the recursion's
    arithmetic stay float32.

    precondition: K symmetric positive semi-definite linear maps Bₖ on the parameter whose sum is
    positive definite, e.g. `pyramid.as_preconditioner`. The initial inverse Hessian is
    Σₖ γₖ Bₖ with γₖ = sᵀy / (K · yᵀBₖy) from the newest pair, so that each block alone is scaled to
    the curvature along y (and yᵀH₀y = sᵀy, as for γ·I). None is the single block I: plain
    L-BFGS, γ = sᵀy/yᵀy.
    """
    blocks = tuple(precondition) if precondition else (lambda x: x,)

    def init(params: Array) -> LBFGSState:
        mem = jnp.zeros((memory_size,) + params.shape, history_dtype)
        zero = jnp.zeros((), jnp.int32)
        return LBFGSState(mem, mem, jnp.zeros((memory_size,), jnp.float32), zero,
                          jnp.ones((len(blocks),), jnp.float32), zero, jnp.zeros_like(params),
                          jnp.zeros_like(params))

    def update(grad: Array, state: LBFGSState, params: Array):
        s = params - state.previous_params
        y = grad - state.previous_grad
        sy = jnp.vdot(s, y)
        accept = (state.count > 0) & (sy > 1e-10)
        slot = state.stored % memory_size
        # Select within the slot, not over the whole history: an in-place update of one slot
        # instead of a copy of memory × image floats every step.
        store = lambda mem, new: mem.at[slot].set(  # noqa: E731
            jnp.where(accept, new.astype(mem.dtype), mem[slot]))
        curvatures = jnp.stack([jnp.vdot(y, block(y)) for block in blocks])
        gamma = sy / (len(blocks) * jnp.where(accept, curvatures, 1.0))
        new = LBFGSState(
            s=store(state.s, s), y=store(state.y, y),
            rho=store(state.rho, 1.0 / jnp.where(accept, sy, 1.0)),
            stored=state.stored + accept.astype(jnp.int32),
            gamma=jnp.where(accept, gamma, state.gamma),
            count=state.count + 1, previous_params=params, previous_grad=grad)
        initial = lambda q: sum(  # noqa: E731
            g * block(q) for g, block in zip(new.gamma, blocks))
        direction = _two_loop(grad, new, memory_size, initial)
        # The first step has no curvature to scale the blocks by: the plain gradient, capped.
        first_step = grad * jnp.minimum(1.0, 1.0 / jnp.sum(jnp.abs(grad)))
        return jnp.where(new.stored > 0, direction, first_step), new

    return optax.GradientTransformation(init, update)


def _two_loop(grad: Array, state: LBFGSState, memory_size: int,
              initial: Callable[[Array], Array]) -> Array:
    """H·grad by the two-loop recursion over the stored pairs (Nocedal & Wright, Alg. 7.4), from
    the initial inverse Hessian ``initial`` (a linear map)."""
    valid = jnp.minimum(state.stored, memory_size)

    def newest_first(j, carry):
        q, alpha = carry
        i = (state.stored - 1 - j) % memory_size
        a = state.rho[i] * jnp.vdot(state.s[i].astype(q.dtype), q)
        return q - a * state.y[i].astype(q.dtype), alpha.at[i].set(a)

    # Trip counts are the number of stored pairs (a runtime value): no work on empty slots.
    q, alpha = lax.fori_loop(0, valid, newest_first,
                             (grad, jnp.zeros((memory_size,), grad.dtype)))
    r = initial(q)

    def oldest_first(j, r):
        i = (state.stored - valid + j) % memory_size
        b = state.rho[i] * jnp.vdot(state.y[i].astype(r.dtype), r)
        return r + (alpha[i] - b) * state.s[i].astype(r.dtype)

    return lax.fori_loop(0, valid, oldest_first, r)
