"""Evaluation of every stage's model: greedy in each of its modes on the held-out set, and sampled on the hard part.

Each stage's model is sampled with the sampler the evaluation section names (``evaluation.sampler_args``:
transformers on the best device present in its precision by default, vLLM for a 7B run), the
pipeline's ``trust_remote_code`` included. Results are cached in ``<run>/eval/<stage>.json`` (with ``.md`` and
``.png`` beside it), keyed by the model they scored (its folder, its files' sizes and times) and the settings they
were scored with (modes, budget, samples, check, seed, sampler, the held-out file's bytes): a rerun reuses them, a
retrained model or a changed setting is scored again. Every
reply is written as JSONL (one row per reply: prompt, reference, text, tokens, truncation, correctness, the mode it
took): ``<stage>.generations.jsonl`` for the greedy replies in every mode, ``<stage>.sampled.jsonl`` for the sampled
hard ones. Sampling is seeded from the pipeline's seed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from train.core.checks import exact_match
from train.core.data import read_records
from train.core.fingerprint import file_stamps, write_json_atomic
from train.eval import benchmarks
from train.eval.evaluation import bucket, evaluate, write_results
from train.pipeline.config import EvalConfig
from train.sampling.base import Sampler, SamplerConfig, make_sampler


def file_sha256(path: str | Path) -> str:
    """A digest of a file's bytes (the held-out set: the same path may hold another data set's records)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# The files that make a model what it is: not the model card the pipeline writes into the final folder afterwards.
MODEL_FILES = ("*.safetensors", "*.bin", "config.json", "generation_config.json", "tokenizer*.json", "*.jinja")


def model_stamp(model_dir: str | Path) -> list[list[Any]]:
    """Sizes and modification times of a model folder's weights, config and tokenizer: a stage retrained into the
    same folder is new."""
    folder = Path(model_dir)
    return file_stamps({f for pattern in MODEL_FILES for f in folder.glob(pattern) if f.is_file()}, folder)


def eval_settings(
    cfg: EvalConfig, test_file: str, seed: int, trust_remote_code: bool = False, modes: list[str] | None = None
) -> dict[str, Any]:
    """What a stage's scores depend on besides its model: a cached result with other settings is not reused."""
    return {"test_file": str(test_file), "test_sha256": file_sha256(test_file), "modes": list(modes or []),
            "max_new_tokens": cfg.max_new_tokens, "batch_size": cfg.batch_size,
            "sampled_k": cfg.sampled_k, "hard_level": cfg.hard_level, "seed": seed, "sampler": cfg.sampler_args,
            "check": cfg.check,
            "trust_remote_code": trust_remote_code}  # fmt: skip


def stage_sampler(model_dir: str, cfg: EvalConfig, trust_remote_code: bool = False) -> Sampler:
    """The evaluation's sampler over one stage's model (``evaluation.sampler_args`` keys, its batch size)."""
    keys = {"backend": "transformers", **cfg.sampler_args, "model": str(model_dir), "batch_size": cfg.batch_size}
    return make_sampler(SamplerConfig(**keys, trust_remote_code=trust_remote_code))


def evaluate_stage(
    name: str,
    model_dir: str,
    modes: list[str],
    test_file: str,
    cfg: EvalConfig,
    eval_dir: Path,
    seed: int,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Greedy results in ``modes`` and sampled slow-mode accuracy (avg@k, T=1) on the hard problems."""
    cached = eval_dir / f"{name}.json"
    # Every reply as JSONL beside the scores: what a reader checks when a number looks wrong.
    replies, sampled_path = eval_dir / f"{name}.generations.jsonl", eval_dir / f"{name}.sampled.jsonl"
    settings = eval_settings(cfg, test_file, seed, trust_remote_code, modes)
    stamp = model_stamp(model_dir)
    if cached.exists() and replies.exists():  # scores without their replies (an older run): evaluate again
        results = json.loads(cached.read_text())
        same_model = results.get("model") == str(model_dir) and results.get("model_files") == stamp
        if same_model and results.get("eval_settings") == settings:
            return results
    sampled_path.unlink(missing_ok=True)  # another model's sampled replies must not survive beside these scores
    test = read_records(test_file)
    sampler = stage_sampler(model_dir, cfg, trust_remote_code)
    try:
        check = benchmarks.check if cfg.check == "benchmark" else exact_match
        params = dict(max_new_tokens=cfg.max_new_tokens, seed=seed, sampler=sampler, check=check)
        results = evaluate(None, None, test, modes=modes, generations_path=replies, **params)
        hard = [r for r in test if bucket(r) == cfg.hard_level]
        if hard and cfg.sampled_k > 1 and "slow" in modes:
            sampled = evaluate(None, None, hard, modes=["slow"], k=cfg.sampled_k, temperature=1.0, top_p=1.0,
                               generations_path=sampled_path, **params)  # fmt: skip
            results["sampled_hard"] = {"k": cfg.sampled_k, "avg": sampled["modes"]["slow"][f"avg@{cfg.sampled_k}"],
                                       "prompts": len(hard)}  # fmt: skip
    finally:
        close = getattr(sampler, "close", None)
        if close is not None:  # a vLLM engine gives its GPU back before the next stage's model is loaded
            close()
    results["model"] = str(model_dir)
    results["model_files"] = stamp
    results["eval_settings"] = settings
    write_results(results, eval_dir, name=name)
    write_json_atomic(cached, results)
    return results
