"""The tiny end-to-end pipeline on a CPU: build a model, make data, train it, and evaluate it per mode.

    python scripts/demo.py --out outputs/demo          # what `make demo` runs

Every stage is the real recipe launched with `accelerate launch`, on the arithmetic world (data the repo
generates, no downloads). Each stage writes into its own folder under --out and is skipped on a rerun when its
output is already complete, so an interrupted demo resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from train.cli import setup_logging  # noqa: E402

logger = logging.getLogger("demo")
CPU = str(ROOT / "recipes" / "accelerate" / "cpu.yaml")


def run(cmd: list[str], done: Path) -> None:
    """Run a stage unless its completion marker exists; a failed stage stops the demo with its command."""
    if done.exists():
        logger.info("skip (done): %s", done.parent.name)
        return
    logger.info("run: %s", " ".join(cmd))
    start = time.perf_counter()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    done.parent.mkdir(parents=True, exist_ok=True)
    done.write_text(f"{time.perf_counter() - start:.1f}\n")


def launch(recipe: str, config: str, *overrides: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        CPU,
        str(ROOT / "recipes" / recipe),
        "--config",
        str(ROOT / "recipes" / "configs" / "tiny" / config),
        *overrides,
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/demo", help="working folder (resumable)")
    parser.add_argument("--sft-steps", type=int, default=600, help="SFT steps (batch 64)")
    args = parser.parse_args(argv)
    setup_logging()
    out = Path(args.out).resolve()
    py = sys.executable

    # 1. A tiny model and the arithmetic world (1-3 digit sums), slow traces from the programmatic teacher.
    run([py, "scripts/make_tiny_model.py", "--out", str(out / "model"), "--size", "small"], out / "model" / ".done")
    run(
        [
            py,
            "scripts/make_arithmetic_data.py",
            "--out",
            str(out / "data"),
            "--n-train",
            "12000",
            "--n-test",
            "300",
            "--levels",
            "1",
            "2",
            "3",
            "--modes",
            "slow",
        ],
        out / "data" / ".done",
    )

    # 2. A slow thinker: SFT on the traces.
    run(
        launch(
            "sft.py",
            "sft.yaml",
            "--model_name_or_path",
            str(out / "model"),
            "--train_files",
            str(out / "data" / "train.jsonl"),
            "--output_dir",
            str(out / "sft"),
            "--max_steps",
            str(args.sft_steps),
        ),
        out / "sft" / ".done",
    )

    # 3. Held-out accuracy per mode.
    from train.data import read_records
    from train.evaluation import evaluate_modes
    from train.loading import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(out / "sft")
    test = read_records(out / "data" / "test.jsonl")
    results = evaluate_modes(model, tok, test, modes=["slow", "fast", "auto"], max_new_tokens=64, batch_size=100)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print("\n| mode | accuracy | mean output tokens | tag compliance |\n|---|---|---|---|")
    for mode, r in results.items():
        print(f"| {mode} | {r['accuracy']:.1%} | {r['mean_tokens']:.1f} | {r['compliance']:.1%} |")
    print(f"\nresults: {out / 'results.json'}")


if __name__ == "__main__":
    main()
