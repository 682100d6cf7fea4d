"""Tracking beside the optimizer, per problem: stop when converged (the loss rule, the picture
rule), an average of the iterates, the best iterate.

A `Tracking` rides in `optimize.RunState.track`; `optimize.tracked_step` wraps a step with
`advance`, and the compiled loop ends by itself once every problem has stopped or diverged. The
`Rules` are static (what is allocated, so shapes); tolerances, decay and the picture's limit are
runtime arrays, so changing them never recompiles.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxstyle.config import Config

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Rules:
    """The static part of the tracking: what `fresh` allocates (so, shapes).

    window: the convergence window in steps (the length of the loss history ring, and the
      picture rule's interval).
    average: keep an exponential moving average of the iterates (its decay is a runtime value).
    keep_best: keep the iterate with the lowest loss evaluated so far.
    picture: keep the 8-bit image of ``window`` steps ago, for the picture rule (its threshold,
      ``change``, is a runtime value).
    """

    window: int = 50
    average: bool = False
    keep_best: bool = False
    picture: bool = False

    @classmethod
    def from_config(cls, cfg: Config) -> "Rules":
        return cls(cfg.schedule.stop_window, cfg.output.average > 0, cfg.output.keep_best,
                   cfg.schedule.stop_change > 0)


# The loss rule stops only where the loss just evaluated is within this many tolerances of the best.
NEAR_BEST = 10.0


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Tracking:
    """Per-problem tracking state (leading problem axis P, like `optimize.RunState`).

    tolerance: float32[P]; a problem stops when its best loss improved by less than this fraction
      over the last ``window`` steps and the loss just evaluated is within `NEAR_BEST` times this
      fraction of the best (0: never stops).
    change_limit: float32[P]; the picture rule: a problem stops when its 8-bit image changed by
      less than this many levels on average (`picture_change`) over the last ``window`` steps,
      checked every ``window`` steps (0: never stops). Either rule stops a problem.
    decay: float32[P], the average's decay.
    count: int32[P] steps applied since tracking began (a frozen or diverged problem stops counting).
    best_loss: float32[P] the lowest loss evaluated (+inf before the first step).
    history: float32[P, window] ring of ``best_loss`` after each of the last ``window`` steps.
    stopped: bool[P] converged and frozen.
    average: float32[P, H, W, 3] the (not yet bias-corrected) average, or None.
    best_image: float32[P, H, W, 3] the iterate ``best_loss`` was evaluated at, or None.
    change: float32[P] the picture's last measured change (`picture_change`; NaN before the first).
    snapshot: uint8[P, H, W, 3] the 8-bit image at the last multiple of ``window`` steps (the
      start before that), or None without the picture rule.
    """

    tolerance: Array
    decay: Array
    count: Array
    best_loss: Array
    history: Array
    stopped: Array
    average: Array | None
    best_image: Array | None
    change_limit: Array | None = None
    change: Array | None = None
    snapshot: Array | None = None


def fresh(images: Array, rules: Rules, tolerance: Array, decay: Array,
          change: Array = 0.0) -> Tracking:
    """A new `Tracking` for P problems starting at ``images`` float32[P, H, W, 3]; ``tolerance``,
    ``decay`` and ``change`` (the picture rule's limit) are scalars shared by all problems."""
    p = images.shape[0]
    full = lambda value, dtype, shape=(): jnp.full((p,) + shape, value, dtype)  # noqa: E731
    return Tracking(
        tolerance=full(tolerance, jnp.float32), decay=full(decay, jnp.float32),
        count=full(0, jnp.int32), best_loss=full(jnp.inf, jnp.float32),
        history=full(jnp.inf, jnp.float32, (rules.window,)), stopped=full(False, bool),
        average=jnp.zeros_like(images) if rules.average else None,
        best_image=jnp.array(images, copy=True) if rules.keep_best else None,
        change_limit=full(change, jnp.float32) if rules.picture else None,
        change=full(jnp.nan, jnp.float32) if rules.picture else None,
        snapshot=to_8bit(images) if rules.picture else None)


fresh_jit = jax.jit(fresh, static_argnums=1)


def to_8bit(image: Array) -> Array:
    """uint8 of the same shape: ``image`` (float in [0, 1]) as an 8-bit file holds it,
    round(255·x) (what `image_io.save_image` writes)."""
    return jnp.round(jnp.clip(image, 0.0, 1.0) * 255.0).astype(jnp.uint8)


def picture_change(new: Array, old: Array, valid: Array | None = None) -> Array:
    """float32[]: the mean absolute change, in 8-bit levels, between two 8-bit images of ONE
    problem (uint8[H, W, C]), over the photo's values only: ``valid`` [H, W] (nonzero where the
    photo is, `jaxstyle.buckets`; None: everywhere), so that a padded image's frozen padding does
    not dilute the mean."""
    diff = jnp.abs(new.astype(jnp.int32) - old.astype(jnp.int32)).astype(jnp.float32)
    if valid is None:
        return jnp.mean(diff)
    weight = (valid != 0).astype(jnp.float32)[..., None]
    count = jnp.sum(weight) * diff.shape[-1]
    return jnp.sum(diff * weight) / jnp.maximum(count, 1.0)


def advance(track: Tracking, image: Array, new_image: Array, new_loss: Array, applied: Array,
            valid: Array | None = None) -> Tracking:
    """The tracking of ONE problem (no problem axis) after a step from ``image`` to ``new_image``
    (float32[H, W, 3]); ``new_loss`` float32[] was evaluated at ``image``; ``applied`` bool[]: the
    step counted (the problem was neither stopped nor diverged). Updates the best loss and its
    iterate, the loss history, the average, and the two stopping tests: the loss rule every step,
    the picture rule every ``window`` steps (over ``valid`` [H, W], see `picture_change`). The
    window is the history's length."""
    window = track.history.shape[-1]
    improved = applied & (new_loss < track.best_loss)
    best_loss = jnp.where(improved, new_loss, track.best_loss)
    slot = track.count % window
    window_ago = track.history[slot]  # the best loss `window` steps ago (inf until then)
    history = track.history.at[slot].set(jnp.where(applied, best_loss, window_ago))
    count = track.count + applied.astype(jnp.int32)
    gain = (window_ago - best_loss) / jnp.maximum(jnp.abs(window_ago), 1e-30)
    # ...and only where the iterate is not far above the best (within NEAR_BEST tolerances): the
    # result is the iterate, and after a scale change L-BFGS can climb far above the upsampled
    # start for a whole window (W2 at 256 px: 1000x; stopped there by the best alone, the image
    # was noise). Ten, not one, leaves room for Adam's step-to-step noise; a Gram run at 256 px
    # (the reference's weights and TV) stops at the same step with either and with the old rule.
    near_best = new_loss - best_loss <= NEAR_BEST * track.tolerance * jnp.maximum(
        jnp.abs(best_loss), 1e-30)
    converged = applied & (count > window) & (gain < track.tolerance) & near_best
    change, snapshot = track.change, track.snapshot
    if snapshot is not None:  # the picture rule: every `window` steps, the 8-bit image's change
        due = applied & (count % window == 0)
        now = to_8bit(new_image)
        moved = picture_change(now, snapshot, valid)
        change = jnp.where(due, moved, change)
        snapshot = jnp.where(due, now, snapshot)
        converged = converged | (due & (moved < track.change_limit))
    average = track.average
    if average is not None:
        mixed = track.decay * average + (1.0 - track.decay) * new_image
        average = jnp.where(applied, mixed, average)
    best_image = track.best_image
    if best_image is not None:
        best_image = jnp.where(improved, image, best_image)
    return dataclasses.replace(track, count=count, best_loss=best_loss, history=history,
                               stopped=track.stopped | converged, average=average,
                               best_image=best_image, change=change, snapshot=snapshot)


@jax.jit
def result(image: Array, track: Tracking) -> Array:
    """float32[P, H, W, 3]: the bias-corrected average of the iterates when ``track`` keeps one,
    else the best iterate when it keeps that, else ``image`` (the current iterates). A problem
    with no step counted yet gives its current image."""
    # Jitted: eagerly, each of its few operations was a program of its own.
    counted = (track.count > 0)[:, None, None, None]
    if track.average is not None:
        power = track.decay ** track.count.astype(jnp.float32)
        corrected = track.average / jnp.maximum(1.0 - power, 1e-30)[:, None, None, None]
        return jnp.where(counted, corrected, image)
    if track.best_image is not None:
        return jnp.where(counted, track.best_image, image)
    return image
