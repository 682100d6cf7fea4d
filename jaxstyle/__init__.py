"""jaxstyle: Gatys-style neural style transfer in JAX/Flax.

The entry points, all importable from the top level::

    import jaxstyle

    vgg = jaxstyle.load("vgg19.safetensors")           # or a Keras .h5 / torchvision .pth file
    content = jaxstyle.load_image("tubingen.jpg", long_side=512)   # float32[H, W, 3] in [0, 1]
    style = jaxstyle.load_image("starry_night.jpg", long_side=512)
    cfg = jaxstyle.Config().replace(num_iterations=500)
    out = jaxstyle.stylize.stylize(vgg, content, [style], cfg)      # float32[H, W, 3]
    jaxstyle.save_image(out, "out.png")

- `Config`: every setting of a run, with documented defaults, in six sections (`Loss`,
  `Optimizer`, `Schedule`, `Start`, `Output`, `Network`); `JaxstyleError`, `ConfigError`: the
  one-line errors.
- `load`, `vgg19`: VGG-19 from a weights file, and the network's pure functions (``features``,
  ``prepare``, ``truncate``).
- `losses`, `optimize`: the numerical core, pure and safe under ``jit``, ``grad`` and ``vmap``.
- `stylize` (the module: ``stylize.stylize`` for one image), `stylize_batch` (problems of one
  shape), `stylize_many` (images of any sizes, sharded over devices), `stylize_sweep` (settings as
  one batched run).
- `train`, `transformer`, `apply`: feed-forward style networks (the jitted training step, the
  network, its forward pass).
- `image_io`, `load_image`, `save_image`: images as float32[H, W, 3] arrays in [0, 1].

``jaxstyle.stylize`` is a module and not the function of that name: Python binds a submodule's name
on its package whenever the submodule is imported, so a function of the same name would be
replaced by the module, or not, depending on import order.

Every name is imported on first use (PEP 562 ``__getattr__``): ``import jaxstyle`` costs nothing,
and importing one module of the numerical core (``import jaxstyle.losses``) never imports the file
readers, Pillow or the progress bars. Data flow (the core, in the middle, takes and returns arrays
and never touches files)::

    image_io.load_image ──▶ float32[H, W, 3] in [0, 1]
    weights.convert / vgg19.load ──▶ VGG (params + preprocessing)
    kernels ──▶ models.vgg19.features ──▶ losses.targets (once) ──▶ losses.total_loss (pure)
    optimize.run (optax Adam / L-BFGS, compiled; pyramid: an L-BFGS preconditioner)
        ──▶ stylize / batch ──▶ image_io.save_image
    cli: the ``jaxstyle`` command (benchmarks: beside the package, in the repository)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> (module, attribute in it; None: the module itself). `__getattr__` imports them.
_EXPORTS: dict[str, tuple[str, str | None]] = {
    "Config": ("jaxstyle.config", "Config"),
    "Loss": ("jaxstyle.config", "Loss"),
    "Optimizer": ("jaxstyle.config", "Optimizer"),
    "Schedule": ("jaxstyle.config", "Schedule"),
    "Start": ("jaxstyle.config", "Start"),
    "Output": ("jaxstyle.config", "Output"),
    "Network": ("jaxstyle.config", "Network"),
    "JaxstyleError": ("jaxstyle.errors", "JaxstyleError"),
    "ConfigError": ("jaxstyle.errors", "ConfigError"),
    "load": ("jaxstyle.vgg19", "load"),
    "vgg19": ("jaxstyle.vgg19", None),
    "losses": ("jaxstyle.losses", None),
    "optimize": ("jaxstyle.optimize", None),
    "stylize": ("jaxstyle.stylize", None),
    "stylize_batch": ("jaxstyle.stylize", "stylize_batch"),
    "stylize_many": ("jaxstyle.batch", "stylize_many"),
    "stylize_sweep": ("jaxstyle.sweep", "stylize_sweep"),
    "train": ("jaxstyle.train", None),
    "transformer": ("jaxstyle.models.transformer", None),
    "apply": ("jaxstyle.models.transformer", "apply"),
    "image_io": ("jaxstyle.image_io", None),
    "load_image": ("jaxstyle.image_io", "load_image"),
    "save_image": ("jaxstyle.image_io", "save_image"),
}

# Written out, not computed, so that type checkers read it (a test keeps it equal to the table).
__all__ = ["__version__", "Config", "Loss", "Optimizer", "Schedule", "Start", "Output", "Network",
           "JaxstyleError", "ConfigError", "load", "vgg19", "losses", "optimize", "stylize",
           "stylize_batch", "stylize_many", "stylize_sweep", "train", "transformer", "apply",
           "image_io", "load_image", "save_image"]

if TYPE_CHECKING:  # what type checkers and editors see; at run time `__getattr__` imports these
    from jaxstyle import image_io, losses, optimize, stylize, train, vgg19
    from jaxstyle.batch import stylize_many
    from jaxstyle.config import Config, Loss, Network, Optimizer, Output, Schedule, Start
    from jaxstyle.errors import ConfigError, JaxstyleError
    from jaxstyle.image_io import load_image, save_image
    from jaxstyle.models import transformer
    from jaxstyle.models.transformer import apply
    from jaxstyle.stylize import stylize_batch
    from jaxstyle.sweep import stylize_sweep
    from jaxstyle.vgg19 import load


def __getattr__(name: str) -> Any:
    """The export ``name`` of `_EXPORTS`, imported now (PEP 562: called only for a name the module
    does not hold yet) and kept, so that this runs once per name."""
    try:
        module, attribute = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = importlib.import_module(module)
    if attribute is not None:
        value = getattr(value, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
