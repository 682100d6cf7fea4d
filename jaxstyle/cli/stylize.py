"""``jaxstyle stylize``: flags (`cli.stylize_flags`) → a `pipeline.Job` (`cli.jobs`, `cli.sweep`)
→ its inputs, loaded once → `pipeline.run_job` with the observers the flags ask for → the files
(`pipeline.Outputs`) and one line saying what was written."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jaxstyle import stylize as stylize_lib
from jaxstyle.cli import jobs, pipeline
from jaxstyle.cli.common import (EXIT_ERROR, EXIT_INTERRUPTED, StopRequest, compile_clock,
                                 enable_compilation_cache, is_out_of_memory, load_network,
                                 out_of_memory_error, warn)
from jaxstyle.cli.observers import Checkpoint, GifFrames, ProgressBar, Snapshots, Watching
from jaxstyle.cli.stylize_flags import add_stylize_parser, config_from_args
from jaxstyle.cli.sweep import sweep_job
from jaxstyle.cli.watch import Watch, open_watch
from jaxstyle.config import Config
from jaxstyle.errors import JaxstyleError


def add_parser(sub: argparse._SubParsersAction) -> None:
    add_stylize_parser(sub).set_defaults(run=run)


def plan(args: argparse.Namespace, cfg: Config) -> pipeline.Job:
    """The job the flags describe, every output checked, before any work."""
    if args.sweep:
        return sweep_job(args, cfg)
    if jobs.is_many(args):
        return jobs.many_images_job(args, cfg)
    return jobs.one_image_job(args, cfg)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    enable_compilation_cache(args)
    # Logs and the live page open before any work: a bad directory or a port in use fails at once.
    watch = open_watch(args, cfg) if args.log_dir or args.web else None
    try:
        stop = StopRequest()
        with stop.on_ctrl_c():  # from here on, Ctrl-C stops at safe points (see `StopRequest`)
            code = run_job(args, cfg, watch, stop)
        if watch is not None and code != EXIT_INTERRUPTED:  # --web-keep waits for a Ctrl-C
            watch.finish()
        return code
    finally:
        if watch is not None:
            watch.close()


def run_job(args: argparse.Namespace, cfg: Config, watch: Watch | None, stop: StopRequest) -> int:
    job = plan(args, cfg)
    if job.kind != "sweep":
        job = jobs.check_job_memory(job, args.batch_size, args.max_memory,
                                    has_guidance=bool(args.style_masks or args.content_map))
    job, inputs = jobs.load_inputs(job, args)
    vgg = load_network(args, args.quiet)
    outputs = pipeline.Outputs(job, args.bit_depth)
    clock = compile_clock()
    observers = observers_for(args, job, inputs, outputs, watch, clock)
    outcome = pipeline.run_job(vgg, job, inputs, outputs, observers, lambda: stop.requested,
                               args.batch_size, is_out_of_memory)
    if outcome.results is None:
        return stopped_early(job, outcome)
    bar = observers[0]
    if job.kind == "one":
        result = outcome.results[0]
        reason = f"{stop_reason(result, job.cfg)}; {clock.seconds:.1f} s making programs"
        bar.close(reason)
        if result.diverged[0]:  # no checkpoint: resuming from where it diverged would diverge again
            raise JaxstyleError(
                f"the loss became NaN or infinite; kept the last finite image in "
                f"{job.problems[0].output}. Lower --style-weight (or --learning-rate with adam) "
                "and run again")
        return _done(args, f"wrote {job.problems[0].output} ({reason})")
    bar.close()
    diverged = [p.name for p, r in zip(job.problems, outcome.results) if r.diverged[0]]
    for name in diverged:
        warn(f"the loss of {name} became NaN or infinite; kept its last finite image"
             + (". Lower --style-weight" if job.kind == "many" else ""))
    if job.kind == "sweep":
        files = [p.output for p in job.problems]
        _done(args, f"wrote {job.sheet.path} ({len(files)} cells), {files[0].name} … "
                    f"{files[-1].name} and {job.sheet.index.name}")
        return EXIT_ERROR if diverged else 0
    converged = sum(bool(r.converged is not None and r.converged[0]) for r in outcome.results)
    skipped = job.skipped
    _done(args, f"wrote {len(job.problems)} image(s) to {job.problems[0].output.parent} "
                f"({converged} converged before --num-iterations {job.cfg.schedule.num_iterations})"
                + (f"; skipped {len(skipped)}: {', '.join(map(str, skipped))}" if skipped else ""))
    return EXIT_ERROR if skipped or diverged else 0


def observers_for(args, job: pipeline.Job, inputs: pipeline.Inputs, outputs: pipeline.Outputs,
                  watch: Watch | None, clock) -> list[pipeline.Observer]:
    """The side effects the flags ask for; the progress bar first."""
    desc = {"one": "stylize", "sweep": f"sweep {len(job.problems)}",
            "many": f"stylize {len(set(p.content for p in job.problems))}×{len(job.groups)}"}
    found: list[pipeline.Observer] = [
        ProgressBar(len(job.problems) * job.cfg.schedule.total_iterations, desc[job.kind],
                    args.quiet, args.print_iter, show_terms=job.kind == "one")]
    if watch is not None:
        watch.start([p.name for p in job.problems],
                    {"sweep": job.swept} if job.swept is not None else None)
        found.append(Watching(watch, lambda: clock.seconds,
                              tuple(k for k in (args.print_iter, args.save_iter) if k)))
    if job.kind == "one":
        found.append(Snapshots(outputs, job.cfg, args.save_iter, inputs.made_from))
        found.append(Checkpoint(outputs, job.cfg, inputs.made_from))
        if args.gif:
            found.append(GifFrames(outputs, Path(args.gif), args.gif_every))
    return found


def stopped_early(job: pipeline.Job, outcome: pipeline.Outcome) -> int:
    """After Ctrl-C or running out of memory, each started problem's latest image was written
    (and, for one image interrupted, its resume checkpoint, by `observers.Checkpoint`)."""
    written = outcome.written
    wrote = ("" if not written else f"wrote the latest image to {written[0]}" if len(written) == 1
             else f"wrote the latest images of {len(written)} of {len(job.problems)} outputs "
                  f"(in {written[0].parent})")
    if outcome.error is not None:
        # A larger scale of a coarse-to-fine run can run out after a smaller one finished: keep
        # that image. No checkpoint: resuming with the same settings would run out again.
        raise out_of_memory_error(outcome.error, f"; {wrote}" if wrote else "") from outcome.error
    if not written:
        print("jaxstyle: interrupted before the first image; nothing written", file=sys.stderr)
    else:
        resume = "; continue with --resume" if job.kind == "one" else ""
        print(f"jaxstyle: interrupted; {wrote}{resume}", file=sys.stderr)
    return EXIT_INTERRUPTED


def stop_reason(result: stylize_lib.Result, cfg: Config, i: int = 0) -> str:
    """Why problem ``i`` of a run stopped, in a few words for the progress bar and the log."""
    schedule = cfg.schedule
    steps = int(result.steps[i]) if result.steps is not None else schedule.num_iterations
    if result.diverged[i]:
        return f"stopped at iteration {steps}: the loss became NaN or infinite"
    if result.converged is not None and result.converged[i]:
        rules = ([f"the 8-bit image changed by less than {schedule.stop_change:g} levels"]
                 if schedule.stop_change > 0 else [])
        rules += ([f"the loss improved by less than {schedule.stop_tolerance:g}"]
                  if schedule.stop_tolerance > 0 else [])
        return (f"converged at iteration {steps} of {schedule.num_iterations}: "
                f"{' or '.join(rules)} over the last {schedule.stop_window} iterations")
    return f"stopped at --num-iterations {schedule.num_iterations}"


def _done(args: argparse.Namespace, line: str) -> int:
    print(line, file=sys.stderr if args.quiet else sys.stdout)
    return 0
