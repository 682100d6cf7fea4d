"""The optimizers and the compiled loop: L-BFGS against an independent NumPy implementation, and
the run loop on a small style problem (random VGG)."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxstyle import lbfgs, losses, optimize, vgg19
from jaxstyle.config import Config
from helpers import CAFFE

N = 20  # size of the small quadratic problems


# ------------------------------------------------------------------------------------------------
# L-BFGS direction against NumPy.


def numpy_lbfgs_direction(points, grads, memory):
    """The direction L-BFGS takes at the last point, computed independently in float64: the
    curvature pairs with sᵀy > 0 (others dropped), the newest ``memory`` of them, H₀ = γI with
    γ = sᵀy/yᵀy of the newest pair, explicit BFGS inverse updates H ← VᵀHV + ρssᵀ
    (V = I − ρysᵀ), direction H·g. With no pair: g·min(1, 1/‖g‖₁)."""
    points = [np.asarray(p, np.float64) for p in points]
    grads = [np.asarray(g, np.float64) for g in grads]
    pairs = [(points[k] - points[k - 1], grads[k] - grads[k - 1]) for k in range(1, len(points))]
    accepted = [(s, y) for s, y in pairs if s @ y > 1e-10][-memory:] if memory else []
    g = grads[-1]
    if not accepted:
        return g * min(1.0, 1.0 / np.abs(g).sum()), 0
    s, y = accepted[-1]
    h = (s @ y) / (y @ y) * np.eye(g.size)
    for s, y in accepted:
        rho = 1.0 / (y @ s)
        v = np.eye(g.size) - rho * np.outer(y, s)
        h = v.T @ h @ v + rho * np.outer(s, s)
    return h @ g, len([1 for s, y in pairs if s @ y > 1e-10])


def numpy_two_loop(points, grads, memory):
    """The same direction by the two-loop recursion (a second, independent formulation)."""
    pairs = [(np.asarray(points[k] - points[k - 1], np.float64),
              np.asarray(grads[k] - grads[k - 1], np.float64)) for k in range(1, len(points))]
    pairs = [(s, y) for s, y in pairs if s @ y > 1e-10][-memory:]
    q = np.asarray(grads[-1], np.float64).copy()
    alphas = []
    for s, y in reversed(pairs):
        a = (s @ q) / (y @ s)
        alphas.append(a)
        q -= a * y
    s, y = pairs[-1]
    r = (s @ y) / (y @ y) * q
    for (s, y), a in zip(pairs, reversed(alphas)):
        b = (y @ r) / (y @ s)
        r += (a - b) * s
    return r


def drive_lbfgs(points, grads, memory):
    """Feeds (grad, params) pairs to `scale_by_lbfgs`; returns every direction and the last
    state."""
    tx = lbfgs.scale_by_lbfgs(memory)
    update = jax.jit(tx.update)
    state = tx.init(jnp.zeros(N, jnp.float32))
    directions = []
    for x, g in zip(points, grads):
        d, state = update(jnp.asarray(g, jnp.float32), state, jnp.asarray(x, jnp.float32))
        directions.append(np.asarray(d))
    return directions, state


def quadratic(eigenvalues, seed):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((N, N)))
    a = (q * np.asarray(eigenvalues)) @ q.T
    b = rng.standard_normal(N)
    return a, b


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def test_lbfgs_direction_matches_numpy_on_quadratic_with_wrapping_memory():
    a, b = quadratic(np.linspace(1.0, 10.0, N), seed=0)
    rng = np.random.default_rng(1)
    points = [rng.standard_normal(N) for _ in range(9)]  # 8 pairs, memory 3: the ring wraps
    grads = [a @ x - b for x in points]
    memory = 3
    directions, state = drive_lbfgs(points, grads, memory)
    for k in range(1, len(points) + 1):
        want, stored = numpy_lbfgs_direction(points[:k], grads[:k], memory)
        assert rel(directions[k - 1], want) < 1e-4, k
        if k > 1:
            assert rel(want, numpy_two_loop(points[:k], grads[:k], memory)) < 1e-10
    assert int(state.stored) == 8 > memory


def test_lbfgs_bfloat16_history_follows_numpy_to_bfloat16_precision():
    """The pairs stored in bfloat16 (half the memory): the direction still matches the float64
    recursion to bfloat16's ~3 digits, and the history really is bfloat16."""
    a, b = quadratic(np.linspace(1.0, 10.0, N), seed=0)
    rng = np.random.default_rng(1)
    points = [rng.standard_normal(N) for _ in range(9)]
    grads = [a @ x - b for x in points]
    tx = lbfgs.scale_by_lbfgs(3, "bfloat16")
    update = jax.jit(tx.update)
    state = tx.init(jnp.zeros(N, jnp.float32))
    assert state.s.dtype == state.y.dtype == jnp.bfloat16 and state.rho.dtype == jnp.float32
    for k, (x, g) in enumerate(zip(points, grads), 1):
        d, state = update(jnp.asarray(g, jnp.float32), state, jnp.asarray(x, jnp.float32))
        want, _ = numpy_lbfgs_direction(points[:k], grads[:k], 3)
        assert d.dtype == jnp.float32 and rel(d, want) < 3e-2, k


def test_lbfgs_bfloat16_history_minimizes_an_ill_conditioned_quadratic_like_float32():
    a, b = quadratic(np.geomspace(1.0, 1e3, N), seed=4)
    solution = np.linalg.solve(a, b)

    def minimize(history_dtype):
        tx = lbfgs.scale_by_lbfgs(10, history_dtype)
        update = jax.jit(tx.update)
        x = jnp.zeros(N, jnp.float32)
        state = tx.init(x)
        for _ in range(60):
            g = jnp.asarray(a @ np.asarray(x, np.float64) - b, jnp.float32)
            d, state = update(g, state, x)
            x = x - d
        return np.linalg.norm(np.asarray(x, np.float64) - solution) / np.linalg.norm(solution)

    # From a relative error of 1 at the start; float32 reaches ~7e-3 in these 60 undamped steps.
    error32, error16 = minimize("float32"), minimize("bfloat16")
    assert error32 < 2e-2 and error16 < 2 * error32, (error32, error16)


def test_lbfgs_rejects_pairs_without_positive_curvature():
    # An indefinite quadratic: some differences have sᵀy < 0.
    a, b = quadratic(np.linspace(-4.0, 10.0, N), seed=2)
    rng = np.random.default_rng(3)
    points = [rng.standard_normal(N) for _ in range(12)]
    grads = [a @ x - b for x in points]
    curvatures = [(points[k] - points[k - 1]) @ (grads[k] - grads[k - 1]) for k in range(1, 12)]
    assert any(c < 0 for c in curvatures) and sum(c > 0 for c in curvatures) > 4
    memory = 4
    directions, state = drive_lbfgs(points, grads, memory)
    for k in range(1, len(points) + 1):
        want, _ = numpy_lbfgs_direction(points[:k], grads[:k], memory)
        assert rel(directions[k - 1], want) < 1e-4, k
    assert int(state.stored) == sum(c > 1e-10 for c in curvatures)
    # Every direction is still a descent direction (H stays positive definite).
    for d, g in zip(directions, grads):
        assert float(np.dot(d, g)) > 0


def test_lbfgs_first_pair_with_negative_curvature_keeps_gradient_step():
    x0 = np.zeros(N)
    x1 = np.full(N, 0.1)
    g0 = np.full(N, 1.0)
    g1 = np.full(N, 0.5)  # sᵀy = 0.1·(−0.5)·N < 0
    directions, state = drive_lbfgs([x0, x1], [g0, g1], memory=5)
    assert int(state.stored) == 0
    np.testing.assert_allclose(directions[1], g1 / np.abs(g1).sum(), rtol=1e-6)


@pytest.mark.parametrize("scale", [10.0, 1e-3])
def test_lbfgs_first_step_is_gradient_with_l1_norm_at_most_one(scale):
    g = np.random.default_rng(4).standard_normal(N) * scale
    directions, _ = drive_lbfgs([np.zeros(N)], [g], memory=5)
    np.testing.assert_allclose(directions[0], g * min(1.0, 1.0 / np.abs(g).sum()), rtol=1e-6)
    # The Method scales it by -learning_rate.
    tx = optimize.Method("lbfgs", learning_rate=0.5, memory=5).transformation()
    u, _ = tx.update(jnp.asarray(g, jnp.float32), tx.init(jnp.zeros(N)), jnp.zeros(N))
    np.testing.assert_allclose(u, -0.5 * directions[0], rtol=1e-6)


def _minimize(tx, a, b, steps):
    aj, bj = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)

    @jax.jit
    def go(x):
        def body(carry, _):
            x, s = carry
            u, s = tx.update(aj @ x - bj, s, x)
            return (x + u, s), None

        return jax.lax.scan(body, (x, tx.init(x)), None, steps)[0][0]

    x = np.asarray(go(jnp.zeros(N, jnp.float32)), np.float64)
    x_star = np.linalg.solve(a, b)
    f = lambda x: 0.5 * x @ a @ x - b @ x  # noqa: E731
    return f(x) - f(x_star)


def test_lbfgs_converges_much_faster_than_gradient_descent_on_convex_quadratic():
    a, b = quadratic(np.geomspace(1.0, 100.0, N), seed=5)
    lbfgs = _minimize(optimize.Method("lbfgs", 1.0, memory=10).transformation(), a, b, 30)
    gd = _minimize(optax.sgd(1.0 / 100.0), a, b, 30)  # step 1/L: the best fixed step
    assert lbfgs >= -1e-6
    assert lbfgs < 1e-3 * gd


# ------------------------------------------------------------------------------------------------
# A small style problem.

CFG = Config()
SIZE = 32
# Passed positionally, as `optimize.run` does: jit caches a static argument given explicitly and one
# left at its default separately, so this shares the compiled loop with `run`.
DTYPE = "float32"


@pytest.fixture(scope="module")
def problem():
    """Two content images as two problems, one style. ``alone[i]``: problem i's own targets (the
    slice of the batched ones, so a batched and a lone run solve exactly the same problem; that
    targets do not depend on the batch is tested in test_losses). ``starts``: random start images.

    Batch-vs-alone comparisons start from ``starts``, not from the content: at the content image
    the content term's gradient is F − P ≈ 0, i.e. pure float rounding, which differs between
    differently batched programs and which L-BFGS's curvature scaling amplifies."""
    vgg = vgg19.init(jax.random.key(0), CAFFE)
    rng = np.random.default_rng(0)
    contents = jnp.asarray(rng.uniform(size=(2, SIZE, SIZE, 3)), jnp.float32)
    style = jnp.asarray(rng.uniform(size=(1, SIZE, SIZE, 3)), jnp.float32)
    starts = jnp.asarray(rng.uniform(size=(2, SIZE, SIZE, 3)), jnp.float32)
    spec = losses.LossSpec.from_config(CFG)
    both = optimize.problem_targets(jax.jit(losses.targets)(vgg, contents, [style], [1.0], spec), 2)
    alone = [jax.tree.map(lambda v, i=i: v[i:i + 1], both) for i in range(2)]
    return dict(vgg=vgg, contents=contents, starts=starts, spec=spec, both=both, alone=alone)


def _method(name):
    return optimize.Method.from_config(CFG.replace(optimizer=name))


def test_continuing_a_run_does_not_recompile(problem):
    method = _method("lbfgs")
    state = optimize.init_state(problem["contents"][:1], method)
    state = optimize.run_steps(state, 1, problem["vgg"], problem["alone"][0], problem["spec"],
                               method, DTYPE)
    compiled = optimize.run_steps._cache_size()
    state = optimize.run_steps(state, 2, problem["vgg"], problem["alone"][0], problem["spec"],
                               method, DTYPE)
    assert int(state.step[0]) == 3
    assert optimize.run_steps._cache_size() == compiled


def test_lbfgs_beats_adam_and_both_lower_the_loss(problem):
    final = {}
    for name in ("lbfgs", "adam"):
        state = optimize.init_state(problem["contents"][:1], _method(name))
        state = optimize.run_steps(state, 1, problem["vgg"], problem["alone"][0], problem["spec"],
                                   _method(name), DTYPE)
        first = float(state.loss[0])  # the loss at the starting image
        state = optimize.run_steps(state, 39, problem["vgg"], problem["alone"][0], problem["spec"],
                                   _method(name), DTYPE)
        assert int(state.step[0]) == 40 and not bool(state.diverged[0])
        final[name] = float(state.loss[0])  # the 40th evaluation
        assert np.isfinite(first) and final[name] < 0.9 * first, name
        image = np.asarray(state.image)
        assert image.min() >= 0.0 and image.max() <= 1.0
        total = sum(float(v[0]) for v in state.terms.values())
        np.testing.assert_allclose(total, final[name], rtol=1e-5)
    assert final["lbfgs"] < final["adam"]


def test_init_state_has_the_types_run_steps_returns(problem):
    """A state from `init_state` and one returned by `run_steps` must have identical avals, or the
    second chunk of every run recompiles the whole loop."""
    method = _method("lbfgs")
    fresh = optimize.init_state(problem["contents"][:1], method)
    avals = lambda s: [(jax.tree_util.keystr(p), x.shape, x.dtype, x.weak_type)  # noqa: E731
                       for p, x in jax.tree_util.tree_leaves_with_path(s)]
    expected = avals(fresh)
    after = optimize.run_steps(fresh, 1, problem["vgg"], problem["alone"][0], problem["spec"],
                               method, DTYPE)
    assert avals(after) == expected


def test_steps_and_weights_do_not_recompile(problem):
    method = _method("lbfgs")
    run = lambda s, n, spec, t=problem["alone"][0]: optimize.run_steps(  # noqa: E731
        s, n, problem["vgg"], t, spec, method, DTYPE)
    # Warm up both a fresh and a continued state.
    state = run(run(optimize.init_state(problem["contents"][:1], method), 1, problem["spec"]), 1,
                problem["spec"])
    compiled = optimize.run_steps._cache_size()
    heavy = losses.LossSpec.from_config(CFG.replace(
        content_weight=50.0, style_weight=3.0, tv_weight=0.0,
        style_layer_weights=(1.0, 2.0, 3.0, 4.0, 5.0)))
    state = run(state, 3, heavy)
    state = run(state, 0, problem["spec"])
    state = run(state, 5, heavy, problem["alone"][1])  # other target values
    fresh = run(optimize.init_state(problem["contents"][1:], method), 2, heavy)
    assert int(state.step[0]) == 10 and int(fresh.step[0]) == 2
    assert float(state.terms["tv"][0]) == 0.0
    assert optimize.run_steps._cache_size() == compiled


def test_divergence_keeps_last_finite_image_and_run_stops_early(problem):
    method = _method("lbfgs")
    vgg, targets, spec = problem["vgg"], problem["alone"][0], problem["spec"]
    overflow = losses.LossSpec.from_config(CFG.replace(style_weight=1e38))
    state = optimize.init_state(problem["contents"][:1], method)
    state = optimize.run_steps(state, 3, vgg, targets, spec, method, DTYPE)
    image, loss = np.asarray(state.image), np.asarray(state.loss)
    assert not bool(state.diverged[0])

    state = optimize.run_steps(state, 4, vgg, targets, overflow, method, DTYPE)
    assert bool(state.diverged[0])
    assert int(state.step[0]) == 3
    assert np.all(np.isfinite(np.asarray(state.image)))
    np.testing.assert_array_equal(np.asarray(state.image), image)
    np.testing.assert_array_equal(np.asarray(state.loss), loss)
    # Diverged stays diverged: later steps do nothing, even with sane weights.
    state = optimize.run_steps(state, 2, vgg, targets, spec, method, DTYPE)
    assert bool(state.diverged[0]) and int(state.step[0]) == 3
    np.testing.assert_array_equal(np.asarray(state.image), image)

    # A huge but finite weight (loss ~1e31): the capped first step and the curvature-scaled
    # L-BFGS steps keep the image finite and in the box, whether or not it diverges.
    huge = losses.LossSpec.from_config(CFG.replace(style_weight=1e30))
    state = optimize.init_state(problem["contents"][:1], method)
    state = optimize.run_steps(state, 5, vgg, targets, huge, method, DTYPE)
    image = np.asarray(state.image)
    assert np.all(np.isfinite(image)) and image.min() >= 0.0 and image.max() <= 1.0
    assert bool(state.diverged[0]) or np.isfinite(float(state.loss[0]))

    # The driver stops at the first chunk once every problem has diverged.
    calls = []
    state = optimize.init_state(problem["contents"][:1], method)
    state = optimize.run(state, 20, vgg, targets, overflow, method, every=(5,),
                         on_chunk=lambda s, n: calls.append(n))
    assert calls == [5]
    assert bool(state.diverged[0]) and int(state.step[0]) == 0
    np.testing.assert_array_equal(np.asarray(state.image), np.asarray(problem["contents"][:1]))


def test_run_calls_on_chunk_at_the_boundaries(problem):
    method = _method("lbfgs")
    calls = []
    state = optimize.init_state(problem["contents"][:1], method)
    state = optimize.run(state, 7, problem["vgg"], problem["alone"][0], problem["spec"], method,
                         every=(3,), on_chunk=lambda s, n: calls.append((n, int(s.step[0]))))
    assert calls == [(3, 3), (6, 6), (7, 7)]


@pytest.mark.parametrize("sequential", [True, False], ids=["sequential", "vmapped"])
def test_batch_of_problems_equals_each_alone(problem, sequential):
    """Sequential (a CPU's way, `problems.over_problems`): each problem runs the same per-problem
    program whatever the batch size, so a batch equals each problem alone after many steps, to
    float rounding (1e-6: an observed difference of 0, no amplification to allow for).

    Vmapped (accelerators, several devices): the problems share each matrix product, whose
    blocking and so its rounding (~1e-7 relative) depends on the batch size; L-BFGS amplifies a
    difference of that size like any other perturbation of the same size. Bound measured on this
    problem: starting images perturbed by one float32 ulp move the iterates by 2e-7 after one step,
    3e-6 after two to five, 5e-6 after six, and at eight steps by 6e-3 (a pixel crosses the box's
    bound, a discrete change); the batch's own difference tracked it (6e-8, 3e-6, ..., 1.2e-3 at
    six on an AVX-512 CPU, 3e-4 on an AVX2 one). So images are compared after three steps, with
    10x the one-ulp bound, and the loss, which such a change barely moves (measured 7e-7 relative
    at six steps, 8e-5 at eight), after six."""
    method = _method("lbfgs")
    vgg, spec = problem["vgg"], problem["spec"]

    def run(starts, targets, steps):
        state = optimize.init_state(starts, method)
        return optimize.run_steps(state, steps, vgg, targets, spec, method, DTYPE,
                                  sequential=sequential)

    image_steps, loss_steps = (6, 6) if sequential else (3, 6)
    image_atol = 1e-6 if sequential else 3e-5
    state = run(problem["starts"], problem["both"], image_steps)
    longer = run(problem["starts"], problem["both"], loss_steps)
    for i in range(2):
        alone = run(problem["starts"][i:i + 1], problem["alone"][i], image_steps)
        alone_longer = run(problem["starts"][i:i + 1], problem["alone"][i], loss_steps)
        assert int(longer.step[i]) == int(alone_longer.step[0]) == loss_steps
        np.testing.assert_allclose(state.image[i], alone.image[0], atol=image_atol)
        np.testing.assert_allclose(longer.loss[i], alone_longer.loss[0], rtol=1e-4)
        for name in longer.terms:
            np.testing.assert_allclose(longer.terms[name][i], alone_longer.terms[name][0],
                                       rtol=1e-4)
    # The two problems really differ (different content images).
    assert not np.allclose(state.image[0], state.image[1])


def test_one_diverging_problem_does_not_affect_the_other(problem):
    """Per-problem divergence: give problem 0 non-finite targets."""
    method = _method("lbfgs")
    vgg, spec = problem["vgg"], problem["spec"]
    both = problem["both"]
    broken = losses.Targets(
        content={k: v.at[0].set(jnp.inf) for k, v in both.content.items()}, style=both.style)
    state = optimize.init_state(problem["starts"], method)
    state = optimize.run_steps(state, 3, vgg, broken, spec, method, DTYPE)
    alone = optimize.init_state(problem["starts"][1:], method)
    alone = optimize.run_steps(alone, 3, vgg, problem["alone"][1], spec, method, DTYPE)
    assert state.diverged.tolist() == [True, False]
    assert state.step.tolist() == [0, 3]
    np.testing.assert_array_equal(state.image[0], problem["starts"][0])
    np.testing.assert_allclose(state.image[1], alone.image[0], atol=1e-4)


# ------------------------------------------------------------------------------------------------
# Chunking.


@pytest.mark.parametrize("num_iterations,every,max_chunk", [
    (1, (), 50), (7, (3,), 50), (100, (), 50), (120, (7, 20), 50), (1000, (0, 100, 33), 50),
    (10, (25,), 4), (50, (10,), 50), (13, (13,), 5),
])
def test_chunk_boundaries_properties(num_iterations, every, max_chunk):
    marks = optimize.chunk_boundaries(num_iterations, every, max_chunk)
    assert marks == sorted(set(marks))
    assert marks[-1] == num_iterations and marks[0] > 0
    gaps = np.diff([0] + marks)
    assert gaps.max() <= max_chunk
    for k in every:
        if k:
            assert set(range(k, num_iterations + 1, k)) <= set(marks)
    # No superfluous chunk: every mark is a multiple of a period, of max_chunk, or the end.
    for m in marks:
        assert m == num_iterations or m % max_chunk == 0 or any(k and m % k == 0 for k in every)


def test_chunk_boundaries_default_max_chunk():
    for n, every in itertools.product((1, 49, 50, 51, 250), ((), (10,), (60,))):
        marks = optimize.chunk_boundaries(n, every)
        assert marks[-1] == n and max(np.diff([0] + marks)) <= 50
