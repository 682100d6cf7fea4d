"""Benchmark jaxstyle against the PyTorch reference (``torch_reference.py``), side by side.

Every figure is taken in one invocation for both implementations with the same settings: for each
(size, batch, optimizer) the reference runs as a subprocess, then jaxstyle runs in a fresh
subprocess of this module (a *worker*), so that each process's peak memory belongs to that one
configuration and an out-of-memory crash or a configuration over ``--max-seconds`` is reported as
skipped instead of ending the run. The parent process never touches a JAX device (on a GPU it would
reserve the memory the workers need).

Output: one JSON line per measurement (stdout, and ``--output FILE``), then a summary line
``{"summary": {...}}``. See docs/performance.md for the method and how to reproduce.

  python scripts/bench.py --sizes 256,512,1024 --batches 1,4,8 --iters 20 --warmup 5
  python scripts/bench.py --sizes 512 --batches 1 --dtype bfloat16 --reference-tuned
  python scripts/bench.py --sizes 256 --batches 1 --time-to-quality --ttq-size 256 --ttq-evals 200
  jaxstyle bench ...                                   # the same, through the CLI

jaxstyle's problem is the reference's: random VGG-19 weights in torchvision's convention (speed
does not depend on their values), content relu4_2, style relu1_1..relu5_1 with Gram/(C·H·W) and
mean-squared errors ("neural-style" normalization), and the reference's default loss weights
(content 1e4, style 1e9, TV 1 on the reference's TV scale). A batch of B is B independent problems
(`optimize.init_state` on [B, S, S, 3], `optimize.problem_targets`), which is how jaxstyle stylizes
batches; the reference optimizes one [B, 3, S, S] tensor.

``--devices 1,2,...`` adds jaxstyle runs with the batch sharded over that many devices (the first N
of ``jax.devices()``; on a CPU the worker simulates them with
``--xla_force_host_platform_device_count``, which shares the same cores, so only the code path is
exercised there). The reference runs on one device only, so multi-device rows carry no ratio; the
summary's ``scaling`` rows compare each with the one-device run of the same per-device batch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Sequence, TextIO

import jax
import jax.numpy as jnp
import numpy as np

from jax.sharding import NamedSharding, PartitionSpec

from jaxstyle import batch, losses, optimize, sources, vgg19
from jaxstyle.config import DTYPES, OPTIMIZERS, Config

# Shared files, relative to the repository root (or the working directory).
DEFAULT_REFERENCE = "../shared/bench/torch_reference.py"
DEFAULT_CONTENT = "../shared/images/tubingen.jpg"
DEFAULT_STYLE = "../shared/images/starry_night.jpg"

# The reference's default loss weights. Its TV is Σ(Δx)² on [0, 1] images, jaxstyle's ½·Σ(255·Δx)²,
# so the same TV term needs jaxstyle's weight 2/255² times the reference's.
CONTENT_WEIGHT = 1e4
STYLE_WEIGHT = 1e9
REFERENCE_TV_WEIGHT = 1.0
TV_WEIGHT = REFERENCE_TV_WEIGHT * 2.0 / 255.0**2
ADAM_LEARNING_RATE = 0.02  # the reference's --lr default

TRACE_EVERY = 10  # evaluations between points of a time-to-quality curve
QUALITY_TARGETS = (50, 150)  # reference evaluations whose clamped loss jaxstyle must reach
OUT_OF_MEMORY_MARKERS = ("RESOURCE_EXHAUSTED", "out of memory", "Out of memory", "MemoryError",
                         "OutOfMemoryError", "std::bad_alloc")

Record = dict[str, Any]


# ----------------------------------------------------------------------------------------------
# Options.


@dataclasses.dataclass(frozen=True)
class BenchOptions:
    """What to measure (the flags of `main`, resolved: paths exist or are None with a note)."""

    sizes: tuple[int, ...] = (256, 512, 1024)
    batches: tuple[int, ...] = (1, 4, 8)
    devices: tuple[int, ...] = (1,)  # device counts to shard each batch over
    optimizers: tuple[str, ...] = ("adam", "lbfgs")
    iters: int = 20
    warmup: int = 5
    dtype: str = "float32"
    reference: Path | None = None
    reference_note: str | None = None  # why there is no reference
    reference_tuned: bool = False
    threads: int | None = None
    max_seconds: float = 600.0
    speed: bool = True  # the speed table (--no-speed: time to quality alone)
    time_to_quality: bool = False
    content: Path | None = None
    style: Path | None = None
    ttq_size: int = 256
    ttq_evals: int = 200
    output: Path | None = None
    seed: int = 0


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


def _significant(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else float(f"{x:.{digits}g}")


def _gib(num_bytes: float | None) -> float | None:
    return None if num_bytes is None else _significant(num_bytes / 2**30)


def _max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def bench_config(optimizer: str, dtype: str) -> Config:
    """jaxstyle's `Config` for the reference's problem (its loss weights and Adam step)."""
    return Config(content_weight=CONTENT_WEIGHT, style_weight=STYLE_WEIGHT, tv_weight=TV_WEIGHT,
                  optimizer=optimizer,
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
# Worker side: measurements of jaxstyle in this process.


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
                                  dtype=jnp.dtype(cfg.compute_dtype))
        per_problem = optimize.problem_targets(targets, content.shape[0])
        return cls(vgg, content, targets, jax.block_until_ready(per_problem), spec,
                   optimize.Method.from_config(cfg), cfg.compute_dtype)

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
        return _gib(stats["peak_bytes_in_use"]), "device peak_bytes_in_use"
    return _gib(_max_rss_bytes() - baseline_rss), "peak RSS growth"


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
        "images_per_s": _significant(task.batch * 1e3 / steps["ms_per_step"]),
        "tflops": _significant(tflops(task.size, task.batch, steps["ms_per_step"])),
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


# ----------------------------------------------------------------------------------------------
# Parent side: subprocesses.


@dataclasses.dataclass(frozen=True)
class ChildResult:
    """A finished subprocess: exit status, output, peak RSS, whether it ran out of time."""

    returncode: int
    stdout: str
    stderr: str
    max_rss_bytes: int
    timed_out: bool

    def json_lines(self) -> list[Record]:
        """The stdout lines that are JSON objects."""
        records = []
        for line in self.stdout.splitlines():
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                records.append(value)
        return records

    def failure(self, max_seconds: float) -> str | None:
        """Why the run gave no result (None if it succeeded): time, memory or another error."""
        if self.timed_out:
            return f"exceeded --max-seconds {max_seconds:g}"
        if self.returncode == 0:
            return None
        last = next((line for line in reversed(self.stderr.splitlines()) if line.strip()), "")
        if any(marker in self.stderr for marker in OUT_OF_MEMORY_MARKERS):
            return f"out of memory: {last[:300]}"
        if self.returncode == -signal.SIGKILL:
            return "killed by SIGKILL (likely the kernel's out-of-memory killer)"
        return f"failed with exit status {self.returncode}: {last[:300]}"


def _child_env(devices: int = 1) -> dict[str, str]:
    """The environment with this package importable (scripts/bench.py may run from a checkout);
    with ``devices`` > 1, that many host devices too (used only where JAX runs on the CPU)."""
    env = dict(os.environ)
    if devices > 1:
        flag = f"--xla_force_host_platform_device_count={devices}"
        env["XLA_FLAGS"] = " ".join(f for f in (env.get("XLA_FLAGS"), flag) if f)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def run_child(command: Sequence[str], max_seconds: float, devices: int = 1) -> ChildResult:
    """Runs ``command`` to completion (killed after ``max_seconds``), keeping its own peak RSS."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(list(command), stdout=out, stderr=err,
                                   env=_child_env(devices))
        expired = threading.Event()

        def kill() -> None:
            expired.set()
            process.kill()

        timer = threading.Timer(max_seconds, kill)
        timer.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)  # unlike wait(), gives this child's rusage
        finally:
            timer.cancel()
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return ChildResult(process.returncode, out.read(), err.read(), usage.ru_maxrss * 1024,
                           expired.is_set())


def run_for_record(command: Sequence[str], max_seconds: float, devices: int = 1
                   ) -> tuple[ChildResult, Record | None, str | None]:
    """(the finished child, its last JSON record with an "impl" key, why there is none)."""
    child = run_child(command, max_seconds, devices)
    failure = child.failure(max_seconds)
    records = [r for r in child.json_lines() if "impl" in r]
    if failure is None and not records:
        failure = "no JSON record in the output"
    return child, (None if failure else records[-1]), failure


def worker_command(task: SpeedTask | QualityTask) -> list[str]:
    kind = next(name for name, cls in TASKS.items() if isinstance(task, cls))
    return [sys.executable, "-m", "jaxstyle.bench", "--worker",
            json.dumps({"kind": kind, **dataclasses.asdict(task)})]


def reference_command(options: BenchOptions, size: int, optimizer: str, iters: int,
                      *extra: str) -> list[str]:
    """The reference's command line with the flags every run shares."""
    command = [sys.executable, str(options.reference), "--size", str(size),
               "--optimizer", optimizer, "--iters", str(iters), *extra]
    if options.threads:
        command += ["--threads", str(options.threads)]
    if options.reference_tuned:
        command.append("--tuned")
    return command


# ----------------------------------------------------------------------------------------------
# Parent side: the speed table.


@dataclasses.dataclass(frozen=True)
class Measurement:
    """One implementation's outcome for one configuration: a record, or why it was skipped."""

    record: Record | None
    skipped: str | None = None


class FailureLog:
    """Remembers failed configurations so that larger ones (size and batch both >=) are skipped."""

    def __init__(self) -> None:
        self._failed: dict[tuple[str, str], list[tuple[int, int, str]]] = {}

    def blocker(self, impl: str, optimizer: str, size: int, batch: int) -> str | None:
        for s, b, reason in self._failed.get((impl, optimizer), []):
            if s <= size and b <= batch:
                return f"not run: size {s} batch {b} already failed ({reason})"
        return None

    def add(self, impl: str, optimizer: str, size: int, batch: int, reason: str) -> None:
        self._failed.setdefault((impl, optimizer), []).append((size, batch, reason))


def _measure(impl: str, command: list[str], options: BenchOptions, key: tuple[int, int, str],
             failures: FailureLog, devices: int = 1) -> Measurement:
    """Runs one implementation's subprocess for ``key`` = (size, batch, optimizer)."""
    size, batch, optimizer = key
    blocked = failures.blocker(impl, optimizer, size, batch)
    if blocked:
        return Measurement(None, blocked)
    child, record, failure = run_for_record(command, options.max_seconds, devices)
    if failure is not None:
        failures.add(impl, optimizer, size, batch, failure)
        return Measurement(None, failure)
    return Measurement({**record, "process_peak_rss_gib": _gib(child.max_rss_bytes)})


def _skipped_record(impl: str, key: tuple[int, int, str], dtype: str, reason: str) -> Record:
    size, batch, optimizer = key
    return {"impl": impl, "size": size, "batch": batch, "optimizer": optimizer, "dtype": dtype,
            "skipped": reason}


def _with_ratio(record: Record, reference: Measurement, options: BenchOptions) -> Record:
    """jaxstyle's record with the reference's ms per evaluation and the ratio (<1: faster)."""
    ref_ms = reference.record["ms_per_eval"] if reference.record else None
    ratio = _significant(record["ms_per_step"] / ref_ms) if ref_ms else None
    extra: Record = {"reference_ms_per_eval": ref_ms, "ratio_vs_reference": ratio}
    if ratio is None:
        extra["reference_note"] = (options.reference_note if options.reference is None
                                   else f"reference skipped: {reference.skipped}")
    return {**record, **extra}


def _table_row(key: tuple[int, int, str], ours: Measurement, reference: Measurement,
               record: Record, devices: int = 1) -> Record:
    """The summary table's row for one configuration (``record``: jaxstyle's, with the ratio)."""
    size, batch, optimizer = key
    ref = reference.record or {}
    row: Record = {"size": size, "batch": batch, "optimizer": optimizer, "devices": devices,
                   "ratio_vs_reference": record.get("ratio_vs_reference")}
    for field, ours_field, ref_field in (("ms", "ms_per_step", "ms_per_eval"),
                                         ("images_per_s", "images_per_s", "images_per_s"),
                                         ("tflops", "tflops", "tflops"),
                                         ("peak_mem_gib", "peak_mem_gib", "peak_mem_gib"),
                                         ("process_peak_rss_gib", "process_peak_rss_gib",
                                          "process_peak_rss_gib")):
        row[f"jaxstyle_{field}"] = record.get(ours_field)
        row[f"reference_{field}"] = ref.get(ref_field)
    row["jaxstyle_compile_s"] = record.get("compile_s")
    row["skipped"] = {impl: m.skipped for impl, m in (("jaxstyle", ours), ("reference", reference))
                      if m.skipped} or None
    return row


def measure_configuration(options: BenchOptions, key: tuple[int, int, str],
                          failures: FailureLog, emit: Callable[[Record], None]) -> list[Record]:
    """Both implementations for key = (size, batch, optimizer), the reference first, then
    jaxstyle on each device count of ``options.devices``; emits their records and returns the
    summary table's rows (one per device count)."""
    size, batch, optimizer = key
    reference = Measurement(None, options.reference_note)
    if options.reference is not None:
        command = reference_command(options, size, optimizer, options.iters, "--batch", str(batch),
                                    "--warmup", str(options.warmup))
        reference = _measure("torch-reference", command, options, key, failures)
        emit(reference.record or _skipped_record("torch-reference", key, "float32",
                                                 reference.skipped))
    rows = []
    for devices in options.devices:
        impl = "jaxstyle" if devices == 1 else f"jaxstyle on {devices} devices"
        if batch % devices:
            ours = Measurement(None, f"batch {batch} does not split over {devices} devices")
        else:
            task = SpeedTask(size, batch, optimizer, options.iters, options.warmup,
                             options.dtype, options.seed, devices)
            ours = _measure(impl, worker_command(task), options, key, failures, devices)
        # The reference runs on one device: only the one-device run is compared with it.
        against = reference if devices == 1 else Measurement(None, "reference: one device only")
        if ours.record:
            record = (_with_ratio(ours.record, against, options) if devices == 1
                      else {**ours.record, "reference_ms_per_eval": None,
                            "ratio_vs_reference": None})
        else:
            record = {**_skipped_record("jaxstyle", key, options.dtype, ours.skipped),
                      "devices": devices}
        emit(record)
        rows.append(_table_row(key, ours, against, record, devices))
    return rows


def run_speed(options: BenchOptions, emit: Callable[[Record], None]) -> list[Record]:
    """The speed table: every (size, batch, optimizer, devices), smallest first (none with
    --no-speed)."""
    if not options.speed:
        return []
    failures = FailureLog()
    return [row for size in options.sizes for batch in options.batches
            for optimizer in options.optimizers
            for row in measure_configuration(options, (size, batch, optimizer), failures, emit)]


def device_scaling(rows: Sequence[Record]) -> list[Record]:
    """For each multi-device row (N devices, batch B): its images/s against N times the images/s of
    one device with batch B/N (same size and optimizer). 1.0 is linear scaling."""
    single = {(r["size"], r["batch"], r["optimizer"]): r["jaxstyle_images_per_s"]
              for r in rows if r["devices"] == 1 and r["jaxstyle_images_per_s"]}
    scaling = []
    for r in rows:
        n = r["devices"]
        base = single.get((r["size"], r["batch"] // n, r["optimizer"]))
        if n > 1 and base and r["jaxstyle_images_per_s"]:
            scaling.append({"size": r["size"], "batch": r["batch"], "optimizer": r["optimizer"],
                            "devices": n, "images_per_s": r["jaxstyle_images_per_s"],
                            "one_device_images_per_s": base, "one_device_batch": r["batch"] // n,
                            "efficiency": _significant(r["jaxstyle_images_per_s"] / (n * base))})
    return scaling


# ----------------------------------------------------------------------------------------------
# Parent side: time to quality.


def compare_quality(reference_trace: list[Record], curve: list[Record],
                    targets: Sequence[int] = QUALITY_TARGETS) -> list[Record]:
    """For each target evaluation count: the reference's clamped loss at the nearest trace point,
    its time there, the time jaxstyle first reaches a loss <= that value, and the ratio."""
    rows: dict[int, Record] = {}
    for target in targets:
        ref = min(reference_trace, key=lambda p: abs(p["evals"] - target))
        hit = next((p for p in curve if p["loss"] <= ref["loss_clamped"]), None)
        row = {"target_evals": target, "reference_evals": ref["evals"],
               "loss": ref["loss_clamped"], "reference_seconds": ref["seconds"],
               "jaxstyle_evals": hit and hit["evals"], "jaxstyle_seconds": hit and hit["seconds"],
               "ratio": _significant(hit["seconds"] / ref["seconds"]) if hit else None}
        if hit is None:
            row["note"] = f"jaxstyle did not reach this loss in {curve[-1]['evals']} evaluations"
        rows.setdefault(ref["evals"], row)
    return list(rows.values())


def _quality_commands(options: BenchOptions, weights: Path) -> tuple[list[str], list[str]]:
    reference = reference_command(
        options, options.ttq_size, "lbfgs", options.ttq_evals, "--content", str(options.content),
        "--style", str(options.style), "--save-weights", str(weights), "--trace", str(TRACE_EVERY))
    task = QualityTask(str(weights), str(options.content), str(options.style), options.ttq_size,
                       options.ttq_evals, options.dtype)
    return reference, worker_command(task)


def run_time_to_quality(options: BenchOptions) -> Record:
    """The reference's L-BFGS curve (which also saves its network), then jaxstyle's on the same
    network, images and loss weights; the time each takes to reach the reference's clamped loss."""
    header = {"size": options.ttq_size, "evals": options.ttq_evals, "dtype": options.dtype}
    if options.reference is None:
        return {**header, "skipped": f"needs the reference: {options.reference_note}"}
    with tempfile.TemporaryDirectory() as tmp:
        reference_cmd, jaxstyle_cmd = _quality_commands(options, Path(tmp) / "vgg19.pth")
        reference, final, failure = run_for_record(reference_cmd, options.max_seconds)
        if failure:
            return {**header, "skipped": f"reference: {failure}"}
        _, record, failure = run_for_record(jaxstyle_cmd, options.max_seconds)
        if failure:
            return {**header, "skipped": f"jaxstyle: {failure}"}
    trace = [r for r in reference.json_lines() if "loss_clamped" in r]
    return {**header, "device": record["device"], "jax": record["jax"],
            "torch": final.get("torch"), "jaxstyle_compile_s": record["compile_s"],
            "jaxstyle_run_steps_programs": record["run_steps_programs"],
            "jaxstyle_diverged": record["diverged"],
            "targets": compare_quality(trace, record["curve"]),
            "jaxstyle_curve": record["curve"], "reference_curve": trace}


# ----------------------------------------------------------------------------------------------
# Output and the command line.


class JsonLines:
    """Prints records as JSON lines to stdout and, if given a path, writes them to that file."""

    def __init__(self, path: Path | None) -> None:
        self._file: TextIO | None = open(path, "w") if path else None

    def __call__(self, record: Record) -> None:
        line = json.dumps(record)
        print(line, flush=True)
        if self._file:
            self._file.write(line + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file:
            self._file.close()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def summary(options: BenchOptions, rows: list[Record], quality: Record | None) -> Record:
    """The final line: environment, options, the speed table, the time-to-quality comparison."""
    opts = {k: (str(v) if isinstance(v, Path) else v)
            for k, v in dataclasses.asdict(options).items()}
    return {"summary": {
        "jax": _version("jax"), "torch": _version("torch"), "cpu_count": os.cpu_count(),
        "jaxstyle_threads": "XLA's choice",
        "reference_threads": options.threads or "torch's choice",
        "options": opts, "table": rows, "scaling": device_scaling(rows),
        "time_to_quality": quality and {k: v for k, v in quality.items()
                                        if k not in ("jaxstyle_curve", "reference_curve")},
    }}


def _csv(kind: type) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        try:
            return tuple(kind(x) for x in text.split(",") if x.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    return parse


def build_parser() -> argparse.ArgumentParser:
    d = BenchOptions()
    p = argparse.ArgumentParser(
        prog="jaxstyle bench", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__)
    p.add_argument("--sizes", type=_csv(int), default=d.sizes, metavar="S1,S2",
                   help="image sides in pixels (default 256,512,1024)")
    p.add_argument("--batches", type=_csv(int), default=d.batches, metavar="B1,B2",
                   help="batch sizes (default 1,4,8)")
    p.add_argument("--devices", type=_csv(int), default=d.devices, metavar="N1,N2",
                   help="device counts to shard each batch over (default 1; on a CPU, simulated "
                        "devices on the same cores)")
    p.add_argument("--optimizers", type=_csv(str), default=d.optimizers, metavar="O1,O2",
                   help="adam and/or lbfgs (default both)")
    p.add_argument("--iters", type=int, default=d.iters, help="timed steps (default %(default)s)")
    p.add_argument("--warmup", type=int, default=d.warmup,
                   help="untimed steps before them (default %(default)s)")
    p.add_argument("--dtype", choices=DTYPES, default=d.dtype, help="jaxstyle's compute dtype")
    p.add_argument("--reference", metavar="PATH",
                   help=f"torch_reference.py (default {DEFAULT_REFERENCE} from the working "
                        "directory or the repository root)")
    p.add_argument("--no-reference", action="store_true", help="measure jaxstyle alone")
    p.add_argument("--reference-tuned", action="store_true",
                   help="pass --tuned to the reference (channels_last, bf16 autocast on GPU, "
                        "cudnn.benchmark): compare with --dtype bfloat16")
    p.add_argument("--threads", type=int, help="torch CPU threads (JAX's are XLA's choice)")
    p.add_argument("--max-seconds", type=float, default=d.max_seconds,
                   help="time budget of each implementation's run of a configuration; over it, "
                        "the configuration is reported as skipped (default %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="jaxstyle's random weights and images")
    p.add_argument("--time-to-quality", action="store_true",
                   help="also compare L-BFGS loss versus time on real images and one network")
    p.add_argument("--no-speed", action="store_true",
                   help="skip the speed table (with --time-to-quality: that comparison alone)")
    p.add_argument("--content", metavar="IMAGE", help=f"default {DEFAULT_CONTENT}")
    p.add_argument("--style", metavar="IMAGE", help=f"default {DEFAULT_STYLE}")
    p.add_argument("--ttq-size", type=int, default=d.ttq_size, metavar="S",
                   help="time to quality: image side (default %(default)s)")
    p.add_argument("--ttq-evals", type=int, default=d.ttq_evals, metavar="N",
                   help="time to quality: L-BFGS evaluations of each (default %(default)s)")
    p.add_argument("--output", metavar="FILE", help="also write the JSON lines to FILE")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run one task (JSON)
    return p


def _find_shared(relative: str) -> Path | None:
    """``relative`` resolved against the working directory, then against the repository root."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[1]):
        candidate = (root / relative).resolve()
        if candidate.exists():
            return candidate
    return None


def _resolve_reference(args: argparse.Namespace) -> tuple[Path | None, str | None]:
    if args.no_reference:
        return None, "disabled by --no-reference"
    if args.reference:
        path = Path(args.reference).resolve()
        return (path, None) if path.is_file() else (None, f"reference not found: {path}")
    path = _find_shared(DEFAULT_REFERENCE)
    if path is None:
        return None, (f"reference not found: {DEFAULT_REFERENCE} relative to the working directory "
                      "or the repository root; pass --reference PATH")
    return path, None


def _resolve_image(parser: argparse.ArgumentParser, given: str | None, default: str,
                   role: str) -> Path:
    path = Path(given) if given else _find_shared(default)
    if path is None or not path.is_file():
        parser.error(f"--time-to-quality: {role} image not found: {given or default}")
    return path


def options_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> BenchOptions:
    """Validated `BenchOptions` (parser.error for bad values)."""
    bad_optimizers = set(args.optimizers) - set(OPTIMIZERS)
    if bad_optimizers:
        parser.error(f"--optimizers: unknown {sorted(bad_optimizers)}; choose from {OPTIMIZERS}")
    if not args.sizes or min(args.sizes) < 16:
        parser.error("--sizes: every size must be >= 16 (VGG-19 needs it)")
    if not args.batches or min(args.batches) < 1:
        parser.error("--batches: every batch must be >= 1")
    if not args.devices or min(args.devices) < 1:
        parser.error("--devices: every device count must be >= 1")
    if args.iters < 1 or args.warmup < 0 or args.max_seconds <= 0:
        parser.error("--iters must be >= 1, --warmup >= 0 and --max-seconds > 0")
    if args.time_to_quality and (args.ttq_size < 16 or args.ttq_evals < TRACE_EVERY):
        parser.error(f"--ttq-size must be >= 16 and --ttq-evals >= {TRACE_EVERY}")
    reference, note = _resolve_reference(args)
    content = style = None
    if args.time_to_quality:
        content = _resolve_image(parser, args.content, DEFAULT_CONTENT, "content")
        style = _resolve_image(parser, args.style, DEFAULT_STYLE, "style")
    return BenchOptions(
        sizes=tuple(sorted(set(args.sizes))), batches=tuple(sorted(set(args.batches))),
        devices=tuple(sorted(set(args.devices))),
        optimizers=tuple(dict.fromkeys(args.optimizers)), iters=args.iters, warmup=args.warmup,
        dtype=args.dtype, reference=reference, reference_note=note,
        reference_tuned=args.reference_tuned, threads=args.threads, max_seconds=args.max_seconds,
        speed=not args.no_speed, time_to_quality=args.time_to_quality, content=content, style=style,
        ttq_size=args.ttq_size, ttq_evals=args.ttq_evals,
        output=Path(args.output) if args.output else None, seed=args.seed)


def main(argv: Sequence[str] | None = None) -> int:
    """``jaxstyle bench`` / ``scripts/bench.py``: returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:  # `jaxstyle bench -- --sizes ...`: argparse passes the "--" on
        argv = argv[1:]
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.worker:
        return run_worker(args.worker)
    options = options_from_args(parser, args)
    emit = JsonLines(options.output)
    try:
        rows = run_speed(options, emit)
        quality = None
        if options.time_to_quality:
            quality = run_time_to_quality(options)
            emit({"time_to_quality": quality})
        emit(summary(options, rows, quality))
    finally:
        emit.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
