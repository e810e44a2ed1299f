"""Benchmark: streaming merge vs. loading every state dict whole and merging in memory.

    python scripts/bench/merge.py                       # three ~100M-parameter checkpoints, linear and ties
    python scripts/bench/merge.py --methods ties --repeats 3 --workdir /tmp/merge-bench

Generates three float32 checkpoints of a Qwen3-style architecture (~100M parameters each, written sharded as
save_pretrained does), then for each method runs both arms in separate subprocesses so that neither inherits the
other's memory: peak memory is the child's ``ru_maxrss``. Both arms use the same per-tensor merge arithmetic
(``train.merging.api.merge_state_dicts`` for the baseline) and write a safetensors checkpoint; the input files are
read once beforehand so both arms start from a warm page cache, and the parent syncs before every arm so that none
starts with another's dirty pages to write back (the baseline's ``save_file`` does not fsync; the streaming writer
does, for a durable output). Arms: baseline, baseline+hash (also sha256 of every input and output file, as the
streaming manifest records), streaming-nohash and streaming (as shipped). Prints wall time, CPU time and peak memory
of each arm (medians over ``--repeats``, the arm order reversed every other repeat), the ratios, the memory target
check (peak <= 1.5x one checkpoint) and the load average, since wall times on a shared machine depend on what else
runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# hidden, layers, heads, kv heads, intermediate, vocab: 100.1M parameters with an untied lm_head
ARCH = dict(hidden=768, layers=12, heads=12, kv=4, inter=2048, vocab=16000)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def make_checkpoints(workdir: Path, n: int = 3, seed: int = 0) -> list[Path]:
    """``n`` checkpoints: a random base and copies with small random deltas (so TIES/DARE have something to do)."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from train.core.modes import QWEN3_THINK
    from train.merging.io import OutputTensor, ShardedWriter
    from train.world.tiny import build_tokenizer

    a = ARCH
    config = Qwen3Config(
        vocab_size=a["vocab"],
        hidden_size=a["hidden"],
        num_hidden_layers=a["layers"],
        num_attention_heads=a["heads"],
        num_key_value_heads=a["kv"],
        head_dim=a["hidden"] // a["heads"],
        intermediate_size=a["inter"],
        tie_word_embeddings=False,
    )
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in Qwen3ForCausalLM(config).state_dict().items()}
    tok = build_tokenizer(think=QWEN3_THINK)
    paths = []
    gen = torch.Generator().manual_seed(seed)
    for i in range(n):
        out = workdir / f"ckpt{i}"
        if (out / "config.json").is_file():
            paths.append(out)
            continue
        out.mkdir(parents=True, exist_ok=True)
        layout = [OutputTensor(k, torch.float32, s) for k, s in shapes.items()]
        writer = ShardedWriter(out, layout, "200MB")
        for name, shape in shapes.items():
            base_gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))  # same base for every checkpoint
            t = torch.randn(shape, generator=base_gen) * 0.02
            if i:
                t += torch.randn(shape, generator=gen) * 0.002
            writer.write(name, t)
        writer.close()
        config.save_pretrained(out)
        tok.save_pretrained(out)
        paths.append(out)
    return paths


def merge_config(method: str, paths: list[Path]) -> dict:
    base, *others = (str(p) for p in paths)
    if method == "linear":
        return {"merge_method": "linear", "models": [{"model": p, "parameters": {"weight": 1.0}} for p in paths]}
    models = [{"model": p, "parameters": {"weight": 0.5, "density": 0.5}} for p in others]
    return {"merge_method": method, "base_model": base, "models": models}


ARMS = ("baseline", "baseline+hash", "streaming-nohash", "streaming")


def run_arm(arm: str, method: str, paths: list[Path], out: Path) -> dict:
    """One arm in this process; returns wall time and memory.

    ``baseline``: load every state dict whole, merge in memory, save. ``baseline+hash``: the same plus the sha256 of
    every input and output file (what the streaming merge records in its manifest). ``streaming``: the product as
    shipped (manifest with hashes); ``streaming-nohash``: ``hash_files=False``.
    """
    import torch  # noqa: F401 - imported before the baseline RSS is taken, as both arms need it

    from train.merging import MergeConfig, merge_from_config, merge_state_dicts
    from train.merging.io import sha256_file, weight_files

    cfg = MergeConfig.from_dict(merge_config(method, paths))
    rss_imports = _rss_mb()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = usage.ru_utime + usage.ru_stime
    start = time.perf_counter()
    if arm.startswith("streaming"):
        merge_from_config(cfg, out, overwrite=True, show_progress=False, hash_files=arm == "streaming")
    else:
        from safetensors.torch import load_file, save_file

        state_dicts = {}
        for p in dict.fromkeys(str(p) for p in paths):
            sd = {}
            for f in weight_files(p):
                sd.update(load_file(f))
            state_dicts[p] = sd
        merged = merge_state_dicts(cfg, state_dicts, num_layers=ARCH["layers"])
        out.mkdir(parents=True, exist_ok=True)
        save_file(merged, out / "model.safetensors", metadata={"format": "pt"})
        if arm == "baseline+hash":
            for f in [*(f for p in paths for f in weight_files(p)), out / "model.safetensors"]:
                sha256_file(f)
    wall = time.perf_counter() - start
    peak = _rss_mb()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime - cpu0
    return {
        "arm": arm,
        "method": method,
        "wall_s": wall,
        "cpu_s": cpu,
        "peak_rss_mb": peak,
        "rss_after_imports_mb": rss_imports,
    }


def _child(arm: str, method: str, paths: list[Path], out: Path) -> dict:
    cmd = [sys.executable, __file__, "--_arm", arm, "--methods", method, "--workdir", str(out.parent)]
    cmd += ["--_paths", *map(str, paths)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{arm} arm failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workdir", default="/tmp/fastslow-merge-bench", help="where checkpoints and outputs go")
    p.add_argument("--methods", nargs="+", default=["linear", "ties"], help="merge methods to time")
    p.add_argument("--repeats", type=int, default=1, help="runs per arm; the median is reported")
    p.add_argument("--keep", action="store_true", help="keep the generated checkpoints for the next run")
    p.add_argument("--_arm", help=argparse.SUPPRESS)
    p.add_argument("--_paths", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    workdir = Path(args.workdir)

    if args._arm == "make":  # child process: generate the checkpoints
        make_checkpoints(workdir)
        return []
    if args._arm:  # child process: one arm, one JSON line
        print(json.dumps(run_arm(args._arm, args.methods[0], [Path(x) for x in args._paths], workdir / args._arm)))
        return []

    # The parent stays small (no torch import, no tensors): Linux carries ru_maxrss across fork+exec, so a big
    # parent would inflate every child's measured peak.
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--_arm", "make", "--workdir", str(workdir)], check=True)
    paths = [workdir / f"ckpt{i}" for i in range(3)]
    files = [f for path in paths for f in sorted(path.glob("*.safetensors"))]
    ckpt_mb = sum(f.stat().st_size for f in paths[0].glob("*.safetensors")) / 2**20
    for f in files:  # warm the page cache so the first arm is not charged for cold reads
        with open(f, "rb") as fh:
            while fh.read(1 << 24):
                pass
    print(
        f"3 checkpoints of {ckpt_mb:.0f} MiB each (float32, ~100M parameters) ready in {time.perf_counter() - t0:.0f}s"
    )

    load_before = os.getloadavg()
    rows = []
    for method in args.methods:
        runs = {arm: [] for arm in ARMS}
        for rep in range(args.repeats):
            # every other repeat in reverse order: an arm's speed depends a little on what ran just before it (the
            # page cache and the memory the previous process freed), so no arm always comes first or last
            for arm in ARMS if rep % 2 == 0 else ARMS[::-1]:
                # Write back what the previous arm left dirty (the baseline does not fsync its output), so that no
                # arm pays for another's writeback.
                os.sync()
                runs[arm].append(_child(arm, method, paths, workdir / arm))
                shutil.rmtree(workdir / arm, ignore_errors=True)
        summary = {}
        for arm, rs in runs.items():
            summary[arm] = {
                "wall_s": statistics.median(r["wall_s"] for r in rs),
                "cpu_s": statistics.median(r["cpu_s"] for r in rs),
                "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in rs),
                "rss_after_imports_mb": statistics.median(r["rss_after_imports_mb"] for r in rs),
            }
        rows.append({"method": method, **summary})

    load_after = os.getloadavg()
    head = f"{'method':<10} {'arm':<17} {'wall s':>7} {'CPU s':>6} {'peak RSS MiB':>13} {'x ckpt':>7}"
    print(f"\n{head} {'merge-only MiB':>15}")
    for row in rows:
        for arm in ARMS:
            r = row[arm]
            extra = r["peak_rss_mb"] - r["rss_after_imports_mb"]
            line = f"{row['method']:<10} {arm:<17} {r['wall_s']:>7.2f} {r['cpu_s']:>6.2f} {r['peak_rss_mb']:>13.0f}"
            print(f"{line} {r['peak_rss_mb'] / ckpt_mb:>7.2f} {extra:>15.0f}")
    print(
        f"load average (1/5/15 min) before: {' '.join(f'{x:.2f}' for x in load_before)}, after: "
        f"{' '.join(f'{x:.2f}' for x in load_after)} on {os.cpu_count()} CPUs; wall times are medians of "
        f"{args.repeats} run(s), CPU s = user + system time of the arm's process"
    )
    print()
    for row in rows:
        s, s0 = row["streaming"], row["streaming-nohash"]
        b, bh = row["baseline"], row["baseline+hash"]
        mem_ok = s["peak_rss_mb"] <= 1.5 * ckpt_mb
        mem_ratio = s["peak_rss_mb"] / b["peak_rss_mb"]
        print(
            f"{row['method']}: time streaming/baseline+hash {s['wall_s'] / bh['wall_s']:.2f}x, "
            f"streaming-nohash/baseline {s0['wall_s'] / b['wall_s']:.2f}x, streaming/baseline "
            f"{s['wall_s'] / b['wall_s']:.2f}x; peak memory streaming/baseline {mem_ratio:.2f}x, streaming = "
            f"{s['peak_rss_mb'] / ckpt_mb:.2f}x one checkpoint (target <= 1.5x: {'met' if mem_ok else 'NOT met'})"
        )
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return rows


if __name__ == "__main__":
    main()
