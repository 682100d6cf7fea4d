"""``jaxstyle convert`` and ``jaxstyle weights download|path``: weight files."""

from __future__ import annotations

import argparse
from pathlib import Path

from jaxstyle import download, weights
from jaxstyle.cli.common import download_progress
from jaxstyle.errors import JaxstyleError

SOURCES = ("keras", "torchvision", "caffe")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert a VGG-19 weights file to jaxstyle's .safetensors")
    p.add_argument("src", help="Keras .h5, torchvision or caffe .pth")
    p.add_argument("-o", "--output", required=True, help="the .safetensors file to write")
    p.add_argument("--source", choices=SOURCES,
                   help="the file's convention, needed for a .pth whose checksum is not known")
    p.set_defaults(run=run_convert)

    p = sub.add_parser("weights", help="manage the default weights")
    wsub = p.add_subparsers(dest="weights_command", metavar="ACTION", required=True)
    w = wsub.add_parser("download", help="download and convert the default Keras VGG-19 weights")
    w.add_argument("--cache-dir", metavar="DIR", help="cache directory (see stylize --help)")
    w = wsub.add_parser("path", help="print where the default converted weights are (or would be)")
    w.add_argument("--cache-dir", metavar="DIR")
    p.set_defaults(run=run_weights)


def run_convert(args: argparse.Namespace) -> int:
    if Path(args.output).suffix != ".safetensors":
        raise JaxstyleError(f"the converted weights file '{args.output}' must end in .safetensors, "
                            f"e.g. {Path(args.output).with_suffix('.safetensors').name}")
    info = weights.convert(args.src, args.output, source=args.source)
    print(f"converted {args.src} ({info.source}) -> {args.output}")
    return 0


def run_weights(args: argparse.Namespace) -> int:
    if args.weights_command == "path":
        print(download.cache_dir(args.cache_dir) / download.CONVERTED_NAME)
        return 0
    path = download.default_weights(args.cache_dir, download_missing=True,
                                    progress=download_progress(False))
    print(f"weights ready: {path}")
    return 0
