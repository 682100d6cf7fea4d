"""NET files: a trained feed-forward style network as safetensors, with what made it as metadata.

Tensors are the `jaxstyle.models.transformer` parameters, named by their path (``res1/conv1/kernel``,
HWIO float32). The string metadata holds ``format`` ("jaxstyle-net"), ``version``,
``architecture``, ``width``, ``base`` (channels), ``styles`` (JSON list of the style file names),
``loss`` (JSON: layers, weights, normalization, image size ..., and the stability term of
``jaxstyle train --temporal-weight``: ``temporal_weight`` and ``temporal_motion``, the random
motions it was trained under; see `temporal`) and ``steps`` (steps trained).
Written through `files.atomic_write`; reading anything else is a one-line `JaxstyleError`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np

from jaxstyle.errors import JaxstyleError
from jaxstyle.files import atomic_write
from jaxstyle.models import transformer

FORMAT = "jaxstyle-net"
VERSION = "1"
ARCHITECTURE = "johnson2016-instancenorm-upsample"


@dataclasses.dataclass(frozen=True)
class Net:
    """A loaded network: ``params`` (numpy arrays, `transformer` layout) and its metadata."""

    params: dict
    width: float
    styles: tuple[str, ...] = ()
    loss: dict = dataclasses.field(default_factory=dict)
    steps: int = 0


def temporal(net: Net) -> dict | None:
    """What the network was trained for under motion: {"weight": float (0: no stability term),
    "motion": {"max_shift", "max_degrees", "max_scale"} or None, "history": [[first_step, weight],
    ...] when a resumed run changed the weight}; None for a file written before it was recorded."""
    if "temporal_weight" not in net.loss:
        return None
    weight = float(net.loss["temporal_weight"])
    return {"weight": weight, "motion": net.loss.get("temporal_motion") if weight else None,
            "history": net.loss.get("temporal_weight_history")}


def describe(net: Net) -> str:
    """One line about ``net``: its styles, steps, width and temporal (video) training."""
    t = temporal(net)
    if t is None:
        video = "temporal weight not recorded (a file from before it was)"
    elif not t["weight"]:
        video = "temporal weight 0 (not trained for stability under motion)"
    else:
        m = t["motion"]
        video = f"temporal weight {t['weight']:g} " + (
            f"(random motions: shift <= {m['max_shift']:g} px, rotation <= {m['max_degrees']:g} "
            f"deg, scale +-{100 * m['max_scale']:g} %)" if m else "(motions not recorded)")
    if t is not None and t["history"]:
        video += ", changed on resume: " + ", ".join(f"{w:g} from step {s}"
                                                    for s, w in t["history"])
    styles = ", ".join(net.styles) or "?"
    return f"style {styles}; {net.steps} steps; width {net.width:g}; {video}"


def flatten(params: dict, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for k, v in params.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = np.ascontiguousarray(np.asarray(v, np.float32))
    return out


def unflatten(flat: dict[str, np.ndarray]) -> dict:
    tree: dict = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def save(path: str | os.PathLike, net: Net) -> Path:
    """Writes ``net`` atomically to ``path`` (a .safetensors file)."""
    from safetensors.numpy import save as to_bytes

    metadata = {"format": FORMAT, "version": VERSION, "architecture": ARCHITECTURE,
                "width": repr(float(net.width)),
                "base": str(transformer.base_channels(net.params)),
                "styles": json.dumps(list(net.styles)), "loss": json.dumps(net.loss),
                "steps": str(int(net.steps))}
    data = to_bytes(flatten(net.params), metadata=metadata)
    atomic_write(path, lambda f: f.write(data))
    return Path(path)


def load(path: str | os.PathLike) -> Net:
    """Reads a NET file. JaxstyleError for a missing file or anything that is not a NET file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise JaxstyleError(f"network '{path}' not found; train one with `jaxstyle train`")
    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise ValueError("no jaxstyle-net metadata")
            flat = {k: f.get_tensor(k) for k in f.keys()}
        if metadata.get("architecture") != ARCHITECTURE:
            raise ValueError(f"unknown architecture {metadata.get('architecture')!r}")
        params = unflatten(flat)
        _check_shapes(params, int(metadata["base"]))
        return Net(params=params, width=float(metadata["width"]),
                   styles=tuple(json.loads(metadata.get("styles", "[]"))),
                   loss=json.loads(metadata.get("loss", "{}")), steps=int(metadata.get("steps", 0)))
    except JaxstyleError:
        raise
    except Exception as e:  # whatever safetensors or the checks raise: one line
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        raise JaxstyleError(f"'{path}' is not a jaxstyle network file ({reason}); give a NET "
                            "file written by `jaxstyle train`") from None


def _check_shapes(params: dict, base: int) -> None:
    import jax

    expected = jax.eval_shape(transformer.TransformerNet(base=base).init, jax.random.key(0),
                              jax.ShapeDtypeStruct((1, 16, 16, 3), np.float32))["params"]
    want = {k: tuple(v.shape) for k, v in flatten_shapes(expected).items()}
    have = {k: tuple(v.shape) for k, v in flatten(params).items()}
    if want != have:
        missing = sorted(set(want) ^ set(have)) or sorted(k for k in want if want[k] != have[k])
        raise ValueError(f"parameters do not match the architecture (first: {missing[0]})")


def flatten_shapes(tree, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) or hasattr(v, "items"):
            out.update(flatten_shapes(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out
