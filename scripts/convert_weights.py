#!/usr/bin/env python
"""Converts an original VGG-19 weights file into jaxstyle's .safetensors format.

Same as ``jaxstyle convert SRC -o DST [--source keras|torchvision|caffe]``; see weights/README.md.
"""

import sys

from jaxstyle.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:]]))
