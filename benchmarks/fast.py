"""Feed-forward style networks against the PyTorch reference (``torch_fast_reference.py``), side
by side in one run: each side in its own subprocess, same sizes, random weights.

  python -m benchmarks.fast --mode apply --size 512 --batch 1 --iters 5
  python -m benchmarks.fast --mode train --size 256 --batch 4 --iters 5
  python -m benchmarks.fast --mode train --data DIR        # + time spent waiting for data
  python -m benchmarks.fast --mode apply --frames DIR      # + whole `jaxstyle apply` on a folder

apply: the network's forward pass on [batch, size, size, 3] (jitted `transformer.apply`).
train: one `train.make_step` step (network, VGG-19 features relu1_1..relu4_1 of the output and of
the batch, content relu2_2 + Gram style + TV, backward, Adam), VGG-19 random in torchvision's
convention, like the reference. Prints one JSON line per side, then ``{"summary": ...}`` with the
ratio jaxstyle / reference (< 1: jaxstyle faster).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.inputs import DEFAULT_FAST_REFERENCE
from benchmarks.processes import child_env



def _worker(args: argparse.Namespace) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxstyle import losses, train
    from jaxstyle.config import Config, Loss
    from jaxstyle.models import transformer, vgg19

    params = transformer.init(jax.random.key(args.seed), args.width)
    rng = np.random.default_rng(args.seed)
    b, s = args.batch, args.size
    x = rng.random((b, s, s, 3), dtype=np.float32)
    rec = {"impl": "jaxstyle", "mode": args.mode, "device": jax.devices()[0].device_kind,
           "jax": jax.__version__, "size": s, "batch": b, "iters": args.iters,
           "width": args.width, "params": transformer.num_params(params),
           "compute_dtype": args.dtype}
    if args.mode == "apply":
        fn = jax.jit(lambda p, x: transformer.apply(p, x, jnp.dtype(args.dtype)))
        xs = jnp.asarray(x)
        t0 = time.perf_counter()
        fn(params, xs).block_until_ready()
        rec["compile_s"] = round(time.perf_counter() - t0, 2)

        def call():
            return fn(params, xs)
    else:
        vgg = vgg19.init(jax.random.key(1), vgg19.Preprocessing(False, 1.0, (0.485, 0.456, 0.406),
                                                                (0.229, 0.224, 0.225)),
                         last_layer="relu4_1")
        cfg = Config(loss=Loss(content_layers=train.DEFAULT_CONTENT_LAYERS,
                               style_layers=train.DEFAULT_STYLE_LAYERS, content_weight=1e5,
                               style_weight=1e10, tv_weight=1e-6))
        style = rng.random((1, s, s, 3), dtype=np.float32)
        tl = train.make_loss(vgg, [style], [1.0], losses.LossSpec.from_config(cfg), args.dtype)
        step = train.make_step(tl)
        state = list(train.replicate((params, train.init_optimizer(params, 1e-3))))
        batches = None
        if args.data:
            from jaxstyle import data
            loader = data.Loader(data.list_images(args.data), b, s, args.seed)
            batches = iter(loader)
        waits = []

        def call():
            if batches is not None:
                batch = next(batches)
                waits.append(batch.wait_s)
                images = batch.images
            else:
                images = x
            p, o, m = step(state[0], state[1], train.shard_batch(images))
            state[:] = [p, o]
            return m["loss"]

        t0 = time.perf_counter()
        jax.block_until_ready(call())
        rec["compile_s"] = round(time.perf_counter() - t0, 2)
    for _ in range(args.warmup):
        jax.block_until_ready(call())
    t0 = time.perf_counter()
    for _ in range(args.iters):
        out = call()
    jax.block_until_ready(out)
    ms = 1e3 * (time.perf_counter() - t0) / args.iters
    rec.update(ms_per_call=round(ms, 3), images_per_s=round(1e3 * b / ms, 3))
    if args.mode == "train":
        rec["final_loss"] = float(out)
        if args.data:
            waited = sum(waits[-args.iters:])
            rec["data_wait_fraction"] = round(waited / (ms * args.iters / 1e3), 4)
            loader.close()
    return rec


def _apply_folder(args: argparse.Namespace) -> dict:
    """Whole `jaxstyle apply` (decode + network + encode) on a folder of frames, as users run it."""
    import jax
    import numpy as np

    from jaxstyle import netfile
    from jaxstyle.models import transformer

    frames = sorted(p for p in Path(args.frames).iterdir() if p.is_file())
    with tempfile.TemporaryDirectory() as tmp:
        net = Path(tmp) / "net.safetensors"
        params = jax.tree.map(np.asarray, transformer.init(jax.random.key(0), args.width))
        netfile.save(net, netfile.Net(params, args.width))
        cmd = [sys.executable, "-m", "jaxstyle.cli", "apply", str(net), str(args.frames),
               "-o", str(Path(tmp) / "out"), "--batch-size", str(args.batch), "-q"]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, env=child_env())
        seconds = time.perf_counter() - t0
    return {"impl": "jaxstyle apply (CLI, whole)", "frames": len(frames), "seconds": round(seconds, 2),
            "images_per_s": round(len(frames) / seconds, 3), "exit": done.returncode,
            "note": "includes process start and one compile per frame shape"}


def _child(cmd: list[str]) -> dict:
    done = subprocess.run(cmd, capture_output=True, text=True, env=child_env())
    for line in reversed(done.stdout.splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    last = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"exit {done.returncode}: {last[:300]}", "cmd": " ".join(cmd)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=["apply", "train"], default="apply")
    p.add_argument("--size", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reference", default=DEFAULT_FAST_REFERENCE, help="torch_fast_reference.py")
    p.add_argument("--no-reference", action="store_true")
    p.add_argument("--data", help="train mode: feed steps from this photo folder (data wait)")
    p.add_argument("--frames", help="also time `jaxstyle apply` on this folder of frames")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.size = args.size or (512 if args.mode == "apply" else 256)
    args.batch = args.batch or (1 if args.mode == "apply" else 4)
    if args.worker:
        print(json.dumps(_worker(args)), flush=True)
        return 0
    rows = []
    common = ["--mode", args.mode, "--size", str(args.size), "--batch", str(args.batch),
              "--iters", str(args.iters), "--warmup", str(args.warmup), "--seed", str(args.seed)]
    reference = Path(args.reference)
    if not args.no_reference and reference.is_file() and args.width == 1.0:
        rows.append(_child([sys.executable, str(reference), *common]))
        print(json.dumps(rows[-1]), flush=True)
    ours = _child([sys.executable, "-m", "benchmarks.fast", "--worker", *common,
                   "--width", str(args.width), "--dtype", args.dtype,
                   *(["--data", args.data] if args.data else [])])
    rows.append(ours)
    print(json.dumps(ours), flush=True)
    summary = {"mode": args.mode, "size": args.size, "batch": args.batch}
    if len(rows) == 2 and "ms_per_call" in rows[0] and "ms_per_call" in ours:
        summary["ratio_jaxstyle_over_reference"] = round(ours["ms_per_call"] / rows[0]["ms_per_call"], 3)
    if args.frames:
        summary["apply_folder"] = _apply_folder(args)
    print(json.dumps({"summary": summary}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
