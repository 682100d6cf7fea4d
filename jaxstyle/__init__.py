"""jaxstyle: Gatys-style neural style transfer in JAX/Flax.

Data flow, one module per step::

    image_io.load_image ──▶ float32[H, W, 3] in [0, 1]
    weights.convert / vgg19.load ──▶ VGG (params + preprocessing)
    vgg19.features ──▶ losses.targets (once) ──▶ losses.total_loss (pure)
    optimize.run (optax Adam / L-BFGS, compiled) ──▶ image_io.save_image (atomic)
"""

__version__ = "0.1.0"
