"""Benchmark jaxstyle against the PyTorch reference (``torch_reference.py``), side by side.

Every figure is taken in one invocation for both implementations with the same settings: for each
(size, batch, optimizer) the reference runs as a subprocess, then jaxstyle runs in a fresh
subprocess (a *worker*, `jaxstyle.bench.worker`), so that each process's peak memory belongs to
that one configuration and an out-of-memory crash or a configuration over ``--max-seconds`` is
reported as skipped instead of ending the run. The parent process never touches a JAX device (on a GPU it would
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

import sys
from typing import Sequence

from jaxstyle.bench.compare import run_speed, run_time_to_quality, summary
from jaxstyle.bench.options import build_parser, options_from_args
from jaxstyle.bench.processes import JsonLines


def main(argv: Sequence[str] | None = None) -> int:
    """``jaxstyle bench`` / ``scripts/bench.py``: returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:  # `jaxstyle bench -- --sizes ...`: argparse passes the "--" on
        argv = argv[1:]
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
