#!/usr/bin/env python3
"""Benchmark jaxstyle against the PyTorch reference: see `jaxstyle.bench` and docs/performance.md.

  python scripts/bench.py --sizes 256,512 --batches 1,4 --iters 20 --warmup 5
"""

import sys

import jaxstyle.bench

if __name__ == "__main__":
    sys.exit(jaxstyle.bench.main(sys.argv[1:]))
