"""The picture stopping rule (`Config.stop_change`, `tracking.picture_change`): a problem stops when
its image, as an 8-bit file holds it, changed by less than a number of levels over a window.
References: the change recomputed in NumPy from the iterates the run went through, the photo's
values only. A random shallow VGG on 32 px images, a batch of problems each with its own limit."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstyle import buckets, losses, optimize, stylize, tracking, vgg19
from jaxstyle.config import Config, ConfigError, from_preset
from helpers import CAFFE

CFG = Config().replace(content_layers=("relu2_1",), style_layers=("relu1_1", "relu2_1"))
WINDOW = 4
CAP = 24
SIZE = 32
PHOTO = (16, SIZE)  # the padded problem's photo: the top half


def numpy_change(new: np.ndarray, old: np.ndarray, valid: np.ndarray) -> float:
    """Mean |round(255·new) - round(255·old)| over the values where ``valid`` [H, W] is 1."""
    q = lambda x: np.round(np.clip(x, 0, 1) * 255).astype(np.int64)  # noqa: E731
    return float(np.abs(q(new) - q(old))[valid.astype(bool)].mean())


def test_picture_change_is_the_mean_absolute_level_change_over_the_photo():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)
    valid = np.zeros((9, 7), np.float32)
    valid[:5, :4] = 1
    expected = np.abs(a.astype(float) - b.astype(float))[:5, :4].mean()
    assert float(tracking.picture_change(jnp.asarray(a), jnp.asarray(b), jnp.asarray(valid))) == \
        pytest.approx(expected, rel=1e-6)
    everywhere = np.abs(a.astype(float) - b.astype(float)).mean()
    assert float(tracking.picture_change(jnp.asarray(a), jnp.asarray(b))) == \
        pytest.approx(everywhere, rel=1e-6)
    # round(255·x), as the PNG writer rounds (no wrap-around of uint8 differences either).
    x = jnp.asarray([[[0.0, 0.5 / 255 + 1e-4, 1.0]]], jnp.float32)
    assert np.asarray(tracking.to_8bit(x)).tolist() == [[[0, 1, 255]]]


@pytest.fixture(scope="module")
def batch():
    """Three problems of one 32 px content and style, each its own start: 0 and 1 full images, 2 a
    padded photo (its top half; the padding frozen, `jaxstyle.buckets`)."""
    vgg = vgg19.init(jax.random.key(0), CAFFE, last_layer="relu2_1")
    rng = np.random.default_rng(0)
    content = jnp.asarray(rng.uniform(size=(1, SIZE, SIZE, 3)), jnp.float32)
    style = jnp.asarray(rng.uniform(size=(1, SIZE, SIZE, 3)), jnp.float32)
    start = jnp.asarray(rng.uniform(size=(3, SIZE, SIZE, 3)), jnp.float32)
    spec = losses.LossSpec.from_config(CFG)
    targets = jax.jit(losses.targets)(vgg, jnp.concatenate([content] * 3), [style], [1.0], spec)
    full = buckets.valid_masks((SIZE, SIZE), (SIZE, SIZE), spec.layers, 2)
    half = buckets.valid_masks(PHOTO, (SIZE, SIZE), spec.layers, 1)
    valid = {k: jnp.asarray(np.concatenate([full[k], half[k]])) for k in full}
    targets = dataclasses.replace(optimize.problem_targets(targets, 3),
                                  valid={k: v[:, None] for k, v in valid.items()})
    return dict(vgg=vgg, spec=spec, start=start, targets=targets,
                valid=np.asarray(valid["level0"]))


@pytest.mark.parametrize("method", [optimize.Method("adam", 0.02), optimize.Method("lbfgs", 1.0)],
                         ids=["adam", "lbfgs"])
def test_a_still_picture_stops_a_moving_one_does_not_problem_by_problem(batch, method):
    # Problem 0 barely moves (its updates scaled by 1e-7: its 8-bit image no longer changes);
    # 1 and 2 move freely. Each problem has its own limit in levels, runtime values.
    limits = np.asarray([0.5, 0.5, 0.5], np.float32)
    scale = jnp.asarray([1e-7, 1.0, 1.0], jnp.float32)
    rules = tracking.Rules(window=WINDOW, picture=True)
    state = optimize.init_state(batch["start"], method, rules, change=0.5)
    assert state.track.snapshot.dtype == jnp.uint8  # one 8-bit image per problem of memory
    seen = [(0, np.asarray(batch["start"]))]
    state = optimize.run(state, CAP, batch["vgg"], batch["targets"], batch["spec"], method,
                         every=(1,), step_scale=scale,
                         on_chunk=lambda s, n: seen.append((n, np.asarray(s.image))))
    # The NumPy rule over the iterates each problem went through: every WINDOW steps, the mean
    # level change since WINDOW steps before, over the photo's values; stop below the limit.
    steps = np.asarray(state.step)
    for p in range(3):
        iterates = {}
        for n, images in seen:  # a frozen problem's image stays: its step count says where
            iterates.setdefault(min(n, int(steps[p])), images[p])
        expected, last = None, np.nan
        for k in range(WINDOW, CAP + 1, WINDOW):
            if k not in iterates:
                break
            last = numpy_change(iterates[k], iterates[k - WINDOW], batch["valid"][p])
            if last < limits[p]:
                expected = k
                break
        assert bool(state.track.stopped[p]) == (expected is not None), p
        assert int(steps[p]) == (expected or CAP), p
        assert float(state.track.change[p]) == pytest.approx(last, abs=1e-4), p
    assert int(steps[0]) == WINDOW and not bool(state.track.stopped[1])  # the scenario holds
    # The padding is not counted: over the whole padded image the change would be about half.
    whole = numpy_change(iterates[CAP], iterates[CAP - WINDOW], np.ones((SIZE, SIZE)))
    assert float(state.track.change[2]) > 1.5 * whole


def test_the_limit_is_a_runtime_value_and_zero_never_stops(batch):
    method = optimize.Method("adam", 0.02)
    scale = jnp.asarray([1e-7, 1.0, 1.0], jnp.float32)
    rules = tracking.Rules(window=WINDOW, picture=True)
    run = lambda change: optimize.run(  # noqa: E731
        optimize.init_state(batch["start"], method, rules, change=change), 2 * WINDOW,
        batch["vgg"], batch["targets"], batch["spec"], method, step_scale=scale)
    stopped = run(1e9)  # every problem below it at the first check
    assert np.asarray(stopped.step).tolist() == [WINDOW] * 3
    compiled = optimize.run_steps._cache_size()
    never = run(0.0)  # a still picture (problem 0) does not stop either
    assert np.asarray(never.step).tolist() == [2 * WINDOW] * 3
    assert not np.any(np.asarray(never.track.stopped))
    assert optimize.run_steps._cache_size() == compiled


def test_either_rule_stops_a_problem(batch):
    # The loss rule at 100 % stops at its first test (step WINDOW + 1); the picture rule at 0
    # levels never: together they stop where the loss rule does.
    method = optimize.Method("adam", 0.02)
    rules = tracking.Rules(window=WINDOW, picture=True)
    state = optimize.init_state(batch["start"][:1], method, rules, tolerance=1.0, change=0.0)
    one = jax.tree.map(lambda v: v[:1], batch["targets"])
    state = optimize.run(state, CAP, batch["vgg"], one, batch["spec"], method)
    assert int(state.step[0]) == WINDOW + 1 and bool(state.track.stopped[0])


def test_stylize_batch_stops_by_the_picture_and_the_config_checks_it(batch):
    content = np.asarray(batch["start"][:1])
    cfg = CFG.replace(image_size=SIZE, num_iterations=60, stop_window=WINDOW, stop_change=1e9)
    result = stylize.stylize_batch(batch["vgg"], content, [content[0]], cfg)
    assert result.converged.tolist() == [True] and result.steps.tolist() == [WINDOW]
    with pytest.raises(ConfigError, match="stop change"):
        cfg.replace(stop_change=-1.0)
    neural_style = from_preset("neural-style").schedule
    assert from_preset("fast").schedule.stop_change > 0 and neural_style.stop_change == 0 and \
        neural_style.stop_tolerance == 0
