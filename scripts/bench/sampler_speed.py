"""Benchmark: pass-rate sampling (k=8) with the batched transformers backend against naive per-prompt ``generate``.

    OMP_NUM_THREADS=1 nice -n 5 python scripts/bench/sampler_speed.py
    python scripts/bench/sampler_speed.py --prompts 64 --max-new-tokens 48 --size small --repeats 5 --out bench.json

The workload is the distillation's complexity measure: ``--prompts`` arithmetic prompts, ``k`` replies each, every
reply checked (:func:`train.sampling.pass_rates`). Arms, on one tiny Qwen3-shaped model built here (initialised
wide, so its greedy replies differ from prompt to prompt; nothing is downloaded):

* ``batched``: :func:`train.sampling.pass_rates` over the transformers backend (prompts sorted by length, batched
  ``--batch-size`` at a time, one ``generate`` per batch; greedy decoding computes each prompt's reply once);
* ``naive``: one ``model.generate`` per prompt (``num_return_sequences=k`` when sampling; at temperature 0 one
  greedy reply, repeated ``k`` times, as greedy ``generate`` cannot return more), decoded and checked the same way.

Two settings: temperature 0, where both arms must produce the same replies and pass rates (asserted: the speed-up
changes nothing), and temperature 1 (the pass-rate setting), where the random draws differ between arms and only
the time is compared. Each setting runs ``--repeats`` rounds with the arms' order alternating; the ratio of the
medians (naive / batched) is reported, with the load average before and after, since wall times on a shared
machine depend on what else runs. Target: batched >= 3x naive. torch uses ``--threads`` threads (default 1).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from train.core.checks import exact_match
from train.core.loading import load_model_and_tokenizer
from train.core.modes import QWEN3_THINK, Mode
from train.sampling import SamplerConfig, make_sampler, pass_rates
from train.sampling.transformers import build_prompts
from train.world.arithmetic import make_problems
from train.world.tiny import make_tiny


def naive_pass_rates(model: Any, tok: Any, records: list[dict], k: int, temperature: float, max_new_tokens: int,
                     seed: int) -> list[tuple[float, list[str]]]:  # fmt: skip
    """One ``generate`` call per prompt; replies cut after EOS and decoded as the sampler does."""
    torch.manual_seed(seed)
    tok.padding_side = "left"
    think, out = QWEN3_THINK, []
    greedy = temperature == 0
    sampling = {"do_sample": False} if greedy else {"do_sample": True, "temperature": temperature, "top_p": 1.0}
    for r in records:
        (text,) = build_prompts(tok, [r["prompt"]], Mode.SLOW)
        enc = tok(text, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            rows = 1 if greedy else k
            seqs = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                num_return_sequences=rows,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
                **sampling,
            )
        replies = []
        for row in seqs[:, enc["input_ids"].shape[1] :].tolist():
            n = row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row)
            replies.append(tok.decode(row[:n], skip_special_tokens=True))
        replies = replies * k if greedy else replies
        correct = [bool(exact_match(think.parse(t).answer, r)) for t in replies]
        out.append((sum(correct) / len(correct), replies))
    return out


def batched_pass_rates(sampler: Any, records: list[dict], k: int, temperature: float, max_new_tokens: int,
                       seed: int) -> list[tuple[float, list[str]]]:  # fmt: skip
    rates = pass_rates(sampler, records, k=k, check=exact_match, mode=Mode.SLOW, temperature=temperature,
                       max_new_tokens=max_new_tokens, seed=seed)  # fmt: skip
    return [(p.rate, [r.text for r in p.replies]) for p in rates]


def timed(fn: Any, *args: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=32, help="prompts whose pass rates are measured")
    parser.add_argument("--k", type=int, default=8, help="replies per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="longest reply")
    parser.add_argument("--batch-size", type=int, default=64, help="prompts per generate() call (batched arm)")
    parser.add_argument("--size", default="tiny", choices=["nano", "tiny", "small"], help="tiny model size")
    parser.add_argument("--repeats", type=int, default=3, help="rounds per setting (median reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--seed", type=int, default=0, help="seed of the model, the prompts and the sampling")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()

    with tempfile.TemporaryDirectory() as tmp:
        folder = make_tiny(Path(tmp) / "model", size=args.size, seed=args.seed, think=QWEN3_THINK,
                           initializer_range=0.5)  # fmt: skip
        model, tok = load_model_and_tokenizer(folder)
    model.eval()
    records = make_problems(args.prompts, levels=(1, 2, 3), seed=args.seed)
    sampler = make_sampler(SamplerConfig(batch_size=args.batch_size), model=model, tokenizer=tok)
    common = (records, args.k)
    results: dict[str, Any] = {"settings": {}}
    for temperature in (0.0, 1.0):
        times: dict[str, list[float]] = {"batched": [], "naive": []}
        for rep in range(args.repeats):
            arms = ["batched", "naive"] if rep % 2 == 0 else ["naive", "batched"]
            for arm in arms:
                if arm == "batched":
                    seconds, got = timed(batched_pass_rates, sampler, *common, temperature, args.max_new_tokens,
                                         args.seed + rep)  # fmt: skip
                else:
                    seconds, got = timed(naive_pass_rates, model, tok, *common, temperature, args.max_new_tokens,
                                         args.seed + rep)  # fmt: skip
                times[arm].append(seconds)
                if temperature == 0:
                    results.setdefault("greedy_outputs", {})[arm] = got
        if temperature == 0:
            same = results["greedy_outputs"]["batched"] == results["greedy_outputs"]["naive"]
            assert same, "batched and naive sampling disagree at temperature 0"
            distinct = {t for _, replies in results.pop("greedy_outputs")["batched"] for t in replies}
            results["greedy_identical"], results["greedy_distinct_replies"] = same, len(distinct)
        medians = {arm: statistics.median(v) for arm, v in times.items()}
        replies = args.prompts * args.k
        results["settings"][f"temperature={temperature:g}"] = {
            "seconds": times, "median_s": medians, "ratio_naive_over_batched": medians["naive"] / medians["batched"],
            "replies_per_s": {arm: replies / s for arm, s in medians.items()},
        }  # fmt: skip
    results.update(
        load_before=load_before, load_after=os.getloadavg(), threads=args.threads, prompts=args.prompts, k=args.k,
        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, size=args.size, repeats=args.repeats,
    )  # fmt: skip
    print(f"pass-rate sampling, {args.prompts} prompts x k={args.k}, {args.max_new_tokens} new tokens, {args.size} "
          f"model, {args.threads} thread(s), median of {args.repeats}")  # fmt: skip
    print(f"{'setting':<16}{'batched s':>11}{'naive s':>10}{'ratio':>8}{'batched replies/s':>19}")
    for name, r in results["settings"].items():
        m = r["median_s"]
        print(f"{name:<16}{m['batched']:>11.2f}{m['naive']:>10.2f}{r['ratio_naive_over_batched']:>7.1f}x"
              f"{r['replies_per_s']['batched']:>19.1f}")  # fmt: skip
    print(f"temperature 0: identical replies and pass rates in both arms ({results['greedy_distinct_replies']} "
          f"distinct replies); load {load_before[0]:.1f} before, {results['load_after'][0]:.1f} after")  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return results


if __name__ == "__main__":
    main()
