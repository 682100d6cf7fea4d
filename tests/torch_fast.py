"""An independent PyTorch transformation network (tests only), written from the architecture of
Johnson et al. 2016 with instance norm as in the PyTorch examples (and
/work/shared/bench/torch_fast_reference.py), with a base channel count. Weights come in as the
plain nested dict of numpy arrays that `jaxstyle.models.transformer` documents (HWIO kernels);
nothing here calls jaxstyle. NCHW, float64 by default."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _t(a, like):
    """A parameter as a tensor of ``like``'s dtype; tensors pass through (keeping autograd)."""
    if isinstance(a, torch.Tensor):
        return a.to(like.dtype)
    return torch.as_tensor(np.asarray(a, np.float64), dtype=like.dtype)


def _conv(x, p, stride=1, upsample=False):
    if upsample:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
    k, b = _t(p["kernel"], x).permute(3, 2, 0, 1), _t(p["bias"], x)
    x = F.pad(x, [k.shape[-1] // 2] * 4, mode="reflect")
    return F.conv2d(x, k, b, stride)


def _norm(x, p):
    w, b = _t(p["scale"], x), _t(p["bias"], x)
    return F.instance_norm(x, weight=w, bias=b, eps=1e-5)


def _block(x, p, stride=1, upsample=False):
    return F.relu(_norm(_conv(x, p["conv"], stride, upsample), p["norm"]))


def forward(params: dict, images: np.ndarray, dtype=torch.float64, numpy: bool = True):
    """images: [B, H, W, 3] (H, W multiples of 4) -> the unclipped network output [B, H, W, 3]
    (a numpy array, or with ``numpy=False`` a tensor, differentiable in tensor parameters)."""
    x = torch.as_tensor(np.asarray(images, np.float64), dtype=dtype).permute(0, 3, 1, 2)
    x = _block(x, params["in"])
    x = _block(x, params["down1"], 2)
    x = _block(x, params["down2"], 2)
    for i in range(1, 6):
        p = params[f"res{i}"]
        y = F.relu(_norm(_conv(x, p["conv1"]), p["norm1"]))
        x = x + _norm(_conv(y, p["conv2"]), p["norm2"])
    x = _block(x, params["up1"], upsample=True)
    x = _block(x, params["up2"], upsample=True)
    x = _conv(x, params["out"])
    x = x.permute(0, 2, 3, 1)
    return x.detach().numpy() if numpy else x
