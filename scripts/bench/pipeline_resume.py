"""Kill the pipeline with SIGKILL in the middle of each stage in turn, rerun it, and compare its summary.

    python scripts/bench/pipeline_resume.py --reference outputs/demo --run_dir outputs/demo-killed

``--reference`` is an uninterrupted run of the same config and seed: each stage's wall time there
(``<stage>/pipeline_stage.json``) sets when this run is killed (``--at`` of it after the stage starts, by default
half), unless ``--delays`` gives the seconds per stage (then the reference need only be finished at the end: the
two runs may go side by side). The pipeline runs in its own process group; once it logs ``run <stage>:``, the
script waits, then kills the whole process tree with SIGKILL (the pipeline, accelerate's launcher and every recipe
process, torchrun's workers included: they start their own sessions, so a group kill misses them), and starts
the pipeline again, which must skip the finished stages and resume the killed one from its partial output. After
the last stage's kill the run is left to finish. Prints, per stage, when it was killed and what its folder held
then; at the end whether ``summary.md`` equals the reference's byte for byte (exit status 1 if not). Every
attempt's output goes to ``<run_dir>.log`` beside the run folder: send this script's own output elsewhere.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="recipes/configs/tiny/pipeline.yaml", help="pipeline YAML")
    p.add_argument("--reference", required=True, help="run_dir of an uninterrupted run of the same config")
    p.add_argument("--run_dir", required=True, help="run_dir of this (killed and resumed) run; must not exist")
    p.add_argument("--at", type=float, default=0.5, help="kill at this share of the stage's reference wall time")
    p.add_argument("--stages", nargs="*", default=None, help="stages to kill in (default: every stage)")
    p.add_argument(
        "--delays",
        nargs="*",
        default=None,
        metavar="STAGE=SECONDS",
        help="seconds after each stage's start to kill it (default: --at of the reference's wall time)",
    )
    return p.parse_args(argv)


def stage_seconds(reference: Path) -> dict[str, float]:
    """Wall time of each stage in the reference run, in its order."""
    summary = json.loads((reference / "summary.json").read_text())
    return {s: json.loads((reference / s / "pipeline_stage.json").read_text())["seconds"] for s in summary["stages"]}


def start(config: str, run_dir: Path, log) -> subprocess.Popen:
    cmd = [sys.executable, "recipes/pipeline.py", "--config", config, "--run_dir", str(run_dir)]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for_stage(proc: subprocess.Popen, log_path: Path, stage: str, offset: int) -> bool:
    """Block until the pipeline (its log from byte ``offset``: this attempt's output) starts ``stage``; False if it
    exits first."""
    marker = f"run {stage}:".encode()
    with log_path.open("rb") as log:
        while proc.poll() is None:
            log.seek(offset)
            if marker in log.read():
                return True
            time.sleep(0.5)
    return False


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (torchrun's workers start their own sessions: a group kill misses them)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and everything below it (the tree is listed before the first kill: orphans get reparented)."""
    for p in [pid, *descendants(pid)]:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def contents(folder: Path) -> str:
    if not folder.exists():
        return "nothing"
    names = sorted(p.name for p in folder.iterdir())
    return ", ".join(names[:8]) + (f" (+{len(names) - 8})" if len(names) > 8 else "") or "empty"


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    reference, run_dir = Path(args.reference).resolve(), Path(args.run_dir).resolve()
    if run_dir.exists():
        raise SystemExit(f"--run_dir {run_dir} exists: this benchmark starts from nothing")
    if args.delays:
        delays = {k: float(v) for k, v in (d.split("=", 1) for d in args.delays)}
    else:
        delays = {k: args.at * v for k, v in stage_seconds(reference).items()}
    run_dir.mkdir(parents=True)
    log_path = run_dir.parent / f"{run_dir.name}.log"
    began = time.perf_counter()
    with log_path.open("w") as log:
        for stage in args.stages or list(delays):
            offset = log_path.stat().st_size
            proc = start(args.config, run_dir, log)
            if not wait_for_stage(proc, log_path, stage, offset):
                raise SystemExit(f"the pipeline exited (status {proc.returncode}) before stage {stage!r}; {log_path}")
            delay = delays[stage]
            time.sleep(delay)
            kill_tree(proc.pid)
            proc.wait()
            print(f"killed in {stage} {delay:.0f} s after it started; {stage}/ held: {contents(run_dir / stage)}",
                  flush=True)  # fmt: skip
        proc = start(args.config, run_dir, log)
        status = proc.wait()
    print(f"resumed run finished with status {status} after {time.perf_counter() - began:.0f} s in all ({log_path})")
    same = (run_dir / "summary.md").read_bytes() == (reference / "summary.md").read_bytes()
    print(f"summary.md {'equals' if same else 'DIFFERS FROM'} {reference / 'summary.md'}")
    return 0 if same and status == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
