"""Benchmark jaxstyle against the PyTorch reference (``torch_reference.py``), side by side.

Every figure is taken in one invocation for both implementations with the same settings: for each
(size, batch, optimizer) the reference runs as a subprocess, then jaxstyle runs in a fresh
subprocess (a *worker*, `benchmarks.worker`), so that each process's peak memory belongs to
that one configuration and an out-of-memory crash or a configuration over ``--max-seconds`` is
reported as skipped instead of ending the run. The parent process (this module: the runs side by
side, the speed table, device scaling, the time-to-quality comparison and the summary) never
touches a JAX device (on a GPU it would reserve the memory the workers need).

Output: one JSON line per measurement (stdout, and ``--output FILE``), then a summary line
``{"summary": {...}}``. See docs/performance.md for the method and how to reproduce.

  python -m benchmarks.compare --sizes 256,512,1024 --batches 1,4,8 --iters 20 --warmup 5
  python -m benchmarks.compare --sizes 512 --batches 1 --dtype bfloat16 --reference-tuned
  python -m benchmarks.compare --sizes 256 --batches 1 --time-to-quality --ttq-size 256 --ttq-evals 200

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

import dataclasses
import json
import os
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Sequence

from benchmarks.options import BenchOptions, build_parser, options_from_args
from benchmarks.processes import JsonLines, run_for_record
from benchmarks.worker import TASKS, TRACE_EVERY, QualityTask, SpeedTask, significant, gib

Record = dict[str, Any]
QUALITY_TARGETS = (50, 150)  # reference evaluations whose clamped loss jaxstyle must reach


def worker_command(task: SpeedTask | QualityTask) -> list[str]:
    kind = next(name for name, cls in TASKS.items() if isinstance(task, cls))
    return [sys.executable, "-m", "benchmarks.worker",
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
    return Measurement({**record, "process_peak_rss_gib": gib(child.max_rss_bytes)})


def _skipped_record(impl: str, key: tuple[int, int, str], dtype: str, reason: str) -> Record:
    size, batch, optimizer = key
    return {"impl": impl, "size": size, "batch": batch, "optimizer": optimizer, "dtype": dtype,
            "skipped": reason}


def _with_ratio(record: Record, reference: Measurement, options: BenchOptions) -> Record:
    """jaxstyle's record with the reference's ms per evaluation and the ratio (<1: faster)."""
    ref_ms = reference.record["ms_per_eval"] if reference.record else None
    ratio = significant(record["ms_per_step"] / ref_ms) if ref_ms else None
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
                            "efficiency": significant(r["jaxstyle_images_per_s"] / (n * base))})
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
               "ratio": significant(hit["seconds"] / ref["seconds"]) if hit else None}
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


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.compare``: returns the exit status."""
    parser = build_parser(__doc__)
    args = parser.parse_args(argv)
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
    sys.exit(main())
