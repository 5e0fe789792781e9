r"""Run, resume or submit a sweep, and report its results.

  openvision2-sweep --config=configs/sweeps/demo_scaling.py --root=/tmp/ov2-sweep [--parallel=N] [--dry-run]
  openvision2-sweep --report --root=/tmp/ov2-sweep          # -> results.csv, scaling.png
  openvision2-sweep --config=... --root=gs://b/sweep --backend=tpu --tpu=NAME --zone=ZONE [--project=P]
  openvision2-sweep --config=... --root=/shared/sweep --backend=slurm [--sbatch-args='--nodes=4']

(`python tools/sweep.py ...` in a checkout is the same command.) Every point is the plain
trainer command (see openvision2/sweeps/grid.py), run from the repository root of a checkout,
else from the current directory. Points whose workdir shows them finished are skipped, so
rerunning the same command resumes the sweep: the trainer itself resumes an
interrupted point from its latest checkpoint.

- local: up to --parallel points at once as subprocesses, each logging to
  <workdir>/train.log. Ctrl-C or SIGTERM is forwarded to the points as SIGTERM
  (the trainer checkpoints and exits), a second one kills them. A failed point
  does not stop the others; the exit code is non-zero if any point did not finish.
- tpu: each point through launch/tpu_pod.sh on the one slice, one after another; the root is
  usually gs://, which every worker of the slice reads and writes.
- slurm: each point submitted with sbatch launch/slurm_gpu.sbatch; job ids are
  printed and kept in <workdir>/slurm_job_id so a rerun does not resubmit a
  point that is still queued or running.
The tpu and slurm backends call the scripts in launch/, so they run from a checkout.

Example: a 6-point sweep of the demo on this machine, two points at a time, then its report:

  openvision2-sweep --config=configs/sweeps/demo_scaling.py --root=/tmp/ov2-sweep --parallel=2
  openvision2-sweep --report --root=/tmp/ov2-sweep
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time

from openvision2 import console, paths
from openvision2.sweeps import grid, results

REPO = grid.REPO


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="openvision2-sweep", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="Sweep file `path.py[:arg]` defining get_hyper(h[, arg]).")
    p.add_argument("--root", required=True, help="Sweep directory: one workdir per point (gs:// for TPU).")
    p.add_argument("--backend", choices=("local", "tpu", "slurm"), default="local")
    p.add_argument("--parallel", type=int, default=1, help="local: points running at once.")
    p.add_argument("--dry-run", action="store_true", help="Print the commands of unfinished points; run nothing.")
    p.add_argument("--report", action="store_true", help="Write <root>/results.csv and <root>/scaling.png.")
    p.add_argument("--metric", default="eval/loss",
                   help="--report: the results.csv column scaling.png plots against compute, e.g. "
                        "eval/zeroshot/top1 or eval/digits/10shot (default: the held-out loss).")
    p.add_argument("--tpu", help="tpu: TPU VM name.")
    p.add_argument("--zone", help="tpu: zone.")
    p.add_argument("--project", help="tpu: GCP project (default: gcloud's).")
    p.add_argument("--sbatch-args", default="", help="slurm: extra sbatch options, e.g. '--nodes=4 --partition=a100'.")
    args = p.parse_args(argv)
    if not args.report and not args.config:
        p.error("--config=<sweep file> is required (or --report).")
    if args.parallel < 1:
        p.error("--parallel must be >= 1.")
    if args.backend == "tpu" and not (args.tpu and args.zone):
        p.error("--backend=tpu needs --tpu=<TPU VM name> and --zone=<zone>.")
    if args.backend == "tpu" and args.parallel > 1:
        p.error("--backend=tpu runs the points one after another on the one slice; drop --parallel.")
    if not args.report and args.backend != "tpu" and paths.is_remote(args.root):
        p.error(f"--backend={args.backend} writes its workdirs through the file system: give a local or shared "
                "--root, not a URL (URLs such as gs:// are for --backend=tpu).")
    return args


def point_command(args, base: str, point: grid.Point, workdir: str) -> list[str]:
    """The command that runs (local, tpu) or submits (slurm) one point, from the repository root."""
    train = point.train_flags(base, workdir)
    if args.backend == "local":
        return [sys.executable, "-m", "openvision2.train", *train]
    if args.backend == "tpu":
        return ["launch/tpu_pod.sh", f"--tpu={args.tpu}", f"--zone={args.zone}",
                *([f"--project={args.project}"] if args.project else []), "--", *train]
    return ["sbatch", "--parsable", f"--job-name=ov2-{point.dir}", f"--output={workdir}/slurm-%j.out",
            *shlex.split(args.sbatch_args), "launch/slurm_gpu.sbatch", *train]


def slurm_active(workdir: str) -> str | None:
    """The id of this point's earlier job if SLURM still has it queued or running."""
    try:
        with open(os.path.join(workdir, "slurm_job_id")) as f:
            job = f.read().strip()
        out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True, timeout=60)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return None
    return job if out.returncode == 0 and out.stdout.strip() else None


def check_writable(root: str):
    try:
        os.makedirs(root, exist_ok=True)
        tempfile.TemporaryFile(dir=root).close()
    except OSError as e:
        raise SystemExit(f"sweep: error: --root={root} is not writable ({e.strerror}); pick a directory you can "
                         "write, or fix its permissions.") from None


def _fmt(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:d}:{s // 60 % 60:02d}:{s % 60:02d}"


@dataclasses.dataclass
class Job:
    point: grid.Point
    workdir: str
    cmd: list[str]
    config: dict  # the point's resolved config, as config.json holds it


def run_local(jobs: list[Job], parallel: int) -> tuple[dict, int | None]:
    """Runs the jobs, `parallel` at a time; returns their exit codes and the signal that stopped the sweep.

    Points run in their own session so a terminal's Ctrl-C reaches only the
    sweep, which turns it into the SIGTERM the trainer checkpoints on.
    """
    stop: list[int] = []
    previous = {s: signal.signal(s, lambda sig, _: stop.append(sig)) for s in (signal.SIGINT, signal.SIGTERM)}
    queue, running, codes, signalled = list(jobs), {}, {}, {}
    try:
        while (queue and not stop) or running:
            while queue and not stop and len(running) < parallel:
                job = queue.pop(0)
                os.makedirs(job.workdir, exist_ok=True)
                log = open(os.path.join(job.workdir, "train.log"), "a")
                log.write(f"=== {datetime.datetime.now().isoformat(timespec='seconds')} {shlex.join(job.cmd)}\n")
                log.flush()
                proc = subprocess.Popen(job.cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
                running[job.point.name] = (proc, log, time.time(), job)
                print(f"[{len(codes) + len(running)}/{len(jobs)}] {job.point.name}: started, log {log.name}",
                      flush=True)
            for proc, *_ in running.values():
                wanted = signal.SIGKILL if len(stop) > 1 else signal.SIGTERM
                if stop and signalled.get(proc.pid) != wanted:
                    proc.send_signal(wanted)
                    signalled[proc.pid] = wanted
            for name, (proc, log, t0, job) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[name]
                log.close()
                codes[name] = proc.returncode
                wall = time.time() - t0
                with open(os.path.join(job.workdir, results.RUNS_LOG), "a") as f:
                    f.write(json.dumps({"start": t0, "wall_s": wall, "returncode": proc.returncode}) + "\n")
                status = results.point_status(job.workdir, job.config)
                if proc.returncode == 0 and status.state == "finished":
                    print(f"{name}: finished in {_fmt(wall)}", flush=True)
                elif proc.returncode == 0 or proc.returncode == -signal.SIGTERM:
                    print(f"{name}: stopped after {_fmt(wall)} ({status.detail}); rerun to resume", flush=True)
                else:
                    with open(log.name, errors="replace") as f:
                        tail = "".join(f.readlines()[-8:])
                    print(f"{name}: FAILED with exit code {proc.returncode} after {_fmt(wall)}; end of {log.name}:\n"
                          f"{tail}", flush=True)
            time.sleep(0.2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return codes, (stop[0] if stop else None)


def submit(args, jobs: list[Job]) -> list[str]:
    """tpu: runs each point's launch command in turn; slurm: submits each. Returns the names that failed."""
    failed = []
    for job in jobs:
        name = job.point.name
        if args.backend == "tpu":
            print(f"{name}: running on {args.tpu}", flush=True)
            if subprocess.run(job.cmd, cwd=REPO).returncode:
                failed.append(name)
            continue
        os.makedirs(job.workdir, exist_ok=True)  # sbatch writes its --output there
        out = subprocess.run(job.cmd, cwd=REPO, capture_output=True, text=True)
        if out.returncode:
            print(f"{name}: sbatch failed with exit code {out.returncode}: {out.stderr.strip()}", flush=True)
            failed.append(name)
            continue
        job_id = out.stdout.strip().split(";")[0]  # --parsable prints "id[;cluster]"
        with open(os.path.join(job.workdir, "slurm_job_id"), "w") as f:
            f.write(job_id + "\n")
        print(f"{name}: submitted as SLURM job {job_id}", flush=True)
    return failed


def report(args) -> int:
    root = paths.resolve(args.root)
    manifest = grid.load(args.config).manifest() if args.config else results.load_manifest(root)
    rows = results.collect_results(root, manifest)
    results.write_csv(rows, paths.join(root, "results.csv"))
    metric = args.metric
    columns = sorted({k for r in rows for k in r if k.startswith("eval/")})
    if rows and metric not in columns and any(r["status"] == "finished" for r in rows):
        print(f"error: no point has {metric!r}; results.csv has {', '.join(columns) or 'no eval column'}",
              file=sys.stderr)
        return 2
    what = "final eval loss" if metric == "eval/loss" else metric
    drawn = results.plot_scaling(rows, manifest, paths.join(root, "scaling.png"),
                                 f"{os.path.basename(manifest['spec'].split(':')[0])}: {what} vs compute", metric)
    for row in rows:
        print(f"{row['name']:<32} {row['status']:<10} step {row['step']:>6}  {metric} {row.get(metric, '')}")
    print(f"wrote {root}/results.csv ({len(rows)} rows)" +
          (f" and {root}/scaling.png ({drawn} points)" if drawn else "; no finished point to plot yet"))
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    console.start()  # the report sizes models (shapes only): no TPU probe on a machine without one
    try:
        if args.report:
            return report(args)
        sweep = grid.load(args.config)
    except (ValueError, TypeError, FileNotFoundError, KeyError, ImportError) as e:
        print(f"sweep: error: {e}", file=sys.stderr)
        return 2
    remote = paths.is_remote(args.root)
    root = paths.resolve(args.root)
    print(f"# sweep {sweep.spec}: {len(sweep.points)} points from {sweep.base}, backend {args.backend}, root {root}")
    readable = True
    if remote:
        try:
            paths.listdir(root)
        except Exception as e:  # no gcsfs, no credentials here: the pod can still read it
            readable = False
            print(f"# cannot read {root} from here ({type(e).__name__}: {e}), so every point is launched; the "
                  "trainer resumes each from its checkpoints (a finished one exits at once).")
    print(f"# commands run from {REPO}")
    jobs, blocked = [], []
    for point in sweep.points:
        workdir = f"{root}/{point.dir}"
        config = grid.config_json(point.config)
        status = results.point_status(workdir, config) if readable else None
        if status and status.state == "finished":
            print(f"# skip {point.name}: finished (step {status.step})")
        elif status and status.state == "mismatch":
            print(f"# refuse {point.name}: {status.detail}")
            blocked.append(point.name)
        elif args.backend == "slurm" and (job_id := slurm_active(workdir)):
            print(f"# skip {point.name}: SLURM job {job_id} is still queued or running")
        else:
            state = f"{status.state}{f' ({status.detail})' if status.detail else ''}" if status else "launch"
            jobs.append(Job(point, workdir, point_command(args, sweep.base, point, workdir), config))
            print(f"# {point.name}: {state}\n{shlex.join(jobs[-1].cmd)}")
    if args.dry_run:
        return 0
    if not remote:
        check_writable(root)
    if readable:
        paths.write_text(paths.join(root, grid.MANIFEST), json.dumps(sweep.manifest(), indent=1))
    if args.backend != "local":
        failed = submit(args, jobs)
        print(f"sweep: {len(jobs) - len(failed)}/{len(jobs)} points {'submitted' if args.backend == 'slurm' else 'ran'}"
              + (f"; failed: {failed}" if failed else "") + (f"; refused: {blocked}" if blocked else ""))
        return 1 if failed or blocked else 0
    t0 = time.time()
    codes, stopped = run_local(jobs, args.parallel)
    unfinished = [p.name for p in sweep.points
                  if results.point_status(f"{root}/{p.dir}", grid.config_json(p.config)).state != "finished"]
    print(f"sweep: {len(sweep.points) - len(unfinished)}/{len(sweep.points)} points finished "
          f"({len(codes)} run now, {_fmt(time.time() - t0)})" + (f"; not finished: {unfinished}" if unfinished else ""))
    if stopped:
        print(f"sweep: stopped by {signal.Signals(stopped).name}; rerun the same command to resume.")
        return 128 + stopped
    if unfinished:
        return 1
    print(f"next: openvision2-sweep --report --root={root}")
    return 0


def run():
    """The `openvision2-sweep` command."""
    sys.exit(main())


if __name__ == "__main__":
    run()
