"""``python -m jaxstyle.cli ...``: the same as the ``jaxstyle`` command."""

import sys

from jaxstyle.cli import main

sys.exit(main())
