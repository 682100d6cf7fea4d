"""Flicker of feed-forward networks trained with and without ``--temporal-weight``, on a film.

    python -m benchmarks.network_video --weights vgg19.safetensors --data PHOTOS [--steps 300]

Trains two networks with ``jaxstyle train`` (the command a user runs), identical but for the
stability term (``--temporal-weight 0`` and ``W``: same seed, photos, steps), then streams a
synthetic panning film (`benchmarks.video.panning_film`: a window sliding over a photo that is not
among the training photos) through each with `jaxstyle.apply`. Prints one JSON object:

  warping_error: Lai et al. 2018's temporal warping error of the input film and of each network's
    output (`jaxstyle.warp`, DIS flow of the input frames), and without / with (the issue's
    target for the optimization path: >= 3);
  style_distance: mean over frames and style layers of ‖G(frame) − G(style)‖² / ‖G(style)‖² under
    the same VGG-19, and with / without (within 1.1);
  content_distance: mean over frames of ‖F(frame) − F(input)‖² / ‖F(input)‖² at relu2_2 (train's
    content layer);
  output_std: the output's pixel standard deviation (the input's under "input"): a network that
    buys its stability by washing the picture out shows here, as random-weight Gram distances
    need not (they can prefer a blur to a noisy texture);
  train_seconds of each network, and the settings.

``--temporal-weight`` may be given several times: one network for each, beside the one without.

Without trained VGG-19 weights (none can be downloaded on the machines this was written on) the
"style" is a random network's Gram statistics; the figure that matters then is the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jaxstyle
from benchmarks.video import ROOT, panning_film, style_distance
from jaxstyle import flow, vgg19, warp
from jaxstyle.cli import main as jaxstyle_main

TRAIN_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1")  # `jaxstyle train`'s default style layers


def train(weights: str, data: str, style: str, out: Path, temporal_weight: float,
          args: argparse.Namespace) -> float:
    """Trains one network with the CLI; returns its seconds."""
    argv = ["train", style, "--data", data, "--weights", weights, "-o", str(out), "--quiet",
            "--steps", str(args.steps), "--image-size", str(args.train_size),
            "--batch-size", str(args.batch_size), "--width", str(args.width),
            "--seed", str(args.seed), "--temporal-weight", str(temporal_weight),
            "--no-compile-cache"]
    start = time.perf_counter()
    code = jaxstyle_main(argv)
    if code != 0:
        raise SystemExit(f"jaxstyle train failed ({code})")
    return time.perf_counter() - start


def stylized(net: Path, film: np.ndarray) -> np.ndarray:
    """The film through the network, a frame at a time, rounded to 8 bits as a film stores it."""
    from jaxstyle import netfile

    params = netfile.load(net).params
    frames = [np.asarray(jaxstyle.apply(params, frame[None]))[0] for frame in film]
    return np.clip(np.rint(np.stack(frames) * 255), 0, 255).astype(np.float32) / 255


def content_distance(vgg, frames: np.ndarray, film: np.ndarray, layer: str = "relu2_2") -> float:
    features = jax.jit(lambda x: vgg19.features(vgg, x, (layer,))[layer])
    out, inp = features(jnp.asarray(frames)), features(jnp.asarray(film))
    return float(jnp.mean(jnp.sum((out - inp) ** 2, axis=(1, 2, 3)) / jnp.sum(inp ** 2, axis=(1, 2, 3))))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", required=True, help="a converted VGG-19 .safetensors file")
    p.add_argument("--data", required=True, help="folder of training photos")
    p.add_argument("--style", default=str(ROOT.parent / "shared/images/starry_night.jpg"))
    p.add_argument("--film-photo", default=str(ROOT.parent / "shared/images/tubingen.jpg"),
                   help="the photo the film pans over (keep it out of --data)")
    p.add_argument("--temporal-weight", type=float, action="append",
                   help="the stability term's weight (default 1e7; repeat for several networks)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--train-size", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=128, help="the film's frame width")
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--step", type=int, default=3, help="the pan's pixels a frame")
    p.add_argument("--keep", type=Path, help="keep the two networks in this folder")
    args = p.parse_args(argv)
    args.temporal_weight = args.temporal_weight or [1e7]

    film = panning_film(Path(args.film_photo), args.frames, args.size, args.step)
    dis = flow.DISFlow("medium")
    pairs = [dis.pair(film[t - 1], film[t]) for t in range(1, len(film))]
    flows = np.stack([b for _, b in pairs])
    masks = np.stack([np.asarray(warp.occlusion_mask(f, b)) for f, b in pairs])
    vgg = jaxstyle.load(args.weights)
    style = jaxstyle.load_image(args.style, args.size)

    folder = args.keep or Path(tempfile.mkdtemp(prefix="network_video_"))
    folder.mkdir(parents=True, exist_ok=True)
    report = dict(settings={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                  film=list(film.shape), load_average=[os.getloadavg()[0]],
                  warping_error={"input": float(warp.warping_error(film, flows, masks))},
                  style_distance={}, content_distance={}, output_std={"input": float(film.std())},
                  train_seconds={})
    runs = [("without", 0.0)] + [(f"with {w:g}", w) for w in args.temporal_weight]
    for name, weight in runs:
        net = folder / f"{name.replace(' ', '_')}.safetensors"
        report["train_seconds"][name] = train(args.weights, args.data, args.style, net, weight, args)
        out = stylized(net, film)
        report["warping_error"][name] = float(warp.warping_error(out, flows, masks))
        report["style_distance"][name] = style_distance(vgg, out, style, TRAIN_LAYERS)
        report["content_distance"][name] = content_distance(vgg, out, film)
        report["output_std"][name] = float(out.std())
        report["load_average"].append(os.getloadavg()[0])
    for name, _ in runs[1:]:
        report["warping_error"][f"without / {name}"] = (report["warping_error"]["without"]
                                                         / report["warping_error"][name])
        report["style_distance"][f"{name} / without"] = (report["style_distance"][name]
                                                          / report["style_distance"]["without"])
    print(json.dumps(report))


if __name__ == "__main__":
    main()
