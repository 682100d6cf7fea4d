"""What every command shares: exit codes, one-line errors and warnings, flag types, progress bars,
the network and the compilation cache."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import signal
import sys
import threading
import warnings
from typing import Callable, Iterator

import jax

from jaxstyle import download, vgg19
from jaxstyle.errors import JaxstyleError, JaxstyleWarning

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130
OUT_OF_MEMORY_HINT = ("lower --image-size or --batch-size, or use --lbfgs-memory 20, --optimizer adam "
                      "or --compute-dtype bfloat16; on a GPU, XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 "
                      "lets JAX use more than its default 75%")


# ----------------------------------------------------------------------------------------------
# Messages.


def in_flag_words(message: str) -> str:
    """A library message in the command line's words: each setting it names as
    ``Config.<field>`` (or ``Config.<field>=value``) becomes the flag, ``--<field-with-dashes>``
    (``--field value``). The core speaks of its configuration's fields; the CLI of its flags."""
    return re.sub(r"Config\.(\w+)(=?)",
                  lambda m: "--" + m.group(1).replace("_", "-") + (" " if m.group(2) else ""),
                  message)


def warn(message: str) -> None:
    """One line ``jaxstyle: warning: ...`` on stderr."""
    print(f"jaxstyle: warning: {in_flag_words(message)}", file=sys.stderr)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, JaxstyleWarning):
        warn(" ".join(str(message).split()))
    else:
        _python_show_warning(message, category, filename, lineno, file, line)


_python_show_warning = warnings.showwarning


@contextlib.contextmanager
def warnings_as_lines() -> Iterator[None]:
    """Within: every `JaxstyleWarning` the library raises is shown as one ``jaxstyle: warning:``
    line (each time); other warnings as Python shows them."""
    with warnings.catch_warnings():
        warnings.simplefilter("always", JaxstyleWarning)
        warnings.showwarning = _show_warning
        yield


def is_out_of_memory(error: BaseException) -> bool:
    """A host or device allocation failure (XLA reports the latter as RESOURCE_EXHAUSTED)."""
    return isinstance(error, MemoryError) or (
        isinstance(error, RuntimeError) and "RESOURCE_EXHAUSTED" in str(error))


def out_of_memory_error(error: BaseException, wrote: str = "") -> JaxstyleError:
    first_line = (str(error).strip().splitlines() or ["MemoryError"])[0][:200]
    return JaxstyleError(f"out of memory ({first_line}){wrote}: {OUT_OF_MEMORY_HINT}")


# ----------------------------------------------------------------------------------------------
# Argument parsing.


class OneLineParser(argparse.ArgumentParser):
    """argparse with errors on one line (no usage dump), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"jaxstyle: error: {message} (see `{self.prog} --help`)\n")


def _number(kind: Callable, text: str):
    """``kind(text)``, refusing what is not a finite number (NaN and infinities pass ``float``)."""
    try:
        value = kind(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def csv(kind: Callable) -> Callable[[str], tuple]:
    """A flag type: comma-separated values of ``kind`` (finite, where ``kind`` makes numbers)."""
    def parse(text: str) -> tuple:
        try:
            values = tuple(kind(x.strip()) for x in text.split(",") if x.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise argparse.ArgumentTypeError(f"every value must be a finite number, got {text!r}")
        return values
    return parse


def positive(kind: Callable) -> Callable[[str], float]:
    """A flag type: a finite number of ``kind`` that is > 0."""
    def parse(text: str):
        value = _number(kind, text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


def non_negative_float(text: str) -> float:
    """A flag type: a finite float >= 0."""
    value = _number(float, text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def add_weights_flags(p: argparse.ArgumentParser) -> None:
    """--weights, --source, --cache-dir, --no-compile-cache: for commands that run the network."""
    p.add_argument("--weights", metavar="PATH",
                   help="VGG-19 weights: a converted .safetensors file or any supported source file "
                        "(Keras .h5, torchvision/caffe .pth). Default: the cached converted Keras "
                        "weights, downloaded and converted on first use")
    p.add_argument("--source", choices=("keras", "torchvision", "caffe"),
                   help="convention of a .pth file whose checksum is not a known one")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="where downloaded/converted weights live (default: $JAXSTYLE_CACHE, else "
                        "$XDG_CACHE_HOME/jaxstyle, else ~/.cache/jaxstyle)")
    p.add_argument("--no-compile-cache", action="store_true",
                   help="do not keep compiled programs in CACHE_DIR/xla (kept by default, so a "
                        "second run with the same image sizes starts without compiling)")


# ----------------------------------------------------------------------------------------------
# Progress, the network, the compilation cache.


def progress_bar(total: int, unit: str, quiet: bool, **kwargs):
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, disable=quiet, dynamic_ncols=True, file=sys.stderr, **kwargs)


def download_progress(quiet: bool) -> download.Progress:
    """A `download.Progress` callback that shows a bar in bytes."""
    bar = None

    def update(done: int, total: int | None) -> None:
        nonlocal bar
        if bar is None:
            bar = progress_bar(total or 0, "B", quiet, unit_scale=True, desc="download")
        bar.update(done - bar.n)

    return update


def load_network(args: argparse.Namespace, quiet: bool = False) -> vgg19.VGG:
    """The VGG from --weights, or the default weights (downloaded and converted when missing)."""
    path = args.weights
    if path is None:
        path = download.default_weights(args.cache_dir, download_missing=True,
                                        progress=download_progress(quiet))
    return vgg19.load(path, source=args.source)


def enable_compilation_cache(args: argparse.Namespace) -> None:
    """JAX's persistent compilation cache in ``<cache dir>/xla``, unless the user turned it off
    (``--no-compile-cache``, ``JAXSTYLE_COMPILE_CACHE=0``) or set their own
    (``JAX_COMPILATION_CACHE_DIR``). A full VGG step takes seconds to compile; a cached one loads."""
    if args.no_compile_cache or os.environ.get("JAXSTYLE_COMPILE_CACHE") == "0":
        return
    if jax.config.jax_compilation_cache_dir:
        return
    path = download.cache_dir(args.cache_dir) / "xla"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        warn(f"not caching compiled programs: cannot create {path} ({e.strerror}); "
             "--no-compile-cache silences this")
        return
    jax.config.update("jax_compilation_cache_dir", str(path))
    # JAX caches only programs that took >= 1 s to compile; a run also builds ~50 small ones
    # (targets, resizes, statistics) that took ~2 s together to compile in every process.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


# JAX's events for the stages of making a program: tracing, lowering to MLIR, XLA's compile.
COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                  "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")


class CompileClock:
    """Seconds this process has spent making programs (tracing, lowering, compiling; loading
    from the persistent cache counts as compiling's share), from JAX's monitoring events: the
    compile time a progress bar and ``--log-dir`` report apart from the steps'. JAX's listeners
    are process-wide and cannot be removed, so one clock serves the process (`compile_clock`)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        from jax import monitoring

        monitoring.register_event_duration_secs_listener(self._on_duration)

    def _on_duration(self, event: str, duration: float, **_) -> None:
        if event in COMPILE_EVENTS:
            self.seconds += duration


_CLOCK: list[CompileClock] = []


def compile_clock() -> CompileClock:
    """The process's `CompileClock`, started on first use."""
    if not _CLOCK:
        _CLOCK.append(CompileClock())
    return _CLOCK[0]


def available_memory() -> tuple[int, str]:
    """(bytes free for a run, where): the default device's free memory on an accelerator, else the
    host's MemAvailable (/proc/meminfo; physical pages where that file does not exist)."""
    device = jax.devices()[0]
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        if "bytes_limit" in stats:
            return stats["bytes_limit"] - stats.get("bytes_in_use", 0), f"the {device.platform}"
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "this host"
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"), "this host"


# ----------------------------------------------------------------------------------------------
# Ctrl-C.


class StopRequest:
    """Ctrl-C during compiled work, handled at safe points.

    Python raises KeyboardInterrupt wherever it is when SIGINT arrives; inside a JAX call (XLA
    compiles on its own threads and only polls for signals) that leaves a compile running while
    the interpreter tears down, which crashed the process (exit 139). So within ``on_ctrl_c`` the
    first Ctrl-C only sets ``requested``: the caller stops at its next safe point (after the step
    or chunk in flight). A second Ctrl-C quits at once: one line, exit 130, no interpreter
    teardown (outputs are written atomically, so none is left half-written).
    """

    def __init__(self) -> None:
        self.requested = False

    def _handler(self, signum, frame) -> None:
        if self.requested:
            quit_at_once()
        self.requested = True

    @contextlib.contextmanager
    def on_ctrl_c(self) -> Iterator["StopRequest"]:
        """Installs the handler for the block (main thread only; elsewhere Ctrl-C is Python's).
        After a requested stop, a further Ctrl-C quits at once even after the block (unless the
        caller had its own handler): the process is on its way out, and a Ctrl-C while it writes
        or exits must not end in a traceback from an atexit hook."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = signal.signal(signal.SIGINT, self._handler)
        try:
            yield self
        finally:
            stays = self.requested and previous is signal.default_int_handler
            signal.signal(signal.SIGINT, (lambda signum, frame: quit_at_once()) if stays
                          else previous)


def quit_at_once() -> None:
    """Ends the process now with one line and exit status 130 (a second Ctrl-C)."""
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    with contextlib.suppress(Exception):
        print("jaxstyle: interrupted twice: stopped at once, without writing", file=sys.stderr, flush=True)
    os._exit(EXIT_INTERRUPTED)
