"""Optimizing the image: optax Adam or L-BFGS, steps run as compiled loops.

`run_steps` is one jitted function per problem shape: a ``lax.fori_loop`` whose trip count is a
runtime value, so running 10 or 1000 steps, changing loss weights or images never recompiles. The
Python driver `run` calls it in chunks so that a progress bar (or a snapshot, or Ctrl-C) can act
between chunks; nothing crosses to the host inside a chunk.

The image is kept in the box [0, 1] by projection: each step's result is clipped. For L-BFGS the
curvature pairs are then taken between projected iterates (s = x₊ − x), which is the usual
projected quasi-Newton heuristic; pairs without positive curvature are not stored (like
torch.optim.LBFGS), so the inverse-Hessian estimate stays positive definite.

A step whose loss, gradient or result is not finite is not applied: the state keeps the last
finite iterate and raises ``diverged``, after which that problem's steps do nothing (the others of
a batch go on).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec
from jax import lax

from jaxstyle import losses, problems, pyramid, tracking
from jaxstyle.lbfgs import scale_by_lbfgs
from jaxstyle.models import vgg19
from jaxstyle.config import Config

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Method:
    """The optimizer, hashable so that it can be a static argument of a jitted function.

    name: "adam" or "lbfgs"; learning_rate: Adam's step, or L-BFGS's scale on the quasi-Newton step;
    memory: L-BFGS history length; history_dtype: the dtype its curvature pairs are stored in.
    """

    name: str = "lbfgs"
    learning_rate: float = 1.0
    memory: int = 100
    history_dtype: str = "float32"
    pyramid_levels: int = 1

    @classmethod
    def from_config(cls, cfg: Config) -> "Method":
        opt = cfg.optimizer
        return cls(opt.name, opt.step_size, opt.lbfgs_memory, opt.lbfgs_history_dtype,
                   opt.lbfgs_pyramid)

    def transformation(self) -> optax.GradientTransformation:
        if self.name == "adam":
            return optax.adam(self.learning_rate)
        return optax.chain(scale_by_lbfgs(self.memory, self.history_dtype,
                                          pyramid.as_preconditioner(self.pyramid_levels)),
                           optax.scale(-self.learning_rate))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RunState:
    """Optimization states of P independent problems (a pytree; pass in, get back).

    Every leaf has a leading problem axis P; each problem has its own optimizer state, so one
    image's L-BFGS history or divergence never affects another's.

    image: float32[P, H, W, 3] in [0, 1], the current iterates (the last finite ones if diverged).
    opt_state: the optax states. step: int32[P] steps applied. loss: float32[P] and terms
    ({content, style, tv}: float32[P]) at the images before the last step. diverged: bool[P].
    track: a `tracking.Tracking` (convergence stop, average, best iterate; see `init_tracking` and
    `tracked_step`), or None for a plain run.
    """

    image: Array
    opt_state: optax.OptState
    step: Array
    loss: Array
    terms: dict
    diverged: Array
    track: tracking.Tracking | None = None


def init_state(images: Array, method: Method, rules: tracking.Rules | None = None,
               tolerance: float = 0.0, decay: float = 0.0, change: float = 0.0) -> RunState:
    """images: float32[P, H, W, 3] in [0, 1], one starting image per problem. With ``rules``,
    the state is tracked too (as `init_tracking` with ``tolerance``, ``decay`` and ``change``),
    in the same compiled program."""
    # `run_steps` donates the state: every leaf needs a buffer of its own, which the outputs of
    # one jitted call are (built eagerly and then copied, the L-BFGS history briefly took twice its
    # memory: +0.6 GB at 512 px). Dtypes are explicit (no weak types), so the state that
    # `run_steps` returns matches this one and never recompiles.
    state = _fresh_state(jnp.asarray(images, jnp.float32), method, rules,
                         np.float32(tolerance), np.float32(decay), np.float32(change))
    return _shard_like(state, images)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _fresh_state(images: Array, method: Method, rules: tracking.Rules | None = None,
                 tolerance: Array = 0.0, decay: Array = 0.0, change: Array = 0.0) -> RunState:
    state = _fresh_untracked(images, method)
    if rules is not None:
        state = dataclasses.replace(state, track=tracking.fresh(state.image, rules, tolerance,
                                                                decay, change))
    return state


def _fresh_untracked(images: Array, method: Method) -> RunState:
    def one(image):
        zero = jnp.zeros((), jnp.float32)
        return RunState(image=image, opt_state=method.transformation().init(image),
                        step=jnp.zeros((), jnp.int32), loss=jnp.full((), jnp.nan, jnp.float32),
                        terms={"content": zero, "style": zero, "tv": zero},
                        diverged=jnp.zeros((), bool))

    return jax.vmap(one)(jnp.clip(images, 0.0, 1.0))


def _shard_like(state: RunState, images: Array) -> RunState:
    """Every leaf split over the problem axis as ``images`` is. Otherwise per-problem scalars made
    here would sit on one device while `run_steps` returns them laid out over the mesh, and the
    second chunk of a sharded run would compile a second program."""
    sharding = getattr(images, "sharding", None)
    if not isinstance(sharding, NamedSharding):
        return state
    # On a one-device mesh XLA returns every leaf as P(); a P("batch") input would not match it.
    problem_axis = sharding.spec[0] if len(sharding.spec) and sharding.mesh.size > 1 else None
    by_problem = NamedSharding(sharding.mesh, PartitionSpec(*[problem_axis] if problem_axis else []))
    # A jitted identity, not `jax.device_put`: under `jax.distributed` the leaves made here from
    # constants (step, loss, terms, diverged) are host-local, and device_put of a host-local array
    # to a sharding over every host's devices first checks that all hosts hold the same value, an
    # allgather whose equality test fails on the NaN that ``loss`` starts at.
    return jax.jit(_identity, out_shardings=by_problem)(state)


def _identity(tree):
    return tree


@functools.partial(jax.jit, static_argnums=1)
def problem_targets(targets: losses.Targets, num_problems: int) -> losses.Targets:
    """`losses.targets` for P content images (content [P, h, w, C], style [1, C, C] shared or
    [P, C, C] one per problem) as per-problem targets with a leading problem axis: content
    [P, 1, h, w, C], style [P, 1, C, C]."""
    # Guided style: guidance [R, h, w] is shared by every problem; [P, R, h, w] is per problem.
    guidance = None if targets.guidance is None else {
        k: v if v.ndim == 4 else jnp.broadcast_to(v, (num_problems,) + v.shape)
        for k, v in targets.guidance.items()}
    # A film's temporal targets (image [P, H, W, 3], mask [P, H, W, 1]) are per problem.
    temporal = None if targets.temporal is None else {
        k: v[:, None] for k, v in targets.temporal.items()}
    # A padded image's validity masks (`jaxstyle.buckets`) are per problem: [P, h, w].
    valid = None if targets.valid is None else {k: v[:, None] for k, v in targets.valid.items()}
    return losses.Targets(
        content={k: v[:, None] for k, v in targets.content.items()},
        style={k: jnp.broadcast_to(v, (num_problems,) + v.shape[1:])[:, None]
               for k, v in targets.style.items()},
        guidance=guidance, temporal=temporal, valid=valid)


def _all_finite(*arrays: Array) -> Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in arrays]))


def step(state: RunState, vgg: vgg19.VGG, targets: losses.Targets, spec: losses.LossSpec,
         method: Method, dtype=jnp.float32, step_scale: Array | None = None) -> RunState:
    """One loss+gradient evaluation and one projected optimizer update, for ONE problem (no
    problem axis: image float32[H, W, 3], targets as from `losses.targets` for one image).

    step_scale: float32[], optional, multiplies the optimizer's update: a learning rate that is a
    runtime value (a sweep's per-problem rate, with a `Method` of learning_rate 1.0; Adam's and
    L-BFGS's updates are linear in their rate)."""

    def objective(image):
        loss, terms = losses.total_loss(vgg, image[None], targets, spec, dtype)
        return loss, {k: v[0] for k, v in terms.items()}

    (loss, terms), grad = jax.value_and_grad(objective, has_aux=True)(state.image)
    frozen = None
    if targets.valid is not None:  # a padded image (`jaxstyle.buckets`): its padding stays fixed
        frozen = targets.valid["level0"][0][..., None] == 0
        grad = jnp.where(frozen, 0.0, grad)
    updates, opt_state = method.transformation().update(grad, state.opt_state, state.image)
    if step_scale is not None:
        updates = updates * step_scale
    image = jnp.clip(state.image + updates, 0.0, 1.0)
    if frozen is not None:
        image = jnp.where(frozen, state.image, image)
    apply = ~state.diverged & _all_finite(loss, grad, image)
    keep = lambda new, old: jnp.where(apply, new, old)  # noqa: E731
    # The optimizer state is not gated: once a problem diverges it never applies an update again,
    # so its state no longer matters, and gating it would copy the L-BFGS history every step.
    return RunState(
        image=keep(image, state.image),
        opt_state=opt_state,
        step=state.step + apply.astype(jnp.int32),
        loss=keep(loss, state.loss),
        terms=jax.tree.map(keep, terms, state.terms),
        diverged=~apply,
    )


def prepared(vgg: vgg19.VGG, spec: losses.LossSpec) -> vgg19.VGG:
    """``vgg`` cut to the layers ``spec`` uses and `vgg19.prepare`d, unless it already is."""
    if vgg.prepared is not None:
        return vgg
    return vgg19.prepare(vgg19.truncate(vgg, spec.layers))


@functools.partial(jax.jit, static_argnames=("method", "dtype", "sequential"),
                   donate_argnames=("state",))
def run_steps(state: RunState, num_steps: Array | int, vgg: vgg19.VGG, targets: losses.Targets,
              spec: losses.LossSpec, method: Method, dtype: str = "float32",
              step_scale: Array | None = None, sequential: bool = False) -> RunState:
    """At most ``num_steps`` optimizer steps for every problem, compiled once per shape
    (``num_steps`` is a runtime value); the compiled loop ends early once every problem has
    diverged or, with a `tracking.Tracking` (`init_tracking`), stopped. targets: per problem, as from
    `problem_targets`.

    A spec shared by all problems (weights float32[L]) is closed over. A `losses.LossSpec.stack`ed
    one (weights with a leading problem axis P) is mapped with the problems: every problem its own
    loss weights, still runtime arrays in one program (a sweep). step_scale: float32[P], optional:
    each problem's update multiplied by it (see `step`). sequential: problems one after another
    instead of vmapped (see `problems.over_problems`).

    Pass a `vgg19.prepare`d network when calling repeatedly (as `run` does): an unprepared one has
    its kernels transformed at every call, outside the loop but inside this program (on a CPU that
    is ~0.4 s per call, more than half a 256 px step)."""
    vgg = prepared(vgg, spec)
    one_step = step if state.track is None else tracked_step
    per_problem_spec = spec if spec.per_problem else None  # else closed over, shared

    def one(s, t, own_spec, scale):
        return one_step(s, vgg, t, spec if own_spec is None else own_spec, method,
                        jnp.dtype(dtype), scale)

    all_steps = problems.over_problems(one, sequential)
    num_steps = jnp.asarray(num_steps, jnp.int32)

    def going(carry):
        i, s = carry
        return (i < num_steps) & ~jnp.all(finished(s))

    def body(carry):
        i, s = carry
        return i + 1, all_steps(s, targets, per_problem_spec, step_scale)

    return lax.while_loop(going, body, (jnp.zeros((), jnp.int32), state))[1]


@functools.partial(jax.jit, static_argnames=("dtype",))
def loss_and_grad(images: Array, vgg: vgg19.VGG, targets: losses.Targets, spec: losses.LossSpec,
                  dtype: str = "float32") -> tuple[tuple[Array, dict], Array]:
    """((loss, terms), gradient) at ``images``: float32[B, H, W, 3], with `losses.targets`."""
    objective = functools.partial(losses.total_loss, vgg, targets=targets, spec=spec,
                                  dtype=jnp.dtype(dtype))
    return jax.value_and_grad(objective, has_aux=True)(images)


def chunk_boundaries(num_iterations: int, every: tuple[int, ...], max_chunk: int = 50,
                     start: int = 0) -> list[int]:
    """Iteration counts in (start, num_iterations] after which the driver returns to Python: every
    multiple of each of ``every`` (progress, snapshots), at most ``max_chunk`` apart, and the last
    iteration. Multiples are absolute, so a run resumed at ``start`` keeps its rhythm."""
    marks = {num_iterations}
    for k in (*every, max_chunk):
        if k and k > 0:
            marks.update(range((start // k + 1) * k, num_iterations, k))
    return sorted(m for m in marks if m > start)


def run(state: RunState, num_iterations: int, vgg: vgg19.VGG, targets: losses.Targets,
        spec: losses.LossSpec, method: Method, dtype: str = "float32",
        every: tuple[int, ...] = (), on_chunk: Callable[[RunState, int], None] | None = None,
        start: int = 0, step_scale: Array | None = None, sequential: bool = False) -> RunState:
    """Runs steps ``start`` … ``num_iterations`` from ``state`` in compiled chunks.

    on_chunk(state, iterations_done) is called after each chunk (chunk ends: see
    `chunk_boundaries`); it may block on the state (a progress bar reads the loss). Ends early when
    every problem has diverged or (tracked) stopped; ``on_chunk`` then gets the iterations actually
    run. Returns the last state. A stacked ``spec``, ``step_scale`` (float32[P]) and
    ``sequential``: see `run_steps`.
    """
    done = start
    vgg = prepared(vgg, spec)  # once for all chunks
    counted = None if state.track is None else int(_progress(state)[1])
    for mark in chunk_boundaries(num_iterations, every, start=start):
        state = run_steps(state, mark - done, vgg, targets, spec, method, dtype, step_scale,
                          sequential)
        over, furthest = map(int, _progress(state))
        done = mark
        if over and counted is not None:  # ended inside the chunk: where the furthest problem is
            done = min(mark, start + furthest - counted)
        if on_chunk is not None:
            on_chunk(state, done)
        if over:
            break
    return state


def _progress(state: RunState) -> tuple[Array, Array]:
    """(whether every problem has finished, the most steps tracked by any problem: 0 untracked),
    from the per-problem scalars alone: one small program whatever the image's shape (eagerly,
    these reductions were programs of their own, compiled per call site)."""
    track = state.track
    return _progress_of(state.diverged, None if track is None else track.stopped,
                        None if track is None else track.count)


@jax.jit
def _progress_of(diverged: Array, stopped: Array | None, count: Array | None):
    over = jnp.all(diverged if stopped is None else diverged | stopped)
    return over, (jnp.zeros((), jnp.int32) if count is None else jnp.max(count))


# ----------------------------------------------------------------------------------------------
# A state with a `tracking.Tracking` (`init_tracking`) makes `run_steps` take `tracked_step`, which
# wraps `step`; the compiled loop ends by itself once every problem has stopped or diverged.


def init_tracking(state: RunState, rules: tracking.Rules, tolerance: float = 0.0,
                  decay: float = 0.0, change: float = 0.0) -> RunState:
    """``state`` with a fresh `tracking.Tracking` (laid out like its images). `init_state` with
    ``rules`` makes both in one program."""
    track = tracking.fresh_jit(state.image, rules, np.float32(tolerance), np.float32(decay),
                               np.float32(change))
    return dataclasses.replace(state, track=_shard_like(track, state.image))


def tracked_step(state: RunState, vgg: vgg19.VGG, targets: losses.Targets, spec: losses.LossSpec,
                 method: Method, dtype=jnp.float32, step_scale: Array | None = None) -> RunState:
    """`step` for ONE problem (no problem axis), then `tracking.advance`: a stopped problem stays
    frozen (image, loss, step count); otherwise its tracking follows the step. The `Rules` are read
    off the tracking state's structure (the history's length, which of average / best image /
    picture it holds)."""
    track = state.track
    new = step(dataclasses.replace(state, track=None), vgg, targets, spec, method, dtype,
               step_scale)
    active = ~track.stopped
    keep = lambda n, o: jnp.where(active, n, o)  # noqa: E731
    new = dataclasses.replace(  # the optimizer state is not gated (see `step`)
        new, image=keep(new.image, state.image), step=keep(new.step, state.step),
        loss=keep(new.loss, state.loss), terms=jax.tree.map(keep, new.terms, state.terms),
        diverged=keep(new.diverged, state.diverged))
    applied = active & (new.step > state.step)
    valid = None if targets.valid is None else targets.valid["level0"][0]
    # new.loss was evaluated at state.image
    track = tracking.advance(track, state.image, new.image, new.loss, applied, valid)
    return dataclasses.replace(new, track=track)


def result_images(state: RunState) -> Array:
    """The result of a run, float32[P, H, W, 3]: the bias-corrected average of the iterates when
    tracked with ``average``, else the best iterate when tracked with ``keep_best``, else the
    current iterates. A problem with no step applied yet gives its current image."""
    if state.track is None:
        return state.image
    return tracking.result(state.image, state.track)


def finished(state: RunState) -> Array:
    """bool[P]: stopped by the convergence test or diverged."""
    stopped = state.track.stopped if state.track is not None else jnp.zeros_like(state.diverged)
    return stopped | state.diverged
