"""Benchmark: the fusion labelling's sampling speed against the sampler's batch size (prompts per ``generate``).

    python scripts/bench/label_batch.py --model outputs/demo/grpo --data outputs/demo/world/data/slow.jsonl
    python scripts/bench/label_batch.py --model ... --data ... --batch_sizes 256,64,128 --prompts 300 --repeats 2

The workload is one process's share of Stage 2's first labelling in `make demo`: ``--prompts`` prompts of the data
file (300: half of the 600 the two processes label), ``--k`` replies each at T=1 within ``--max_new_tokens`` (64, the
tiny config's labelling budget), from a trained model (the demo's GRPO model: it answers in full traces, as the
labelling sees them). One thread; the arms alternate ``--repeats`` times; reported: the median seconds per arm, its
ratio to the first arm's, and the tokens sampled. The batch size changes which random numbers each reply draws, so
the replies differ between arms; their token counts show that the work is comparable. The machine is shared: the
load average is printed before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from train.core.data import read_records
from train.core.loading import load_model_and_tokenizer
from train.sampling.params import SamplingParams
from train.sampling.transformers import TransformersSampler


def time_arm(sampler: TransformersSampler, prompts: list, params: SamplingParams) -> tuple[float, int]:
    began = time.perf_counter()
    replies = sampler.sample(prompts, params)
    return time.perf_counter() - began, sum(r.num_tokens for rs in replies for r in rs)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a trained model folder (the demo's outputs/demo/grpo)")
    parser.add_argument("--data", required=True, help="records whose prompts are sampled")
    parser.add_argument("--batch_sizes", default="256,64,128", help="comma-separated prompts per generate() call")
    parser.add_argument("--prompts", type=int, default=300, help="prompts sampled (the first of the file)")
    parser.add_argument("--k", type=int, default=8, help="replies per prompt")
    parser.add_argument("--max_new_tokens", type=int, default=64, help="longest reply")
    parser.add_argument("--repeats", type=int, default=2, help="rounds, the arms alternating")
    parser.add_argument("--seed", type=int, default=0, help="the sampling seed")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model, tokenizer = load_model_and_tokenizer(args.model)
    prompts = [r["prompt"] for r in read_records(args.data)[: args.prompts]]
    params = SamplingParams(n=args.k, temperature=1.0, max_new_tokens=args.max_new_tokens, seed=args.seed)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    result: dict = {"load_before": os.getloadavg(), "runs": []}
    print(f"load average before: {result['load_before']}", flush=True)
    for repeat in range(args.repeats):
        for size in sizes:
            seconds, tokens = time_arm(TransformersSampler(model, tokenizer, batch_size=size), prompts, params)
            result["runs"].append({"batch_size": size, "repeat": repeat, "seconds": seconds, "tokens": tokens})
            print(f"batch {size:>5}: {seconds:.1f} s, {tokens} tokens", flush=True)
    result["load_after"] = os.getloadavg()
    print(f"load average after: {result['load_after']}", flush=True)
    medians = {s: statistics.median(r["seconds"] for r in result["runs"] if r["batch_size"] == s) for s in sizes}
    result["arms"] = [{"batch_size": s, "median_s": m, "vs_first": m / medians[sizes[0]]} for s, m in medians.items()]
    for row in result["arms"]:
        print(f"batch {row['batch_size']:>5}: median {row['median_s']:.1f} s, {row['vs_first']:.2f}x the first's time")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
