"""``jaxstyle train STYLE... --data DIR -o NET.safetensors``: learns a feed-forward style network
(`jaxstyle.train`) on a folder of photos (`jaxstyle.data`), with a progress bar, checkpoints,
``--resume``, Ctrl-C and a NaN guard; the result is a NET file (`jaxstyle.netfile`)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

from jaxstyle import data, image_io, losses, netfile
from jaxstyle import train as train_lib
from jaxstyle.batch import device_mesh
from jaxstyle.cli import resume
from jaxstyle.cli.common import (EXIT_INTERRUPTED, StopRequest, add_weights_flags, csv,
                                 enable_compilation_cache, load_network, non_negative_float,
                                 positive, progress_bar)
from jaxstyle.config import DTYPES, NORMALIZATIONS, Config
from jaxstyle.errors import JaxstyleError
from jaxstyle.files import atomic_write, check_output_file, check_outputs
from jaxstyle.logs import LogWriter
from jaxstyle.models import transformer

CHECKPOINT_SUFFIX = ".ckpt.npz"
# fast-neural-style's defaults (content 1, style 5) on caffe-convention VGG weights (the default
# Keras file); with torchvision weights use the PyTorch examples' 1e5 and 1e10.
CONTENT_WEIGHT, STYLE_WEIGHT, TV_WEIGHT = 1.0, 5.0, 1e-6


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a feed-forward style network on a folder of photos",
                       description="Learn a style once (Johnson et al. 2016 with instance norm): "
                                   "the network then stylizes a photo in one pass (`jaxstyle "
                                   "apply`). Loss flags mean what they mean for `stylize`.")
    p.add_argument("style", nargs="+", help="style image(s); several are blended")
    p.add_argument("--data", required=True, metavar="DIR",
                   help="folder of training photos, searched recursively (e.g. COCO train2014)")
    p.add_argument("-o", "--output", default="net.safetensors", help="NET file to write")
    add_weights_flags(p)
    g = p.add_argument_group("loss (defaults for training: content relu2_2, style relu1_1..relu4_1)")
    g.add_argument("--content-weight", type=non_negative_float, default=CONTENT_WEIGHT)
    g.add_argument("--style-weight", type=non_negative_float, default=STYLE_WEIGHT)
    g.add_argument("--tv-weight", type=non_negative_float, default=TV_WEIGHT)
    g.add_argument("--temporal-weight", type=non_negative_float, default=0.0, metavar="W",
                   help="stability under motion (video): W times the squared difference between "
                        "the output of a randomly moved photo and the moved output, on [0,1] "
                        "pixels (train.Motion; default 0: off)")
    g.add_argument("--content-layers", type=csv(str), default=train_lib.DEFAULT_CONTENT_LAYERS,
                   metavar="L1,L2", help=f"default {','.join(train_lib.DEFAULT_CONTENT_LAYERS)}")
    g.add_argument("--style-layers", type=csv(str), default=train_lib.DEFAULT_STYLE_LAYERS,
                   metavar="L1,L2", help=f"default {','.join(train_lib.DEFAULT_STYLE_LAYERS)}")
    g.add_argument("--content-layer-weights", type=csv(float), metavar="W1,W2")
    g.add_argument("--style-layer-weights", type=csv(float), metavar="W1,W2")
    g.add_argument("--style-blend-weights", type=csv(float), metavar="W1,W2")
    g.add_argument("--normalization", choices=NORMALIZATIONS, default="neural-style")
    g.add_argument("--style-scale", type=positive(float), default=1.0,
                   help="style images' long side as a multiple of --image-size (default 1)")
    g.add_argument("--style-size", type=positive(int), metavar="PX",
                   help="long side of the style images in pixels (instead of --style-scale)")
    g.add_argument("--pooling", choices=("max", "avg"), default="max")
    g = p.add_argument_group("training")
    g.add_argument("--image-size", type=positive(int), default=256,
                   help="training crops are IMAGE_SIZE squared (default 256)")
    g.add_argument("--batch-size", type=positive(int), default=4,
                   help="images per step, split over all devices (default 4)")
    g.add_argument("--steps", type=positive(int), default=40000,
                   help="optimizer steps (default 40000: two epochs of COCO train2014 at batch 4)")
    g.add_argument("--learning-rate", type=positive(float), default=1e-3, help="Adam (default 1e-3)")
    g.add_argument("--seed", type=int, default=0, help="initial weights and data order")
    g.add_argument("--width", type=positive(float), default=1.0,
                   help="channel multiplier of the network (0.5: the half-width, faster nets)")
    g.add_argument("--compute-dtype", choices=DTYPES, default="float32")
    g.add_argument("--workers", type=positive(int), help="image decoding threads (default: CPUs, <= 8)")
    g.add_argument("--checkpoint-every", type=positive(int), metavar="N",
                   help=f"write OUTPUT{CHECKPOINT_SUFFIX} every N steps (also written on Ctrl-C)")
    g.add_argument("--resume", action="store_true",
                   help=f"continue from OUTPUT{CHECKPOINT_SUFFIX} (same data, seed and settings)")
    g.add_argument("--change-temporal-weight", action="store_true",
                   help="with --resume: continue the checkpoint under a different "
                        "--temporal-weight (e.g. fine-tune a trained network for video); the NET "
                        "file records from which step each weight applied")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    g.add_argument("--log-dir", metavar="DIR",
                   help="TensorBoard event files (the loss terms every --print-iter steps, the "
                        "settings) and DIR/metrics.jsonl, under the run name NET's stem")
    g.add_argument("--print-iter", type=positive(int), default=10, metavar="N",
                   help="log every N steps (with --log-dir; default 10)")
    p.set_defaults(run=run)


def config_from_args(args: argparse.Namespace) -> Config:
    """The loss settings as a `Config` (validated like `stylize`'s)."""
    style_scale = args.style_size / args.image_size if args.style_size else args.style_scale
    return Config().replace(
        content_layers=tuple(args.content_layers), style_layers=tuple(args.style_layers),
        content_layer_weights=args.content_layer_weights,
        style_layer_weights=args.style_layer_weights,
        content_weight=args.content_weight, style_weight=args.style_weight,
        tv_weight=args.tv_weight, style_blend_weights=args.style_blend_weights,
        normalization=args.normalization, image_size=args.image_size,
        style_scale=style_scale, seed=args.seed, pooling=args.pooling,
        compute_dtype=args.compute_dtype, learning_rate=args.learning_rate)


def loss_metadata(cfg: Config, args: argparse.Namespace) -> dict:
    keys = ("content_layers", "style_layers", "content_layer_weights", "style_layer_weights",
            "content_weight", "style_weight", "tv_weight", "style_blend_weights", "normalization",
            "image_size", "style_scale", "pooling", "learning_rate", "seed", "compute_dtype")
    settings = cfg.flat()
    meta = {k: settings[k] for k in keys}
    meta.update(batch_size=args.batch_size, width=args.width, weights=str(args.weights or "default"))
    # The stability term (`train.Motion`) is part of what the network learnt: `netfile.temporal`.
    meta.update(temporal_weight=float(args.temporal_weight),
                temporal_motion=dataclasses.asdict(train_lib.Motion()))
    return json.loads(json.dumps(meta))  # tuples -> lists, as they come back from the file


TEMPORAL_KEYS = ("temporal_weight", "temporal_motion", "temporal_weight_history")


def check_temporal(path: Path, saved: dict, meta: dict, change: bool, step: int) -> dict:
    """``meta`` for a run resumed from the checkpoint settings ``saved`` at ``step``: the same
    temporal weight, or with ``change`` (--change-temporal-weight) the new one, its history
    recorded. A different weight without ``change`` is a one-line error."""
    old = saved.get("temporal_weight")
    if change:
        history = saved.get("temporal_weight_history") or [[0, old]]
        if old != meta["temporal_weight"]:
            history = [*history, [step, meta["temporal_weight"]]]
        return {**meta, "temporal_weight_history": history} if len(history) > 1 else meta
    if old is None:
        raise JaxstyleError(f"--resume: checkpoint '{path}' has no record of its --temporal-weight "
                            "(written before it was recorded); add --change-temporal-weight to "
                            "continue it with --temporal-weight "
                            f"{meta['temporal_weight']:g}, or drop --resume")
    if old != meta["temporal_weight"]:
        raise JaxstyleError(f"--resume: checkpoint '{path}' was trained with --temporal-weight "
                            f"{old:g}, not {meta['temporal_weight']:g}; give --temporal-weight "
                            f"{old:g}, or add --change-temporal-weight to continue it with the "
                            "new weight")
    return {**meta, **{k: saved[k] for k in ("temporal_weight_history",) if k in saved}}


# ----------------------------------------------------------------------------------------------
# Checkpoints: parameters, optimizer state, step, data position, seed (the data order's RNG), the
# settings and the style images it learns (`resume.inputs_record`), in one .npz written atomically.


def save_checkpoint(path: Path, params, opt_state, step: int, position: int, meta: dict,
                    inputs: dict) -> None:
    leaves = [np.asarray(x) for x in jax.tree.leaves((params, opt_state))]
    arrays = {f"leaf{i:04d}": a for i, a in enumerate(leaves)}
    atomic_write(path, lambda f: np.savez(f, step=step, position=position,
                                          settings=json.dumps(meta), inputs=json.dumps(inputs),
                                          **arrays))


def load_checkpoint(path: Path, params, opt_state, meta: dict, inputs: dict,
                    change_temporal: bool = False):
    """(params, opt_state, step, position, meta) from ``path``; the trees give the structure.
    Refused (the file kept) when its settings or style images are not ``meta``'s and ``inputs``'
    (the temporal weight may differ with ``change_temporal``: `check_temporal`); the returned
    ``meta`` carries the temporal weight's history."""
    if not path.exists():
        raise JaxstyleError(f"--resume: no checkpoint '{path}' (one is written by "
                            "--checkpoint-every and on Ctrl-C); run without --resume")
    treedef = jax.tree.structure((params, opt_state))
    try:
        with np.load(path) as z:
            saved = json.loads(str(z["settings"]))
            saved_inputs = json.loads(str(z["inputs"]))
            if not isinstance(saved_inputs.get("styles"), list):
                raise ValueError("no record of its style images")
            leaves = [z[f"leaf{i:04d}"] for i in range(treedef.num_leaves)]
            step, position = int(z["step"]), int(z["position"])
        expected = [np.shape(x) for x in jax.tree.leaves((params, opt_state))]
        if [leaf.shape for leaf in leaves] != expected:
            raise ValueError("the network's shapes differ")
    except Exception as e:
        raise JaxstyleError(f"--resume: checkpoint '{path}' is damaged or from another network "
                            f"({' '.join(str(e).split())[:120]}); delete it or use the same --width")
    meta = check_temporal(path, saved, meta, change_temporal, step)
    for key in sorted(set(saved) | set(meta)):
        if key in TEMPORAL_KEYS and (change_temporal or key != "temporal_motion"):
            continue  # checked above
        if saved.get(key) != meta.get(key):
            raise JaxstyleError(f"--resume: checkpoint '{path}' was made with a different "
                                f"{key.replace('_', '-')} ({saved.get(key)!r}); use the same "
                                "flags or drop --resume")
    resume.check_inputs(path, {**saved_inputs, "content": []}, {**inputs, "content": []})
    params, opt_state = jax.tree.unflatten(treedef, leaves)
    return params, opt_state, step, position, meta


# ----------------------------------------------------------------------------------------------


def check_output(output: Path, args: argparse.Namespace, files: list[Path]) -> None:
    """Before any work: the NET file and its checkpoint can be written and replace no input (the
    VGG weights, a style image, a training photo)."""
    if output.suffix != ".safetensors":
        raise JaxstyleError(f"the network file '{output}' must end in .safetensors")
    inputs = [args.weights, *args.style]
    check_output_file(output, inputs, example="net.safetensors")
    checkpoint = output.with_name(output.name + CHECKPOINT_SUFFIX)
    # A photo can be an output only through a link to it; stat them all only then.
    photos = files if output.exists() or checkpoint.exists() else []
    check_outputs({"-o": output, "the checkpoint": checkpoint}, [*inputs, *photos])


def run(args: argparse.Namespace) -> int:
    if args.change_temporal_weight and not args.resume:
        raise JaxstyleError("--change-temporal-weight continues a checkpoint: use it with --resume")
    cfg = config_from_args(args)
    output = Path(args.output)
    files = data.list_images(args.data)
    check_output(output, args, files)
    mesh = device_mesh()
    devices = mesh.devices.size
    if args.batch_size % devices:
        raise JaxstyleError(f"--batch-size {args.batch_size} does not split over {devices} devices; "
                            f"use a multiple of {devices}")
    if len(files) < args.batch_size:
        raise JaxstyleError(f"{len(files)} image file(s) under '{args.data}', fewer than one batch "
                            f"of {args.batch_size}; add photos or lower --batch-size")
    log = LogWriter(args.log_dir) if args.log_dir else None  # an unwritable DIR: before any work
    # From the first compile on, Ctrl-C only asks the run to stop at a safe point: a
    # KeyboardInterrupt raised inside a JAX call can crash the interpreter's teardown. And the
    # step donates params and opt_state: an interrupt between its dispatch and the assignment
    # of its results would leave nothing valid to save. A second Ctrl-C stops at once.
    stop = StopRequest()
    with stop.on_ctrl_c():
        return train(args, cfg, output, files, mesh, log, stop)


def train(args: argparse.Namespace, cfg: Config, output: Path, files: list[Path], mesh,
          log: LogWriter | None, stop: StopRequest) -> int:
    """The training run after `run`'s checks; Ctrl-C sets ``stop.requested``."""
    enable_compilation_cache(args)
    style_long = max(16, round(cfg.loss.style_scale * cfg.schedule.image_size))
    styles = [image_io.load_image(s, style_long, role="style image")[None] for s in args.style]
    blend = cfg.loss.blend_weights(len(styles))
    checkpoint = output.with_name(output.name + CHECKPOINT_SUFFIX)
    meta = loss_metadata(cfg, args)
    made_from = resume.inputs_record([], [], args.style, styles)

    params = transformer.init(jax.random.key(args.seed), args.width)
    opt_state = train_lib.init_optimizer(params, args.learning_rate)
    step, position = 0, 0
    if args.resume:
        params, opt_state, step, position, meta = load_checkpoint(
            checkpoint, params, opt_state, meta, made_from, args.change_temporal_weight)
        if step >= args.steps:
            raise JaxstyleError(f"--resume: checkpoint '{checkpoint}' is at step {step}, not before "
                                f"--steps {args.steps}; raise --steps to continue it")

    vgg = load_network(args, args.quiet).with_pooling(cfg.network.pooling)
    spec = losses.LossSpec.from_config(cfg)
    tl = train_lib.make_loss(vgg, styles, blend, spec, cfg.network.compute_dtype,
                             temporal_weight=args.temporal_weight)
    step_fn = train_lib.make_step(tl, mesh)
    params, opt_state = train_lib.replicate((params, opt_state), mesh)
    styles_meta = [Path(s).name for s in args.style]

    def write_net(params, steps: int) -> None:
        if jax.process_index() == 0:
            netfile.save(output, netfile.Net(jax.tree.map(np.asarray, params), args.width,
                                             tuple(styles_meta), meta, steps))

    def write_checkpoint() -> None:
        if jax.process_index() == 0:
            save_checkpoint(checkpoint, params, opt_state, step, position, meta, made_from)

    if log is not None:
        log.text(output.stem, "settings", "```\n" + json.dumps(
            {**meta, "styles": styles_meta, "steps": args.steps, "batch_size": args.batch_size,
             "learning_rate": args.learning_rate, "width": args.width}, indent=1) + "\n```")
    bar = progress_bar(args.steps, "step", args.quiet, desc="train", initial=step)
    loader = data.Loader(files, args.batch_size, args.image_size, args.seed, position, args.workers)
    started, images_done, waited = time.perf_counter(), 0, 0.0
    first_step = step
    try:
        for batch in loader:
            if stop.requested:
                break
            params, opt_state, m = step_fn(params, opt_state,
                                           train_lib.shard_batch(batch.images, mesh))
            m = {k: float(v) for k, v in m.items()}  # waits for the step
            if not m["finite"]:  # the step returned the old params and opt_state unchanged
                bar.close()
                write_net(params, step)
                raise JaxstyleError(
                    f"the loss became NaN or infinite at step {step + 1}; kept the last finite "
                    f"network in {output}. Lower --style-weight (or --learning-rate) and run "
                    "again")
            step, position = step + 1, batch.position
            images_done += len(batch.images)
            waited += batch.wait_s
            elapsed = time.perf_counter() - started
            bar.update(1)
            bar.set_postfix(loss=f"{m['loss']:.4g}", content=f"{m['content']:.3g}",
                            style=f"{m['style']:.3g}", tv=f"{m['tv']:.3g}",
                            img_s=f"{images_done / elapsed:.1f}",
                            data_wait=f"{waited / elapsed:.0%}", refresh=False)
            if log is not None and (step % args.print_iter == 0 or step >= args.steps):
                log.scalars(output.stem, step,
                            {k: m[k] for k in ("loss", "content", "style", "tv")},
                            {"images_per_s": images_done / elapsed,
                             "data_wait": waited / elapsed})
            if args.checkpoint_every and step % args.checkpoint_every == 0:
                write_checkpoint()
            if step >= args.steps or stop.requested:
                break
        if stop.requested and step == first_step:  # Ctrl-C before a step was done
            bar.close()
            print("jaxstyle: interrupted before the first step; nothing written", file=sys.stderr)
            return EXIT_INTERRUPTED
        if stop.requested and step < args.steps:
            bar.close()
            loader.close()
            write_checkpoint()
            write_net(params, step)
            print(f"jaxstyle: interrupted at step {step}; wrote {output} and {checkpoint}; "
                  "continue with --resume", file=sys.stderr)
            return EXIT_INTERRUPTED
    finally:
        loader.close()
        if log is not None:
            log.close()
    bar.close()
    write_net(params, step)
    if not args.checkpoint_every:
        checkpoint.unlink(missing_ok=True)
    if loader.skipped:
        print(f"jaxstyle: skipped {len(loader.skipped)} unreadable file(s) (first: "
              f"{loader.skipped[0]})", file=sys.stderr)
    print(f"wrote {output} ({step} steps)", file=sys.stderr if args.quiet else sys.stdout)
    return 0
