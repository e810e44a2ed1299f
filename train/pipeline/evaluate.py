"""Evaluation of every stage's model: greedy in each of its modes on the held-out set, and sampled on the hard part.

Results are cached in ``<run>/eval/<stage>.json`` (with ``.md`` and ``.png`` beside it), keyed by the model they
scored: a rerun reuses them, a retrained model is scored again. Every reply is written as JSONL (one row per reply:
prompt, reference, text, tokens, truncation, correctness, the mode it took): ``<stage>.generations.jsonl`` for the
greedy replies in every mode, ``<stage>.sampled.jsonl`` for the sampled hard ones. Sampling is seeded from the
pipeline's seed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from train.core.data import read_records
from train.core.fingerprint import write_json_atomic
from train.core.loading import load_model_and_tokenizer
from train.eval.evaluation import bucket, evaluate, write_results
from train.pipeline.config import EvalConfig


def evaluate_stage(
    name: str, model_dir: str, modes: list[str], test_file: str, cfg: EvalConfig, eval_dir: Path, seed: int
) -> dict[str, Any]:
    """Greedy results in ``modes`` and sampled slow-mode accuracy (avg@k, T=1) on the hard problems."""
    cached = eval_dir / f"{name}.json"
    # Every reply as JSONL beside the scores: what a reader checks when a number looks wrong.
    replies, sampled_path = eval_dir / f"{name}.generations.jsonl", eval_dir / f"{name}.sampled.jsonl"
    if cached.exists() and replies.exists():  # scores without their replies (an older run): evaluate again
        results = json.loads(cached.read_text())
        if results.get("model") == str(model_dir):
            return results
    sampled_path.unlink(missing_ok=True)  # another model's sampled replies must not survive beside these scores
    test = read_records(test_file)
    model, tok = load_model_and_tokenizer(model_dir)
    model.eval()
    params = dict(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, seed=seed)
    results = evaluate(model, tok, test, modes=modes, generations_path=replies, **params)
    hard = [r for r in test if bucket(r) == cfg.hard_level]
    if hard and cfg.sampled_k > 1 and "slow" in modes:
        sampled = evaluate(model, tok, hard, modes=["slow"], k=cfg.sampled_k, temperature=1.0, top_p=1.0,
                           generations_path=sampled_path, **params)  # fmt: skip
        results["sampled_hard"] = {"k": cfg.sampled_k, "avg": sampled["modes"]["slow"][f"avg@{cfg.sampled_k}"],
                                   "prompts": len(hard)}  # fmt: skip
    results["model"] = str(model_dir)
    write_results(results, eval_dir, name=name)
    write_json_atomic(cached, results)
    return results
