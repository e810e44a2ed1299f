"""Learning benchmark: does the SFT recipe teach a ~1M-parameter model 3-digit addition from slow traces?

    python scripts/bench/sft_learning.py                 # both arms, ~5 minutes on an idle 2-core CPU
    python scripts/bench/sft_learning.py --arms slow     # the slow arm only

Trains the same tiny model twice with the same recipe, steps and batch size: once on slow-mode traces
(digit-by-digit in the think block), once on fast answers only (empty think block), then measures greedy
accuracy on the same held-out 3-digit additions. Prints both accuracies and the training wall time of each arm.
Target: slow >= 95% in at most 3 minutes of training; fast stays far lower.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from train.core.cli import run_script
from train.core.data import read_records, write_jsonl
from train.core.loading import load_model_and_tokenizer
from train.core.modes import QWEN3_THINK
from train.eval.evaluation import evaluate_modes
from train.world.arithmetic import make_dataset
from train.world.tiny import make_tiny

ROOT = Path(__file__).resolve().parents[2]


def train_arm(work: Path, mode: str, args: argparse.Namespace) -> tuple[float, dict]:
    data = work / f"data-{mode}"
    train, test = make_dataset(args.n_train, args.n_test, [3], [mode], seed=0, think=QWEN3_THINK)
    write_jsonl(data / "train.jsonl", train)
    write_jsonl(data / "test.jsonl", test)
    out = work / f"sft-{mode}"
    start = time.perf_counter()
    run_script(
        ROOT / "recipes/sft.py",
        *[
            "--config",
            str(ROOT / "recipes/configs/tiny/sft.yaml"),
            "--model_name_or_path",
            str(work / "model"),
            "--train_files",
            str(data / "train.jsonl"),
            "--output_dir",
            str(out),
            "--max_steps",
            str(args.steps),
            "--disable_tqdm",
            "true",
            "--logging_steps",
            "100",
            "--learning_rate",
            str(args.lr),
        ],
    )
    wall = time.perf_counter() - start
    model, tok = load_model_and_tokenizer(out)
    test = read_records(data / "test.jsonl")
    result = evaluate_modes(model, tok, test, modes=[mode], max_new_tokens=48, batch_size=100)[mode]
    return wall, result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400, help="training steps per arm (batch 64)")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (cosine, tiny/sft.yaml's 3e-3)")
    parser.add_argument("--n-train", type=int, default=20000, help="training problems")
    parser.add_argument("--n-test", type=int, default=200, help="held-out problems")
    parser.add_argument("--arms", nargs="+", default=["slow", "fast"], choices=["slow", "fast"], help="arms to run")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_tiny(work / "model", size="small", seed=0, think=QWEN3_THINK)
        rows = {mode: train_arm(work, mode, args) for mode in args.arms}
    print("\n| trained on | greedy accuracy (held-out 3-digit sums) | mean output tokens | training wall time |")
    print("|---|---|---|---|")
    for mode, (wall, r) in rows.items():
        print(f"| {mode} traces | {r['accuracy']:.1%} | {r['mean_tokens']:.1f} | {wall:.0f} s |")
    result = {m: {"wall_s": w, **r} for m, (w, r) in rows.items()}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
