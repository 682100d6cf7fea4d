"""Where a run's memory goes, per size and optimizer, against the PyTorch reference (issue 27).

For each size x optimizer (Adam, and the default L-BFGS: the "fast" preset's memory 50 and
5-level pyramid, one scale) x variant, a fresh subprocess runs ``stylize_batch`` (random
torchvision-convention VGG-19 to relu5_1, random content and style images, ``--steps`` steps at one
scale, no early stop) and reports its process peak (``resource.getrusage`` maxrss), its ms per
step (median of the steps after the first, which compiles) and XLA's ``memory_analysis()`` of the
same compiled step (temporaries, arguments, outputs; compiled after the run, so its compile does
not count in the peak). Beside it, ``torch_reference.py`` at the same size, optimizer and step
count in its own subprocess (its process peak from ``os.wait4``, its ms per evaluation).

Variants: ``base`` (float32, no remat), ``remat`` (`VGG.with_remat`: ``jax.checkpoint`` around
each VGG block), ``bf16`` (``compute_dtype="bfloat16"``: bfloat16 activations, float32 Grams and
losses), ``remat-bf16``, ``bf16-history`` (L-BFGS pairs in bfloat16).

``--side-by-side`` also times the variants alternately in this one process (same machine state),
so that their time ratios compare on a shared machine.

  python -m benchmarks.print_size --sizes 256,512,1024 --steps 4 --torch-python PATH/python
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

from benchmarks import inputs, processes

VARIANTS = ("base", "remat", "bf16", "remat-bf16", "bf16-history")


def _config(optimizer: str, size: int, steps: int, variant: str):
    from jaxstyle.config import from_preset

    return from_preset(
        "fast", optimizer=optimizer, image_size=size, num_scales=1, num_iterations=steps,
        stop_tolerance=0.0,
        compute_dtype="bfloat16" if variant in ("bf16", "remat-bf16") else "float32",
        lbfgs_history_dtype="bfloat16" if variant == "bf16-history" else "float32")


def _network(variant: str):
    import jax

    from jaxstyle import sources
    from jaxstyle.models import vgg19

    vgg = vgg19.init(jax.random.key(0), sources.TORCHVISION)
    return vgg.with_remat(variant.startswith("remat"))


def _inputs(size: int):
    import numpy as np

    rng = np.random.default_rng(0)
    return (rng.random((1, size, size, 3), dtype=np.float32),
            rng.random((size, size, 3), dtype=np.float32))


def _analysis(vgg, content, style, cfg) -> dict:
    """memory_analysis() of the step `stylize_batch` compiles for ``cfg`` (one problem)."""
    import dataclasses

    import jax.numpy as jnp
    import numpy as np

    from jaxstyle import losses, optimize, problems

    spec = losses.LossSpec.from_config(cfg)
    net = optimize.prepared(vgg, spec)
    x = jnp.asarray(content)
    targets = optimize.problem_targets(
        losses.targets(net, x, [jnp.asarray(style)[None]], np.ones(1, np.float32), spec,
                       jnp.dtype(cfg.network.compute_dtype)), 1)
    method = dataclasses.replace(optimize.Method.from_config(cfg), learning_rate=1.0)
    state = optimize.init_state(x, method)
    analysis = optimize.run_steps.lower(
        state, 1, net, targets, losses.LossSpec.stack([spec]), method, cfg.network.compute_dtype,
        np.ones(1, np.float32), problems.sequential_problems(x)).compile().memory_analysis()
    size = content.shape[1] * content.shape[2]
    return {"temp_bytes": analysis.temp_size_in_bytes,
            "argument_bytes": analysis.argument_size_in_bytes,
            "output_bytes": analysis.output_size_in_bytes,
            "temp_bytes_per_pixel": round(analysis.temp_size_in_bytes / size, 1)}


def child(task: dict) -> dict:
    """One configuration in this (fresh) process: the run's peak and ms/step, then the analysis."""
    from jaxstyle import stylize

    size, optimizer, variant, steps = task["size"], task["optimizer"], task["variant"], task["steps"]
    cfg = _config(optimizer, size, steps, variant)
    vgg = _network(variant)
    content, style = _inputs(size)
    marks = []

    def progress(p):
        p.state.image.block_until_ready()
        marks.append(time.perf_counter())

    t0 = time.perf_counter()
    result = stylize.stylize_batch(vgg, content, [style], cfg, on_progress=progress, every=(1,))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    steps_ms = [1e3 * (b - a) for a, b in zip(marks, marks[1:])]
    record = {"impl": "jaxstyle", "size": size, "optimizer": optimizer, "variant": variant,
              "steps": steps, "process_peak_gib": round(peak / 2**30, 3),
              "ms_per_step": round(statistics.median(steps_ms), 1) if steps_ms else None,
              "first_step_s": round(marks[0] - t0, 1) if marks else None,
              "final_loss": float(result.loss[0])}
    record.update(_analysis(vgg, content, style, cfg))
    return record


def reference(args, size: int, optimizer: str) -> dict:
    command = [args.torch_python, str(args.reference), "--size", str(size), "--optimizer",
               optimizer, "--iters", str(args.steps - 1), "--warmup", "1"]
    done, record, failure = processes.run_for_record(command, args.max_seconds)
    out = {"impl": "torch-reference", "size": size, "optimizer": optimizer, "steps": args.steps,
           "process_peak_gib": round(done.max_rss_bytes / 2**30, 3)}
    if record is None:
        out["skipped"] = failure
    else:
        out["ms_per_step"] = record["ms_per_eval"]
    return out


def side_by_side(size: int, optimizer: str, variants, steps: int, rounds: int) -> dict:
    """ms per step of each variant, timed alternately in this process."""
    import jax
    import jax.numpy as jnp

    from jaxstyle import stylize

    content, style = _inputs(size)
    runs = {}
    for variant in variants:
        cfg = _config(optimizer, size, steps, variant)
        stylize.stylize_batch(_network(variant), content, [style], cfg)  # compile
        runs[variant] = (cfg, _network(variant))
    times = {v: [] for v in variants}
    for _ in range(rounds):
        for variant, (cfg, vgg) in runs.items():
            t0 = time.perf_counter()
            stylize.stylize_batch(vgg, content, [style], cfg)
            times[variant].append(1e3 * (time.perf_counter() - t0) / steps)
    del jax, jnp
    best = {v: min(t) for v, t in times.items()}
    return {"side_by_side": True, "size": size, "optimizer": optimizer, "steps": steps,
            "rounds": rounds, "ms_per_step_incl_setup": {v: round(t, 1) for v, t in best.items()},
            "ratio_to_base": {v: round(t / best[variants[0]], 3) for v, t in best.items()}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="256,512", help="image sides (default 256,512)")
    p.add_argument("--optimizers", default="adam,lbfgs")
    p.add_argument("--variants", default="base,remat,bf16",
                   help=f"comma-separated, of {', '.join(VARIANTS)} (default base,remat,bf16)")
    p.add_argument("--steps", type=int, default=4, help="steps per run (default 4)")
    p.add_argument("--reference", default=inputs.DEFAULT_REFERENCE,
                   help=f"torch_reference.py (default {inputs.DEFAULT_REFERENCE})")
    p.add_argument("--torch-python", default=sys.executable,
                   help="the Python that has torch, for the reference (default: this one)")
    p.add_argument("--no-reference", action="store_true", help="skip the PyTorch reference")
    p.add_argument("--side-by-side", type=int, default=0, metavar="ROUNDS",
                   help="also time the variants alternately in this process, ROUNDS rounds")
    p.add_argument("--max-seconds", type=float, default=1800)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))), flush=True)
        return 0
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant {unknown[0]!r}: use {', '.join(VARIANTS)}")
    if not args.no_reference:
        args.reference = (Path(args.reference) if Path(args.reference).exists()
                          else inputs.shared_file(args.reference))
    summary = []
    for size in (int(s) for s in args.sizes.split(",")):
        for optimizer in args.optimizers.split(","):
            ref = None if args.no_reference else reference(args, size, optimizer)
            if ref is not None:
                print(json.dumps(ref), flush=True)
            for variant in variants:
                task = {"size": size, "optimizer": optimizer, "variant": variant,
                        "steps": args.steps}
                command = [sys.executable, "-m", "benchmarks.print_size", "--child",
                           json.dumps(task)]
                done, record, failure = processes.run_for_record(command, args.max_seconds)
                record = record or {**task, "impl": "jaxstyle", "skipped": failure}
                if ref is not None and "skipped" not in record and "skipped" not in ref:
                    record["reference_peak_gib"] = ref["process_peak_gib"]
                    record["peak_ratio"] = round(record["process_peak_gib"]
                                                 / ref["process_peak_gib"], 3)
                    record["reference_ms_per_step"] = ref["ms_per_step"]
                print(json.dumps(record), flush=True)
                summary.append(record)
            if args.side_by_side:
                print(json.dumps(side_by_side(size, optimizer, variants, args.steps,
                                              args.side_by_side)), flush=True)
    print(json.dumps({"summary": [
        {k: r.get(k) for k in ("size", "optimizer", "variant", "process_peak_gib", "peak_ratio",
                               "ms_per_step", "temp_bytes_per_pixel", "skipped")}
        for r in summary]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
