"""What the benchmark measures: `BenchOptions`, from the flags of ``python -m benchmarks.compare``."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from benchmarks.inputs import DEFAULT_CONTENT, DEFAULT_REFERENCE, DEFAULT_STYLE, find_shared
from benchmarks.worker import TRACE_EVERY
from jaxstyle.cli.common import csv
from jaxstyle.config import DTYPES, OPTIMIZERS

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


def build_parser(description: str = "") -> argparse.ArgumentParser:
    d = BenchOptions()
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.compare", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=description)
    p.add_argument("--sizes", type=csv(int), default=d.sizes, metavar="S1,S2",
                   help="image sides in pixels (default 256,512,1024)")
    p.add_argument("--batches", type=csv(int), default=d.batches, metavar="B1,B2",
                   help="batch sizes (default 1,4,8)")
    p.add_argument("--devices", type=csv(int), default=d.devices, metavar="N1,N2",
                   help="device counts to shard each batch over (default 1; on a CPU, simulated "
                        "devices on the same cores)")
    p.add_argument("--optimizers", type=csv(str), default=d.optimizers, metavar="O1,O2",
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
    return p


def _resolve_reference(args: argparse.Namespace) -> tuple[Path | None, str | None]:
    if args.no_reference:
        return None, "disabled by --no-reference"
    if args.reference:
        path = Path(args.reference).resolve()
        return (path, None) if path.is_file() else (None, f"reference not found: {path}")
    path = find_shared(DEFAULT_REFERENCE)
    if path is None:
        return None, (f"reference not found: {DEFAULT_REFERENCE} relative to the working directory "
                      "or the repository root; pass --reference PATH")
    return path, None


def _resolve_image(parser: argparse.ArgumentParser, given: str | None, default: str,
                   role: str) -> Path:
    path = Path(given) if given else find_shared(default)
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
