"""The ``jaxstyle`` command: one module per command, sharing `common`.

The edge of the program: flags become a `Config`, files become arrays, progress becomes a bar,
and every user error becomes one line ``jaxstyle: error: ...`` with a non-zero exit status.

  convert, weights   `jaxstyle.cli.convert`: weight files
  stylize            `jaxstyle.cli.stylize`: one content image or several
  train, apply       `jaxstyle.cli.train`, `jaxstyle.cli.apply`: feed-forward style networks
  video              `jaxstyle.cli.video` (flags), `jaxstyle.cli.film` (its pipeline): a film
  warmup             `jaxstyle.cli.warmup`: compile ahead of time into the cache

The benchmarks against the PyTorch reference are not a command: they live in the repository's
``benchmarks/`` folder (``python -m benchmarks.compare``), beside the package, not in it.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from jaxstyle.cli import apply, convert, stylize, train, video, warmup
from jaxstyle.cli.common import (EXIT_ERROR, EXIT_INTERRUPTED, OneLineParser, in_flag_words,
                                 is_out_of_memory, out_of_memory_error, warnings_as_lines)
from jaxstyle.errors import JaxstyleError

__all__ = ["main", "build_parser", "EXIT_ERROR", "EXIT_INTERRUPTED"]


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="jaxstyle", description="Neural style transfer in JAX.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    convert.add_parsers(sub)
    stylize.add_parser(sub)
    train.add_parser(sub)
    apply.add_parser(sub)
    video.add_parser(sub)
    warmup.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        with warnings_as_lines():
            return args.run(args)
    except JaxstyleError as e:
        print(f"jaxstyle: error: {in_flag_words(str(e))}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as e:
        if not is_out_of_memory(e):
            raise
        print(f"jaxstyle: error: {out_of_memory_error(e)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("jaxstyle: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
