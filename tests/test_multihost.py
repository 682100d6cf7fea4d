"""The multi-host paths of `batch.stylize_many` and of the fast-network training step: two
processes under `jax.distributed`, one machine.

Each process has one CPU device, so the default mesh spans two devices of two processes: inputs are
made global with `jax.make_array_from_callback`, every array of the run is split across the
processes, and results come back to every host through `multihost_utils.process_allgather`.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxstyle import stylize, vgg19
from jaxstyle.config import Config

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TIMEOUT_S = 300
PORT_IN_USE = "Failed to add port"  # process 0's coordinator could not bind its port, and died

WORKER = textwrap.dedent("""
    import json, sys
    import jax
    port, process_id = sys.argv[1], int(sys.argv[2])
    jax.config.update("jax_num_cpu_devices", 1)  # one device per process: the mesh spans both
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # the default in jax 0.10
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                               process_id=process_id, initialization_timeout=60)
    from jaxstyle import batch, optimize
    sys.path.insert(0, sys.argv[3])
    from test_multihost import setup
    vgg, contents, style, cfg = setup()
    layouts = []
    def record_layout(p):
        image = p.progress.state.image
        shards = [s.data.shape[0] for s in image.addressable_shards]
        # Progress.images gathers the whole batch on every host (a collective: both call it).
        layouts.append([image.is_fully_addressable, shards, list(p.progress.images.shape)])
    # 3 images, batches of 2: a full batch and one padded with a repeat of its first image.
    results = batch.stylize_many(vgg, contents, [style], cfg, batch_size=2,
                                 on_progress=record_layout, every=(2,))
    print(json.dumps({"process": jax.process_index(), "processes": jax.process_count(),
                      "devices": len(jax.devices()), "local_devices": jax.local_device_count(),
                      "programs": optimize.run_steps._cache_size(), "layouts": layouts,
                      "images": [r.images.tolist() for r in results],
                      "diverged": [bool(r.diverged[0]) for r in results]}))
    jax.distributed.shutdown()
""")


def setup():
    """The network, contents, style and configuration, the same in every process."""
    caffe = vgg19.Preprocessing(True, 255.0, (103.939, 116.779, 123.68))
    vgg = vgg19.init(jax.random.key(0), caffe, last_layer="relu2_1")
    rng = np.random.default_rng(0)
    contents = [rng.random((24, 24, 3), dtype=np.float32) for _ in range(3)]
    style = rng.random((24, 24, 3), dtype=np.float32)
    cfg = Config().replace(image_size=24, num_iterations=4, optimizer="adam", init="noise", seed=3,
                           style_layers=("relu1_1", "relu2_1"), content_layers=("relu2_1",))
    return vgg, contents, style, cfg


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))  # the coordinator binds every address, so probe them all
        return s.getsockname()[1]


def _run_workers(tmp_path: Path, attempt: int, worker: str = WORKER) -> list[tuple[int, str, str]]:
    """Starts both processes; returns (returncode, stdout, stderr) of each. Kills both on a timeout
    or as soon as one fails (the other would wait for it in a collective)."""
    port = _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    env.pop("XLA_FLAGS", None)  # no simulated devices: one per process
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # two processes would write the same entries at once
    logs = [(tmp_path / f"{attempt}-{i}.out", tmp_path / f"{attempt}-{i}.err") for i in range(2)]
    procs = []
    try:
        for i, (out, err) in enumerate(logs):
            with open(out, "w") as o, open(err, "w") as e:
                command = [sys.executable, "-c", worker, str(port), str(i), str(HERE)]
                procs.append(subprocess.Popen(command, env=env, stdout=o, stderr=e, cwd=REPO))
        deadline = time.monotonic() + TIMEOUT_S
        while any(p.poll() is None for p in procs):
            if time.monotonic() > deadline or any(p.poll() not in (None, 0) for p in procs):
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    return [(p.returncode, out.read_text(), err.read_text()) for p, (out, err) in zip(procs, logs)]


def _records(tmp_path: Path, worker: str = WORKER) -> tuple[list[dict], str]:
    """Runs both processes (again on a fresh port if the first was taken); their last JSON lines."""
    runs = _run_workers(tmp_path, 0, worker)
    if any(PORT_IN_USE in err for _, _, err in runs):  # the port was taken after we probed it
        runs = _run_workers(tmp_path, 1, worker)
    report = "\n".join(f"--- process {i}: exit {rc}\n{out[-2000:]}\n{err[-4000:]}"
                       for i, (rc, out, err) in enumerate(runs))
    assert all(rc == 0 for rc, _, _ in runs), report
    return [json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
            for _, out, _ in runs], report


@pytest.mark.slow
def test_two_processes_equal_each_image_alone(tmp_path):
    records, report = _records(tmp_path)

    assert sorted(r["process"] for r in records) == [0, 1], report
    for r in records:
        assert (r["processes"], r["devices"], r["local_devices"]) == (2, 2, 1), report
        # Every chunk's images were split across the two processes, one problem on each device.
        # Progress.images still gives each host the whole batch of two.
        assert r["layouts"] and all(layout == [False, [1], [2, 24, 24, 3]]
                                    for layout in r["layouts"]), report
        assert r["programs"] == 1, report  # both batches, all chunks: one compiled program
        assert not any(r["diverged"])
    # Every host holds every result, and they are the same on both.
    assert records[0]["images"] == records[1]["images"]

    vgg, contents, style, cfg = setup()
    assert len(records[0]["images"]) == len(contents)
    for content, image in zip(contents, records[0]["images"]):
        alone = stylize.stylize_batch(vgg, content[None], [style], cfg)
        # Across processes the problems are vmapped (one per device), alone they run in the CPU's
        # sequential loop: the same mathematics, rounded differently (~1e-7). Bound: as in
        # test_batch's sharded test, a one-ulp change of the inputs moves such a few-step L-BFGS
        # run's images by ~5e-6; 2e-4 is 40x that.
        np.testing.assert_allclose(np.asarray(image, np.float32), alone.images, atol=2e-4)


TRAIN_WORKER = textwrap.dedent("""
    import json, sys
    import jax
    port, process_id = sys.argv[1], int(sys.argv[2])
    jax.config.update("jax_num_cpu_devices", 1)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                               process_id=process_id, initialization_timeout=60)
    import numpy as np
    from jax.experimental import multihost_utils
    sys.path.insert(0, sys.argv[3])
    from test_multihost import train_steps
    params, batch, first = train_steps()
    shards = [s.data.shape[0] for s in batch.addressable_shards]
    params = multihost_utils.process_allgather(params, tiled=True)  # replicated: the same on both
    print(json.dumps({"process": jax.process_index(), "devices": len(jax.devices()),
                      "batch_shards": shards, "batch_global": list(batch.shape),
                      "params": [np.asarray(x).tolist() for x in jax.tree.leaves(params)],
                      "first": {k: np.asarray(x).tolist() for k, x in first.items()}}))
    jax.distributed.shutdown()
""")


def train_steps():
    """Three training steps of a tiny network on fixed batches of 4, over the default mesh (every
    device of every process); the same in every process. Returns (params, the last batch, the
    first step's {"loss", "mu", "nu"}: its loss and Adam's moments of its gradient, flat)."""
    from jaxstyle import losses, train
    from jaxstyle.models import transformer
    caffe = vgg19.Preprocessing(True, 255.0, (103.939, 116.779, 123.68))
    vgg = vgg19.init(jax.random.key(0), caffe, last_layer="relu1_2")
    rng = np.random.default_rng(0)
    photos = rng.random((12, 16, 16, 3), dtype=np.float32)
    cfg = Config().replace(content_layers=("relu1_2",), style_layers=("relu1_1",),
                           content_weight=0.05, style_weight=1.0, tv_weight=1e-6)
    tl = train.make_loss(vgg, [rng.random((1, 16, 16, 3), dtype=np.float32)], [1.0],
                         losses.LossSpec.from_config(cfg))
    params = transformer.init(jax.random.key(1), 0.25)
    state = train.replicate((params, train.init_optimizer(params, 1e-2)))
    step = train.make_step(tl)
    for i in range(3):
        batch = train.shard_batch(photos[4 * i:4 * i + 4])  # every host passes the whole batch
        params, opt_state, metrics = step(*state, batch)
        state = (params, opt_state)
        if i == 0:
            from jax.experimental import multihost_utils
            moments = multihost_utils.process_allgather(opt_state, tiled=True)
            first = {m: np.concatenate([np.ravel(x) for k, x in jax.tree_util.tree_leaves_with_path(
                         moments) if f".{m}[" in jax.tree_util.keystr(k)]) for m in ("mu", "nu")}
            first["loss"] = np.float32(metrics["loss"])
    return params, batch, first


@pytest.mark.slow
def test_training_over_two_processes_equals_one_process(tmp_path):
    records, report = _records(tmp_path, TRAIN_WORKER)
    for r in records:
        # The batch of 4 was split over the two processes' devices, two photos each.
        assert (r["devices"], r["batch_shards"], r["batch_global"]) == (2, [2], [4, 16, 16, 3]), report
    for a, b in zip(records[0]["params"], records[1]["params"]):
        np.testing.assert_array_equal(a, b)  # replicated parameters stay identical on every host
    _, _, first = train_steps()  # this process alone: one device
    assert len(jax.devices()) == 1
    # The first step, from the same parameters: its loss and gradient (Adam's moments) over two
    # hosts equal one process's. Not the parameters after three steps: a gradient entry at
    # rounding-noise level (a conv bias before an instance norm; by chance a kernel entry) gets a
    # full Adam step whose sign differs between splits. A step on the wrong data, or gradients
    # not summed over the processes, changes the moments by O(1).
    np.testing.assert_allclose(records[0]["first"]["loss"], first["loss"], rtol=1e-4)
    for m in ("mu", "nu"):
        error = np.abs(np.asarray(records[0]["first"][m], np.float32) - first[m]).max()
        assert error < 1e-4 * np.abs(first[m]).max(), (m, error, np.abs(first[m]).max())
