"""jaxstyle's benchmarks: a folder of the repository, not part of the installed library.

Run them from the root of a clone, with the PyTorch reference scripts and images in ``../shared``
(or their paths given as flags): ``python -m benchmarks.<name> --help``. They use jaxstyle's public
API only (a test reads their imports). `benchmarks/README.md` lists each one, what it measures
and its command; ``docs/performance.md`` and ``docs/fast_networks.md`` hold the figures.
"""
