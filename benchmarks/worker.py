"""jaxstyle's side of the benchmark, run in a subprocess of its own for each configuration.

``python -m benchmarks.worker TASK_JSON`` runs one `SpeedTask` or `QualityTask` and prints
its record as one JSON line; the parent (`benchmarks.compare`) keeps the process's peak memory.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from jaxstyle import batch, losses, optimize, sources, vgg19
from jaxstyle.config import Config

Record = dict[str, Any]

# The reference's default loss weights. Its TV is Σ(Δx)² on [0, 1] images, jaxstyle's ½·Σ(255·Δx)²,
# so the same TV term needs jaxstyle's weight 2/255² times the reference's.
CONTENT_WEIGHT = 1e4
STYLE_WEIGHT = 1e9
REFERENCE_TV_WEIGHT = 1.0
TV_WEIGHT = REFERENCE_TV_WEIGHT * 2.0 / 255.0**2
ADAM_LEARNING_RATE = 0.02  # the reference's --lr default

TRACE_EVERY = 10  # evaluations between points of a time-to-quality curve


@dataclasses.dataclass(frozen=True)
class SpeedTask:
    """One speed configuration, measured by a worker process."""

    size: int
    batch: int
    optimizer: str
    iters: int
    warmup: int
    dtype: str
    seed: int
    devices: int = 1


@dataclasses.dataclass(frozen=True)
class QualityTask:
    """jaxstyle's side of the time-to-quality comparison, run by a worker process."""

    weights: str
    content: str
    style: str
    size: int
    evals: int
    dtype: str


TASKS: dict[str, type] = {"speed": SpeedTask, "quality": QualityTask}


# ----------------------------------------------------------------------------------------------
# Small shared pieces.


def vgg_flops(height: int, width: int) -> int:
    """Forward FLOPs (2 × multiply-adds) of VGG-19's convolutions up to conv5_1 for one image: the
    reference's analytic count (an evaluation, forward + input gradient, counts twice this)."""
    total = 0
    for name in vgg19.LAYER_NAMES[: vgg19.LAYER_NAMES.index("conv5_1") + 1]:
        if name.startswith("pool"):
            height, width = height // 2, width // 2
        elif name.startswith("conv"):
            cin, cout = vgg19.CONV_SHAPES[name]
            total += 2 * height * width * 9 * cin * cout
    return total


def tflops(size: int, batch: int, ms_per_eval: float) -> float:
    """Achieved TFLOP/s of one loss+gradient evaluation of ``batch`` size x size images."""
    return 2 * vgg_flops(size, size) * batch / (ms_per_eval * 1e-3) / 1e12


def significant(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else float(f"{x:.{digits}g}")


def gib(num_bytes: float | None) -> float | None:
    return None if num_bytes is None else significant(num_bytes / 2**30)


def _max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def bench_config(optimizer: str, dtype: str) -> Config:
    """jaxstyle's `Config` for the reference's problem (its loss weights and Adam step)."""
    return Config().replace(content_weight=CONTENT_WEIGHT, style_weight=STYLE_WEIGHT,
                            tv_weight=TV_WEIGHT, optimizer=optimizer,
                            learning_rate=ADAM_LEARNING_RATE if optimizer == "adam" else None,
                            compute_dtype=dtype)


def reference_image(path: str | os.PathLike, size: int) -> np.ndarray:
    """An image exactly as the reference reads it: float32[size, size, 3] in [0, 1], resized by
    Pillow's 8-bit Lanczos (aspect ratio not kept). Not `image_io.load_image`, which resizes in
    float and applies EXIF orientation: the inputs must be identical."""
    from PIL import Image

    image = Image.open(path).convert("RGB").resize((size, size), Image.LANCZOS)
    return np.asarray(image, dtype=np.float32) / 255.0


# ----------------------------------------------------------------------------------------------
# Measurements of jaxstyle in this process.


@dataclasses.dataclass(frozen=True)
class Problem:
    """A prepared style-transfer problem: P starting images and everything `run_steps` needs."""

    vgg: vgg19.VGG
    images: jax.Array  # float32[P, S, S, 3], also the content images
    targets: losses.Targets  # for the batch of P images, as `losses.targets` returns them
    problem_targets: losses.Targets  # the same per problem (`optimize.problem_targets`)
    spec: losses.LossSpec
    method: optimize.Method
    dtype: str

    @classmethod
    def build(cls, vgg: vgg19.VGG, content: jax.Array, style: jax.Array, cfg: Config,
              devices: int = 1) -> "Problem":
        """content: float32[P, S, S, 3]; style: float32[1, Hs, Ws, 3]. The P problems are sharded
        over the first ``devices`` devices (P must be a multiple), as `batch.stylize_many` does."""
        mesh = batch.device_mesh(jax.devices()[:devices])
        by_problem = NamedSharding(mesh, PartitionSpec("batch"))
        spec = losses.LossSpec.from_config(cfg)
        # On the devices once, kernels transformed once (as `optimize.run` does), not at every call.
        vgg = optimize.prepared(jax.device_put(vgg, NamedSharding(mesh, PartitionSpec())), spec)
        content = jax.device_put(content, by_problem)
        compute_targets = jax.jit(losses.targets, static_argnames=("dtype",))
        targets = compute_targets(vgg, content, [style], (1.0,), spec,
                                  dtype=jnp.dtype(cfg.network.compute_dtype))
        per_problem = optimize.problem_targets(targets, content.shape[0])
        return cls(vgg, content, targets, jax.block_until_ready(per_problem), spec,
                   optimize.Method.from_config(cfg), cfg.network.compute_dtype)

    def initial_state(self) -> optimize.RunState:
        return optimize.init_state(self.images, self.method)

    def steps(self, state: optimize.RunState, num_steps: int) -> optimize.RunState:
        """``num_steps`` optimizer steps of every problem (donates ``state``)."""
        return optimize.run_steps(state, num_steps, self.vgg, self.problem_targets, self.spec,
                                  self.method, self.dtype)

    def evaluate(self) -> Any:
        """One loss+gradient evaluation of the whole batch at the starting images."""
        return optimize.loss_and_grad(self.images, self.vgg, self.targets, self.spec, self.dtype)


def _timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    """(fn(*args) once ready, wall seconds)."""
    start = time.perf_counter()
    result = jax.block_until_ready(fn(*args))
    return result, time.perf_counter() - start


def _compile_steps(problem: Problem) -> tuple[optimize.RunState, Record]:
    """The starting state, ready to run, and compile_s: two `run_steps` calls with zero steps
    (the trip count is a runtime value), tracing included. The first starts from a fresh state,
    the second from a state `run_steps` returned: if their types differ (a weakly typed leaf in
    `optimize.init_state`'s state, say) the second compiles a second program, which a real run
    pays too. ``run_steps_programs``: how many programs that made (1 when the types agree)."""
    state, first = _timed(problem.steps, problem.initial_state(), 0)
    state, second = _timed(problem.steps, state, 0)
    cache_size = getattr(optimize.run_steps, "_cache_size", None)  # fresh process: ours alone
    return state, {"compile_s": round(first + second, 3),
                   "run_steps_programs": cache_size() if cache_size else None}


def _time_steps(problem: Problem, iters: int, warmup: int) -> Record:
    """compile_s and run_steps_programs (see `_compile_steps`), ms_per_step over ``iters`` steps
    after ``warmup`` steps, and the final state's mean loss and number of diverged problems."""
    state, record = _compile_steps(problem)
    state, _ = _timed(problem.steps, state, warmup)
    state, seconds = _timed(problem.steps, state, iters)
    return {**record, "ms_per_step": round(1e3 * seconds / iters, 3),
            "final_loss_mean": float(jnp.mean(state.loss)),
            "diverged": int(jnp.sum(state.diverged))}


def _time_evaluations(problem: Problem, iters: int, warmup: int) -> Record:
    """eval_compile_s and ms_per_eval: the jitted `optimize.loss_and_grad` called ``iters`` times in
    a Python loop (after ``warmup`` calls), blocked on at the end only."""
    _, compile_s = _timed(problem.evaluate)
    for _ in range(warmup):
        jax.block_until_ready(problem.evaluate())
    start = time.perf_counter()
    for _ in range(iters):
        result = problem.evaluate()
    jax.block_until_ready(result)
    seconds = time.perf_counter() - start
    return {"eval_compile_s": round(compile_s, 3), "ms_per_eval": round(1e3 * seconds / iters, 3)}


def _device_record() -> Record:
    device = jax.devices()[0]
    return {"device": device.device_kind, "platform": device.platform, "jax": jax.__version__}


def _peak_memory(baseline_rss: int) -> tuple[float | None, str]:
    """(peak GiB, how it was measured): the device allocator's peak on an accelerator, else the
    growth of this process's peak RSS since ``baseline_rss`` (crude, but this process runs one
    configuration only)."""
    device = jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "peak_bytes_in_use" in stats:
        return gib(stats["peak_bytes_in_use"]), "device peak_bytes_in_use"
    return gib(_max_rss_bytes() - baseline_rss), "peak RSS growth"


def measure_speed(task: SpeedTask) -> Record:
    """jaxstyle's record for one (size, batch, optimizer): compile time, ms per step and per
    evaluation, images/s, TFLOP/s and peak memory."""
    info = _device_record()  # initializes the backend before the memory baseline
    if len(jax.devices()) < task.devices:
        raise SystemExit(f"only {len(jax.devices())} device(s), {task.devices} asked for")
    baseline_rss = _max_rss_bytes()
    key_vgg, key_content, key_style = jax.random.split(jax.random.key(task.seed), 3)
    vgg = vgg19.init(key_vgg, sources.TORCHVISION)
    shape = (task.size, task.size, 3)
    content = jax.random.uniform(key_content, (task.batch, *shape), jnp.float32)
    style = jax.random.uniform(key_style, (1, *shape), jnp.float32)
    problem = Problem.build(vgg, content, style, bench_config(task.optimizer, task.dtype),
                            task.devices)
    steps = _time_steps(problem, task.iters, task.warmup)
    evaluations = _time_evaluations(problem, task.iters, task.warmup)
    peak, peak_source = _peak_memory(baseline_rss)
    return {
        "impl": "jaxstyle", **info, "size": task.size, "batch": task.batch,
        "devices": task.devices, "optimizer": task.optimizer, "dtype": task.dtype, "iters": task.iters,
        "warmup": task.warmup, "compile_s": steps["compile_s"], "ms_per_step": steps["ms_per_step"],
        "ms_per_eval": evaluations["ms_per_eval"],
        "run_steps_programs": steps["run_steps_programs"],
        "images_per_s": significant(task.batch * 1e3 / steps["ms_per_step"]),
        "tflops": significant(tflops(task.size, task.batch, steps["ms_per_step"])),
        "peak_mem_gib": peak, "peak_mem_source": peak_source,
        "eval_compile_s": evaluations["eval_compile_s"],
        "final_loss_mean": steps["final_loss_mean"], "diverged": steps["diverged"],
    }


def measure_quality(task: QualityTask) -> Record:
    """jaxstyle's L-BFGS loss-versus-time curve on the reference's network and images: a point
    every `TRACE_EVERY` evaluations; seconds exclude the compile (reported as compile_s)."""
    vgg = vgg19.load(task.weights, source="torchvision")
    content = jnp.asarray(reference_image(task.content, task.size))[None]
    style = jnp.asarray(reference_image(task.style, task.size))[None]
    problem = Problem.build(vgg, content, style, bench_config("lbfgs", task.dtype))
    state, compiled = _compile_steps(problem)
    curve, done, elapsed = [], 0, 0.0
    while done < task.evals:
        chunk = min(TRACE_EVERY, task.evals - done)
        state, seconds = _timed(problem.steps, state, chunk)
        done, elapsed = done + chunk, elapsed + seconds
        # state.loss: the loss at this chunk's last evaluation, as the reference's trace reports.
        curve.append({"evals": done, "seconds": round(elapsed, 4), "loss": float(state.loss[0])})
    return {"impl": "jaxstyle", **_device_record(), "size": task.size, "dtype": task.dtype,
            **compiled, "diverged": bool(state.diverged[0]), "curve": curve}


def run_worker(task_json: str) -> int:
    """Runs one task given as JSON ``{"kind": ..., fields...}`` and prints its record."""
    fields = json.loads(task_json)
    task = TASKS[fields.pop("kind")](**fields)
    record = measure_speed(task) if isinstance(task, SpeedTask) else measure_quality(task)
    print(json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_worker(sys.argv[1]))
