"""What ``--style-loss w2`` costs per optimizer step against the Gram loss, side by side in one
process: the same compiled L-BFGS step (`optimize.run_steps`, the default five style layers and
relu4_2 content, random torchvision-convention VGG-19), timed alternately so that both see the
same machine state. Prints one JSON line per (size, style loss) and a summary with the ratio.

  python -m benchmarks.style_loss --sizes 256,512 --steps 10 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxstyle import losses, optimize, sources
from jaxstyle.config import Config
from jaxstyle.models import vgg19


def _runner(vgg, size: int, style_loss: str, seed: int):
    """A function running ``steps`` L-BFGS steps from a fixed state; returns seconds taken."""
    cfg = Config().replace(style_loss=style_loss)
    spec = losses.LossSpec.from_config(cfg)
    net = optimize.prepared(vgg, spec)
    rng = np.random.default_rng(seed)
    content = jnp.asarray(rng.random((1, size, size, 3), dtype=np.float32))
    style = jnp.asarray(rng.random((1, size, size, 3), dtype=np.float32))
    targets = optimize.problem_targets(losses.targets(net, content, [style], jnp.ones(1), spec), 1)
    method = optimize.Method("lbfgs", 1.0, 100)
    start = optimize.init_state(content, method)

    def run(steps: int) -> float:
        state = jax.tree.map(jnp.copy, start)  # run_steps donates its state
        t0 = time.perf_counter()
        state = optimize.run_steps(state, steps, net, targets, spec, method)
        jax.block_until_ready(state.image)
        return time.perf_counter() - t0

    return run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="256,512", help="image sides (default 256,512)")
    p.add_argument("--steps", type=int, default=10, help="L-BFGS steps per timed call (default 10)")
    p.add_argument("--rounds", type=int, default=3, help="alternating timed calls per loss (default 3)")
    args = p.parse_args(argv)
    vgg = vgg19.init(jax.random.key(0), sources.TORCHVISION)
    summary = []
    for size in (int(s) for s in args.sizes.split(",")):
        runs = {name: _runner(vgg, size, name, seed=1) for name in ("gram", "w2")}
        times: dict[str, list[float]] = {name: [] for name in runs}
        first_call = {}
        for name, run in runs.items():
            first_call[name] = run(1)  # compiles (the step count is a runtime value)
        for _ in range(args.rounds):
            for name, run in runs.items():
                times[name].append(run(args.steps) / args.steps)
        row = {"size": size}
        for name in runs:
            best = min(times[name])
            rec = {"size": size, "style_loss": name, "ms_per_step": round(1e3 * best, 1),
                   "ms_per_step_all": [round(1e3 * t, 1) for t in times[name]],
                   "first_call_s": round(first_call[name], 2),
                   "device": jax.devices()[0].device_kind}
            print(json.dumps(rec), flush=True)
            row[name + "_ms"] = rec["ms_per_step"]
        row["w2_over_gram"] = round(row["w2_ms"] / row["gram_ms"], 3)
        summary.append(row)
    print(json.dumps({"summary": summary}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
