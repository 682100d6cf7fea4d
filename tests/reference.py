"""An independent PyTorch reference for VGG-19 features and the style-transfer losses (tests only).

Written from the formulas documented in `jaxstyle.losses` and `jaxstyle.vgg19`, not by calling
jaxstyle: weights come in as a plain ``{"conv1_1": {"kernel": HWIO, "bias": [Cout]}, ...}`` dict of
numpy arrays, preprocessing as any object with ``bgr``, ``scale``, ``mean`` and ``std``. Computation
is float64 by default, so the reference is much more accurate than the float32 code under test.

Normalizations (C channels, N = H·W, F: [B, C, N] features):
  neural-style: Gram FFᵀ/(C·N); style term mean((G − A)²) over C²;
                content term mean((F − P)²).
  gatys:        Gram FFᵀ; style term Σ(G − A)²/(4·C²·N²); content term ½·Σ(F − P)².
  TV (both):    ½·Σ(255·Δx)² over vertical and horizontal neighbours.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

# Convolutions per block of VGG-19; a pooling layer ends every block.
BLOCKS = (2, 2, 4, 4, 4)


def layer_sequence() -> list[str]:
    """conv1_1, relu1_1, conv1_2, relu1_2, pool1, conv2_1, ... pool5 (built independently)."""
    names = []
    for block, count in enumerate(BLOCKS, start=1):
        for index in range(1, count + 1):
            names += [f"conv{block}_{index}", f"relu{block}_{index}"]
        names.append(f"pool{block}")
    return names


def _tensor(x, dtype) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(dtype)
    return torch.as_tensor(np.array(x, dtype=np.float64), dtype=dtype)


def torch_preprocess(images_nhwc: torch.Tensor, preprocessing) -> torch.Tensor:
    """RGB NHWC in [0, 1] -> the network's NCHW input: (rgb[flipped if bgr] * scale - mean) / std.
    """
    x = images_nhwc.flip(-1) if preprocessing.bgr else images_nhwc
    mean = torch.as_tensor(np.asarray(preprocessing.mean, np.float64), dtype=x.dtype)
    std = torch.as_tensor(np.asarray(preprocessing.std, np.float64), dtype=x.dtype)
    x = (x * float(preprocessing.scale) - mean) / std
    return x.permute(0, 3, 1, 2)


def torch_features(params: Mapping, preprocessing, images_nhwc, layers: Sequence[str],
                   pooling: str = "max", layout: str = "NCHW", dtype=torch.float64
                   ) -> dict[str, torch.Tensor]:
    """Activations of VGG-19 at ``layers`` ({name: tensor}, NCHW or NHWC by ``layout``).

    images_nhwc: numpy array or tensor [B, H, W, 3] RGB in [0, 1] (a tensor keeps its autograd
    graph).
    """
    sequence = layer_sequence()
    wanted = set(layers)
    last = max(sequence.index(name) for name in layers)
    x = torch_preprocess(_tensor(images_nhwc, dtype), preprocessing)
    out = {}
    for name in sequence[: last + 1]:
        if name.startswith("conv"):
            kernel = _tensor(params[name]["kernel"], dtype).permute(3, 2, 0, 1)  # HWIO -> OIHW
            bias = _tensor(params[name]["bias"], dtype)
            x = F.conv2d(x, kernel, bias, stride=1, padding=1)
        elif name.startswith("relu"):
            x = F.relu(x)
        elif pooling == "max":
            x = F.max_pool2d(x, 2, 2)
        else:
            x = F.avg_pool2d(x, 2, 2)
        if name in wanted:
            out[name] = x if layout == "NCHW" else x.permute(0, 2, 3, 1)
    return out


# ------------------------------------------------------------------------------------------------
# Losses on NCHW features; each returns one value per image, [B].


def torch_gram(features_nchw: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    b, c, h, w = features_nchw.shape
    f = features_nchw.reshape(b, c, h * w)
    g = torch.bmm(f, f.transpose(1, 2))
    return g / (c * h * w) if normalize else g


def torch_content_loss(features, target, normalization="neural-style") -> torch.Tensor:
    diff = features - target
    if normalization == "gatys":
        return 0.5 * (diff**2).sum(dim=(1, 2, 3))
    return (diff**2).mean(dim=(1, 2, 3))


def torch_style_loss(features, target_gram, normalization="neural-style") -> torch.Tensor:
    _, c, h, w = features.shape
    gram = torch_gram(features, normalize=normalization != "gatys")
    diff = gram - target_gram
    if normalization == "gatys":
        return (diff**2).sum(dim=(1, 2)) / (4.0 * c**2 * (h * w) ** 2)
    return (diff**2).mean(dim=(1, 2))


def torch_total_variation(images_nhwc: torch.Tensor) -> torch.Tensor:
    x = images_nhwc * 255.0
    dy = x[:, 1:] - x[:, :-1]
    dx = x[:, :, 1:] - x[:, :, :-1]
    return 0.5 * ((dy**2).sum(dim=(1, 2, 3)) + (dx**2).sum(dim=(1, 2, 3)))


def torch_targets(params, preprocessing, content_images, style_images, blend_weights,
                  content_layers, style_layers, normalization="neural-style", pooling="max",
                  dtype=torch.float64):
    """(content features {layer: [B, C, h, w]}, blended style Grams {layer: [1, C, C]})."""
    with torch.no_grad():
        content = torch_features(params, preprocessing, content_images, content_layers, pooling,
                                 dtype=dtype)
        blended = {name: 0.0 for name in style_layers}
        for weight, image in zip(blend_weights, style_images):
            image = np.asarray(image)
            image = image[None] if image.ndim == 3 else image
            feats = torch_features(params, preprocessing, image, style_layers, pooling, dtype=dtype)
            for name in style_layers:
                blended[name] = blended[name] + float(weight) * torch_gram(
                    feats[name], normalize=normalization != "gatys")
    return content, blended


def torch_total_loss_and_grad(params, preprocessing, images, content_images, style_images,
                              blend_weights, content_layers, style_layers, content_weights,
                              style_weights, tv_weight, normalization="neural-style",
                              pooling="max", dtype=torch.float64):
    """The full objective and its gradient with respect to the image (autograd).

    images, content_images: [B, H, W, 3]; style_images: each [Hs, Ws, 3] or [1, Hs, Ws, 3];
    content_weights / style_weights: one effective weight per layer (layer weight × term weight).

    Returns (loss: float, summed over the batch; terms: {"content", "style", "tv": float64[B]};
    grad: float64[B, H, W, 3] numpy).
    """
    content_t, style_t = torch_targets(params, preprocessing, content_images, style_images,
                                       blend_weights, content_layers, style_layers, normalization,
                                       pooling, dtype)
    x = _tensor(images, dtype).requires_grad_(True)
    layers = list(dict.fromkeys(list(content_layers) + list(style_layers)))
    feats = torch_features(params, preprocessing, x, layers, pooling, dtype=dtype)
    zero = torch.zeros(x.shape[0], dtype=dtype)
    content = sum((float(w) * torch_content_loss(feats[name], content_t[name], normalization)
                   for w, name in zip(content_weights, content_layers)), zero)
    style = sum((float(w) * torch_style_loss(feats[name], style_t[name], normalization)
                 for w, name in zip(style_weights, style_layers)), zero)
    tv = float(tv_weight) * torch_total_variation(x)
    total = content.sum() + style.sum() + tv.sum()
    (grad,) = torch.autograd.grad(total, x)
    terms = {"content": content.detach().numpy(), "style": style.detach().numpy(),
             "tv": tv.detach().numpy()}
    return float(total.detach()), terms, grad.numpy()
