"""Stopping when converged, the average of the iterates, the best iterate (tracking.Tracking), and the
CLI's presets. References: the stopping rule, the EMA and the arg-min written again in NumPy over
the loss and image trajectories of a plain (untracked) run. A random shallow VGG on 32 px images."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstyle import cli, losses, optimize, stylize, tracking, vgg19
from jaxstyle.cli.stylize import add_parser, config_from_args
from jaxstyle.config import RELATIVE_WEIGHTS, Config
from jaxstyle.cli.common import OneLineParser
from helpers import CAFFE

CFG = Config().replace(content_layers=("relu2_1",), style_layers=("relu1_1", "relu2_1"))
WINDOW = 4
CAP = 24
DTYPE = "float32"


@pytest.fixture(scope="module")
def problem():
    """Two copies of one problem (same start, same targets), so that a tracked batch can be compared
    step by step with one plain trajectory."""
    vgg = vgg19.init(jax.random.key(0), CAFFE, last_layer="relu2_1")
    rng = np.random.default_rng(0)
    content = jnp.asarray(rng.uniform(size=(1, 32, 32, 3)), jnp.float32)
    style = jnp.asarray(rng.uniform(size=(1, 32, 32, 3)), jnp.float32)
    start = jnp.asarray(rng.uniform(size=(1, 32, 32, 3)), jnp.float32)
    spec = losses.LossSpec.from_config(CFG)
    targets = jax.jit(losses.targets)(vgg, content, [style], [1.0], spec)
    one = optimize.problem_targets(targets, 1)
    return dict(vgg=vgg, spec=spec, start=start, one=one,
                two=jax.tree.map(lambda v: jnp.concatenate([v, v]), one))


def trajectory(problem, method, steps):
    """A plain run, one step per chunk: (losses L[k] at iterate x[k], k = 0..steps-1; iterates
    x[0..steps])."""
    images, losses_ = [np.asarray(problem["start"][0], np.float64)], []

    def record(state, n):
        losses_.append(float(state.loss[0]))
        images.append(np.asarray(state.image[0], np.float64))

    state = optimize.init_state(problem["start"], method)
    optimize.run(state, steps, problem["vgg"], problem["one"], problem["spec"], method,
                 every=(1,), on_chunk=record)
    return np.asarray(losses_), np.stack(images)


def numpy_stop_step(losses_, window, tol, near=tracking.NEAR_BEST):
    """The first step count k (1-based) at which the lowest loss of the first k evaluations improved
    on that of the first k − window by less than ``tol`` (relative) while the k-th loss is within
    ``near`` · ``tol`` of that lowest, or None."""
    best = np.minimum.accumulate(losses_)
    for k in range(window + 1, len(losses_) + 1):
        old, new = best[k - window - 1], best[k - 1]
        if (old - new) / abs(old) < tol and losses_[k - 1] - new <= near * tol * abs(new):
            return k
    return None


@pytest.fixture(scope="module")
def lbfgs_trajectory(problem):
    return trajectory(problem, optimize.Method.from_config(CFG), CAP)


def test_converged_problem_freezes_while_the_other_goes_on_and_the_cap_holds(problem,
                                                                             lbfgs_trajectory):
    losses_, images = lbfgs_trajectory
    best = np.minimum.accumulate(losses_)
    gains = [(best[k - WINDOW - 1] - best[k - 1]) / best[k - WINDOW - 1]
             for k in range(WINDOW + 1, CAP - 3)]
    tol = float(np.median(gains))  # stops somewhere in the middle of the trajectory
    expected = numpy_stop_step(losses_, WINDOW, tol)
    assert expected is not None and WINDOW < expected < CAP - 3

    method = optimize.Method.from_config(CFG)
    rules = tracking.Rules(window=WINDOW)
    state = optimize.init_state(jnp.concatenate([problem["start"]] * 2), method)
    state = optimize.init_tracking(state, rules, 0.0)
    state = dataclasses.replace(state, track=dataclasses.replace(
        state.track, tolerance=jnp.asarray([tol, 0.0], jnp.float32)))  # problem 1 never stops
    seen = []
    state = optimize.run(state, CAP, problem["vgg"], problem["two"], problem["spec"],
                         method, every=(5,),
                         on_chunk=lambda s, n: seen.append((n, np.asarray(s.step))))
    assert bool(state.track.stopped[0]) and not bool(state.track.stopped[1])
    assert int(state.step[0]) == expected  # frozen at the NumPy rule's step
    assert int(state.step[1]) == CAP  # the cap
    # (Batched and lone programs round differently; L-BFGS amplifies that over many steps.)
    np.testing.assert_allclose(np.asarray(state.image[0]), images[expected], atol=1e-3)
    np.testing.assert_allclose(float(state.loss[1]), losses_[CAP - 1], rtol=2e-2)
    # Frozen: after stopping, problem 0's step count never moved again.
    after = [int(s[0]) for n, s in seen if n >= expected]
    assert after and set(after) == {expected}


def test_the_loss_rule_waits_while_the_iterate_is_far_above_the_best():
    """After a scale change L-BFGS can climb far above its start for a whole window (W2 at 256 px
    did, and the run stopped on a noise image): the best loss has not improved, but the iterate,
    which is the result, is not the best. The rule waits until the loss is back within the
    tolerance's `tracking.NEAR_BEST` multiple of the best, as the NumPy rule says."""
    window, tol = 4, 0.01
    losses_ = np.asarray([10.0, 500.0, 400.0, 300.0, 200.0, 50.0, 12.0, 10.05, 10.04, 10.03])
    expected = numpy_stop_step(losses_, window, tol)
    assert expected == 8  # not 5, where the best (10) stopped improving but the loss was 200;
    # 12 (step 7) is still 20 % above the best, over 10 x 1 %
    rules = tracking.Rules(window=window)
    image = jnp.zeros((2, 2, 3))
    track = tracking.fresh(image[None], rules, tol, 0.0)
    track = jax.tree.map(lambda x: x[0], track)
    stops = []
    for loss in losses_:
        track = tracking.advance(track, image, image, jnp.float32(loss), jnp.bool_(True))
        stops.append(bool(track.stopped))
    assert stops.index(True) + 1 == expected


def test_the_loop_ends_by_itself_when_every_problem_has_stopped(problem, lbfgs_trajectory):
    losses_, _ = lbfgs_trajectory
    expected = numpy_stop_step(losses_, WINDOW, 1.0)  # any improvement under 100 %: first check
    assert expected == WINDOW + 1
    method = optimize.Method.from_config(CFG)
    rules = tracking.Rules(window=WINDOW)
    state = optimize.init_tracking(optimize.init_state(problem["start"], method), rules, 1.0)
    calls = []
    state = optimize.run(state, 1000, problem["vgg"], problem["one"], problem["spec"],
                         method, on_chunk=lambda s, n: calls.append(n))
    assert calls == [expected]  # one chunk of at most 50, ended inside the compiled loop
    assert int(state.step[0]) == expected and bool(state.track.stopped[0])
    # Tolerance and the step count are runtime values: another run uses the same program.
    compiled = optimize.run_steps._cache_size()
    again = optimize.init_tracking(optimize.init_state(problem["start"], method), rules, 1e-6)
    again = optimize.run(again, 3, problem["vgg"], problem["one"], problem["spec"], method)
    assert int(again.step[0]) == 3 and not bool(again.track.stopped[0])
    assert optimize.run_steps._cache_size() == compiled


def test_average_is_the_bias_corrected_ema_of_the_iterates(problem, lbfgs_trajectory):
    _, images = lbfgs_trajectory
    steps, decay = 7, 0.8
    method = optimize.Method.from_config(CFG)
    rules = tracking.Rules(window=WINDOW, average=True)
    state = optimize.init_tracking(optimize.init_state(problem["start"], method), rules, 0.0, decay)
    state = optimize.run(state, steps, problem["vgg"], problem["one"], problem["spec"],
                         method)
    ema = np.zeros_like(images[0])
    for k in range(1, steps + 1):  # the iterates after each step
        ema = decay * ema + (1 - decay) * images[k]
    np.testing.assert_allclose(np.asarray(optimize.result_images(state)[0]),
                               ema / (1 - decay**steps), atol=1e-4)


def test_keep_best_returns_the_lowest_loss_iterate_of_a_non_monotone_run(problem):
    method = optimize.Method("adam", 0.3)  # a large step: the loss goes up and down
    losses_, images = trajectory(problem, method, 12)
    assert np.any(np.diff(losses_) > 0)  # not monotone
    rules = tracking.Rules(window=WINDOW, keep_best=True)
    state = optimize.init_tracking(optimize.init_state(problem["start"], method), rules, 0.0)
    state = optimize.run(state, 12, problem["vgg"], problem["one"], problem["spec"],
                         method)
    best = int(np.argmin(losses_))  # loss k was evaluated at iterate k
    np.testing.assert_allclose(np.asarray(optimize.result_images(state)[0]), images[best],
                               atol=1e-4)
    np.testing.assert_allclose(float(state.track.best_loss[0]), losses_[best], rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# stylize_batch and the CLI.


def test_resumed_run_restarts_the_stopping_window(problem):
    cfg = CFG.replace(image_size=32, stop_tolerance=1.0, stop_window=WINDOW, num_iterations=100)
    content = np.asarray(problem["start"][0])
    start = stylize.Start(0, 10, np.asarray(problem["start"]))
    result = stylize.stylize_batch(problem["vgg"], content[None], [content], cfg, start=start)
    # Counted afresh from the resumed image: the first possible stop is WINDOW + 1 steps later.
    assert bool(result.converged[0]) and int(result.steps[0]) == WINDOW + 1


def parse(*argv):
    parser = OneLineParser(prog="jaxstyle")
    add_parser(parser.add_subparsers())
    return config_from_args(parser.parse_args(["stylize", "c.png", "--style", "s.png", *argv]))


def test_preset_neural_style_is_todays_config_and_explicit_weights_keep_their_meaning():
    todays = Config()  # neural-style's defaults, unchanged
    assert parse("--preset", "neural-style") == todays
    assert todays.schedule.stop_tolerance == 0 and todays.loss.loss_scale == "absolute"
    assert (todays.schedule.num_iterations, todays.optimizer.name, todays.schedule.scales) == (
        1000, "lbfgs", None)
    assert (todays.loss.content_weight, todays.loss.style_weight, todays.loss.tv_weight) == (
        5.0, 100.0, 1e-3)
    fast = parse()
    assert fast.schedule.stop_tolerance > 0 and fast.loss.loss_scale == "relative"
    assert (fast.loss.content_weight, fast.loss.style_weight, fast.loss.tv_weight) == tuple(
        RELATIVE_WEIGHTS[k] for k in ("content_weight", "style_weight", "tv_weight"))
    given = parse("--style-weight", "200")
    assert given.loss.loss_scale == "absolute"
    assert (given.loss.content_weight, given.loss.style_weight, given.loss.tv_weight) == (
        5.0, 200.0, 1e-3)


def test_preset_neural_style_gives_the_same_image_as_todays_explicit_flags(tmp_path, capsys,
                                                                          keras_safetensors):
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in ("c.png", "s.png"):
        Image.fromarray((rng.random((24, 32, 3)) * 255).astype(np.uint8)).save(tmp_path / name)
    common = ["stylize", tmp_path / "c.png", "--style", tmp_path / "s.png", "--weights",
              keras_safetensors, "--image-size", "32", "--num-iterations", "8", "--quiet",
              "--content-layers", "relu2_1", "--style-layers", "relu1_1,relu2_1"]
    todays = ["--content-weight", "5", "--style-weight", "100", "--tv-weight", "0.001",
              "--optimizer", "lbfgs", "--lbfgs-memory", "100", "--lbfgs-pyramid", "1",
              "--stop-tolerance", "0"]
    assert cli.main([str(a) for a in common + ["-o", tmp_path / "a.png", "--preset",
                                               "neural-style"]]) == 0
    assert cli.main([str(a) for a in common + ["-o", tmp_path / "b.png", *todays]]) == 0
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    err = capsys.readouterr().err
    assert "stopped at --num-iterations 8" in err


# ------------------------------------------------------------------------------------------------
# The coarse-to-fine pyramid of the default schedule.


def test_pyramid_halves_the_size_down_to_64_px_and_caps_coarse_scales():
    fast = Config().replace(image_size=256, num_scales=3, coarse_iterations=150,
                            num_iterations=1000)
    assert fast.schedule.all_scales == (64, 128, 256)
    assert fast.schedule.scale_iterations == (150, 150, 1000)
    assert fast.schedule.total_iterations == 1300
    assert [fast.schedule.iterations_before(i) for i in range(3)] == [0, 150, 300]
    assert fast.replace(image_size=1024).schedule.all_scales == (256, 512, 1024)
    assert fast.replace(image_size=200).schedule.all_scales == (100, 200)  # 50 < 64 px
    assert fast.replace(image_size=100).schedule.all_scales == (100,)
    assert fast.replace(num_scales=1).schedule.all_scales == (256,)
    explicit = fast.replace(scales=(32, 256))  # --scales wins over the pyramid
    assert explicit.schedule.all_scales == (32, 256)
    assert explicit.schedule.scale_iterations == (150, 1000)
    assert fast.replace(num_iterations=20).schedule.scale_iterations == (20, 20, 20)
    assert Config().schedule.scale_iterations == (1000,)  # neural-style: one scale, no coarse cap
    assert Config().replace(scales=(128, 256)).schedule.scale_iterations == (1000, 1000)
    with pytest.raises(ValueError, match="number of scales"):
        Config().replace(num_scales=0)


def test_cli_default_is_the_pyramid_and_neural_style_is_one_scale():
    fast = parse("--image-size", "256").schedule
    assert fast.all_scales == (64, 128, 256) and fast.scale_iterations[0] < fast.num_iterations
    assert parse("--preset", "neural-style", "--image-size", "256").schedule.all_scales == (256,)
    assert parse("--num-scales", "1").schedule.all_scales == (512,)  # the default --image-size
    coarse = parse("--image-size", "256", "--coarse-iterations", "7").schedule
    assert coarse.scale_iterations[:2] == (7, 7)
    assert parse("--scales", "100,200").schedule.all_scales == (100, 200)
    history = parse("--lbfgs-history-dtype", "bfloat16")
    assert history.optimizer.lbfgs_history_dtype == "bfloat16"
    assert optimize.Method.from_config(history).history_dtype == "bfloat16"
    assert parse().optimizer.lbfgs_history_dtype == "float32"
    # The default keeps 50 L-BFGS pairs (measured: time to quality within 2 %, half the memory);
    # neural-style's 100 with its preset, and whatever is asked for.
    assert parse().optimizer.lbfgs_memory == 50
    assert parse("--preset", "neural-style").optimizer.lbfgs_memory == 100
    assert parse("--lbfgs-memory", "7").optimizer.lbfgs_memory == 7
    # The pyramid preconditioner: 5 levels in the fast preset, plain L-BFGS in neural-style's.
    assert optimize.Method.from_config(parse()).pyramid_levels == 5  # the fast preset
    assert optimize.Method.from_config(parse("--preset", "neural-style")).pyramid_levels == 1
    assert optimize.Method.from_config(parse("--lbfgs-pyramid", "3")).pyramid_levels == 3
    with pytest.raises(ValueError, match="pyramid"):
        Config().replace(lbfgs_pyramid=0)


def test_pyramid_runs_each_coarse_scale_to_its_cap_then_the_full_size(problem):
    cfg = CFG.replace(image_size=128, num_scales=3, coarse_iterations=3, num_iterations=5)
    rng = np.random.default_rng(1)
    content = rng.uniform(size=(1, 96, 128, 3)).astype(np.float32)
    seen = []
    result = stylize.stylize_batch(
        problem["vgg"], content, [content[0]], cfg, every=(1,),
        on_progress=lambda p: seen.append((p.scale_index, p.iteration, p.num_iterations,
                                           p.state.image.shape[1:3])))
    assert cfg.schedule.all_scales == (64, 128)  # 32 px is under the pyramid's 64 px floor
    assert [s for s in seen if s[0] == 0][-1] == (0, 3, 3, (48, 64))
    assert [s for s in seen if s[0] == 1][-1] == (1, 5, 5, (96, 128))
    assert result.images.shape == (1, 96, 128, 3) and int(result.steps[0]) == 5


def test_pyramid_skips_a_coarse_scale_too_small_for_the_deepest_layer():
    vgg = vgg19.init(jax.random.key(0), CAFFE, last_layer="relu5_1")
    cfg = Config().replace(image_size=128, num_scales=2, num_iterations=2, coarse_iterations=2)
    content = np.random.default_rng(2).uniform(size=(1, 20, 128, 3)).astype(np.float32)
    seen = []
    # At 64 px the panorama is 10 px high, under relu5_1's 16: that scale is skipped, not an error.
    result = stylize.stylize_batch(vgg, content, [content[0]], cfg, every=(1,),
                                   on_progress=lambda p: seen.append(p.scale_index))
    assert set(seen) == {1} and result.images.shape == (1, 20, 128, 3)
    with pytest.raises(ValueError, match="too small"):  # an explicit scale still is
        stylize.stylize_batch(vgg, content, [content[0]],
                              cfg.replace(scales=(64, 128)))
