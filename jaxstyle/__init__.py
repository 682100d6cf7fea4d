"""jaxstyle: Gatys-style neural style transfer in JAX/Flax.

Data flow (the numerical core, in the middle, takes and returns arrays and never touches files)::

    image_io.load_image ──▶ float32[H, W, 3] in [0, 1]
    weights.convert / vgg19.load ──▶ VGG (params + preprocessing)
    kernels ──▶ models.vgg19.features ──▶ losses.targets (once) ──▶ losses.total_loss (pure)
    optimize.run (optax Adam / L-BFGS, compiled; pyramid: an L-BFGS preconditioner)
        ──▶ stylize / batch ──▶ image_io.save_image
    cli: the ``jaxstyle`` command; bench: the benchmark against the PyTorch reference
"""

__version__ = "0.1.0"
