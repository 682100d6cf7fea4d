"""The multi-host path of `batch.stylize_many`: two processes under `jax.distributed`, one machine.

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
    cfg = Config(image_size=24, num_iterations=4, optimizer="adam", init="noise", seed=3,
                 style_layers=("relu1_1", "relu2_1"), content_layers=("relu2_1",))
    return vgg, contents, style, cfg


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))  # the coordinator binds every address, so probe them all
        return s.getsockname()[1]


def _run_workers(tmp_path: Path, attempt: int) -> list[tuple[int, str, str]]:
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
                command = [sys.executable, "-c", WORKER, str(port), str(i), str(HERE)]
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


def test_two_processes_equal_each_image_alone(tmp_path):
    runs = _run_workers(tmp_path, 0)
    if any(PORT_IN_USE in err for _, _, err in runs):  # the port was taken after we probed it
        runs = _run_workers(tmp_path, 1)
    report = "\n".join(f"--- process {i}: exit {rc}\n{out[-2000:]}\n{err[-4000:]}"
                       for i, (rc, out, err) in enumerate(runs))
    assert all(rc == 0 for rc, _, _ in runs), report
    records = [json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
               for _, out, _ in runs]

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
        np.testing.assert_allclose(np.asarray(image, np.float32), alone.images, atol=2e-4)
