"""Mode-aware evaluation: accuracy, output tokens, tag compliance and the auto mode's choices, per mode.

For each mode (fast ``/no_think``, slow ``/think``, auto ``/auto_think``) every prompt gets ``k`` replies
(greedy when ``k == 1``), and :func:`evaluate` reports:

* ``avg@k`` (mean accuracy over all replies) and ``pass@k`` (share of prompts with at least one correct reply,
  the unbiased estimator of Chen et al. 2021 with ``n = k``);
* mean output tokens; tag compliance (``/no_think`` wants an empty think block, ``/think`` a non-empty one,
  ``/auto_think`` either, always closed); the share of fast replies, overall and per difficulty bucket;
* for auto mode, the **right-mode rate**: how often auto picked the mode that was right for that prompt, where
  the right mode comes from the same prompt's fast and slow results through the fusion label rule (fast when fast
  mode is correct, i.e. its accuracy reaches ``right_mode_threshold``, and not below slow mode's; slow otherwise).

Results are written as JSON, a markdown table and a PNG of accuracy against mean tokens per mode.
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from train.core.checks import Checker, exact_match
from train.core.data import difficulty_bucket
from train.core.modes import Mode, ThinkFormat
from train.core.plots import pyplot, save_figure
from train.eval.labels import LabelRule, label_from_rates
from train.sampling.base import Sampler, SamplerConfig, SamplingParams, make_sampler
from train.sampling.reply import Reply

logger = logging.getLogger(__name__)


def complies(mode: Mode, parsed_mode: str) -> bool:
    """Whether a reply's think block matches the mode that was asked for."""
    if parsed_mode in ("unclosed", "none"):
        return False
    return mode == Mode.AUTO or (parsed_mode == "fast") == (mode == Mode.FAST)


def score_generations(
    records: Sequence[dict[str, Any]],
    generations: Sequence[Sequence[Reply]],
    mode: Mode,
    check: Checker,
    *,
    think: ThinkFormat,
) -> dict[str, float]:
    """Accuracy, mean tokens, compliance and fast-choice rate of sampled replies (one list per record).

    Replies are read with ``think``, the format of the model that wrote them (``sampler.think``).
    """
    n = correct = tokens = compliant = fast = 0
    for record, replies in zip(records, generations):
        for r in replies:
            parsed = think.parse(r.text)
            n += 1
            correct += check(parsed.answer, record)
            tokens += r.num_tokens
            compliant += complies(mode, parsed.mode)
            fast += parsed.mode == "fast"
    n = max(n, 1)
    return {"accuracy": correct / n, "mean_tokens": tokens / n, "compliance": compliant / n, "fast_rate": fast / n}


def default_sampler(model: Any, tokenizer: Any, batch_size: int = 64, self_repair: bool = False) -> Sampler:
    """A transformers sampler over a loaded ``model``; replies are read in its ``tokenizer``'s think format."""
    config = SamplerConfig(backend="transformers", batch_size=batch_size, self_repair=self_repair)
    return make_sampler(config, model=model, tokenizer=tokenizer)


def evaluate_modes(
    model: Any,
    tokenizer: Any,
    records: Sequence[dict[str, Any]],
    modes: Sequence[Mode | str] = (Mode.SLOW, Mode.FAST),
    check: Checker = exact_match,
    max_new_tokens: int = 256,
    batch_size: int = 64,
    *,
    sampler: Sampler | None = None,
) -> dict[str, dict[str, float]]:
    """Greedy accuracy per mode on ``records`` (prompts get the mode's tag).

    Samples with ``sampler`` when given (``model`` and ``tokenizer`` may then be None), else with a transformers
    sampler over ``model``.
    """
    sampler = sampler or default_sampler(model, tokenizer, batch_size)
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=max_new_tokens)
    prompts = [r["prompt"] for r in records]
    results = {}
    for mode in map(Mode.parse, modes):
        replies = sampler.sample(prompts, params, mode=mode)
        results[mode.value] = score_generations(records, replies, mode, check, think=sampler.think)
        logger.info("%s: %s", mode.value, results[mode.value])
    return results


# -------------------------------------------------------------------------------------------- detailed scoring


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct (Chen et al. 2021)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def bucket(record: dict[str, Any]) -> str:
    """The difficulty bucket of a record (:func:`train.core.data.difficulty_bucket`), or ``all`` without one."""
    d = record.get("difficulty")
    return "all" if d is None or d == "" else difficulty_bucket(d)


def bucket_sort_key(name: str) -> tuple[int, float, str]:
    """Sort buckets by number (``1 < 2.5 < 10``), named ones (``all``, ``c0``) after them by name."""
    try:
        return (0, float(name), name)
    except ValueError:
        return (1, 0.0, name)


def per_prompt_scores(
    records: Sequence[dict[str, Any]],
    generations: Sequence[Sequence[Reply]],
    mode: Mode | str,
    check: Checker,
    *,
    think: ThinkFormat,
) -> list[dict[str, Any]]:
    """For each prompt: its replies' correctness, tokens, think-block modes and compliance.

    Replies are read with ``think``, the format of the model that wrote them (``sampler.think``).
    """
    mode = Mode.parse(mode)
    if len(records) != len(generations):
        raise ValueError(f"{len(records)} records but {len(generations)} lists of generations")
    out = []
    for record, replies in zip(records, generations):
        if not replies:
            raise ValueError(f"record {record.get('id')!r} has no generations")
        parsed = [think.parse(r.text) for r in replies]
        out.append(
            {
                "id": record.get("id"),
                "bucket": bucket(record),
                "correct": [bool(check(p.answer, record)) for p in parsed],
                "tokens": [r.num_tokens for r in replies],
                "modes": [p.mode for p in parsed],
                "compliant": [complies(mode, p.mode) for p in parsed],
            }
        )
    return out


def summarize(prompts: Sequence[dict[str, Any]], k: int | None = None) -> dict[str, Any]:
    """avg@k, pass@k, mean tokens, compliance and fast share, overall and per difficulty bucket."""
    k = k or min(len(p["correct"]) for p in prompts)
    summary = _summary(prompts, k)
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for p in prompts:
        groups[p["bucket"]].append(p)
    summary["per_difficulty"] = {b: _summary(groups[b], k) for b in sorted(groups, key=bucket_sort_key)}
    return summary


def _summary(prompts: Sequence[dict[str, Any]], k: int) -> dict[str, Any]:
    samples = [
        (c, t, m, ok) for p in prompts for c, t, m, ok in zip(p["correct"], p["tokens"], p["modes"], p["compliant"])
    ]
    n = len(samples)
    if not n:
        raise ValueError("nothing to summarize: no replies")
    return {
        "prompts": len(prompts),
        "samples": n,
        f"avg@{k}": sum(s[0] for s in samples) / n,
        f"pass@{k}": sum(pass_at_k(len(p["correct"]), sum(p["correct"]), k) for p in prompts) / len(prompts),
        "mean_tokens": sum(s[1] for s in samples) / n,
        "compliance": sum(s[3] for s in samples) / n,
        "fast_share": sum(s[2] == "fast" for s in samples) / n,
    }


def right_modes(fast: Sequence[dict[str, Any]], slow: Sequence[dict[str, Any]], threshold: float = 0.5) -> list[str]:
    """The mode that was right for each prompt: fast when fast accuracy reaches ``threshold`` and is not below slow's.

    The fusion label rule with ``margin = 0`` (:func:`train.eval.labels.label_from_rates`).
    """
    rule = LabelRule(fast_threshold=threshold, margin=0.0)
    out = []
    for f, s in zip(fast, slow, strict=True):
        if f["id"] != s["id"]:
            raise ValueError(f"fast and slow results are not aligned: {f['id']!r} != {s['id']!r}")
        rate = lambda p: sum(p["correct"]) / len(p["correct"])  # noqa: E731
        out.append(label_from_rates(rate(f), rate(s), rule))
    return out


def right_mode_rate(auto: Sequence[dict[str, Any]], right: Sequence[str]) -> float:
    """The share of auto replies whose think block (fast or slow) is the prompt's right mode."""
    hits = n = 0
    for p, mode in zip(auto, right, strict=True):
        for m in p["modes"]:
            n += 1
            hits += m == mode
    return hits / n if n else 0.0


def evaluate(
    model: Any,
    tokenizer: Any,
    records: Sequence[dict[str, Any]],
    modes: Sequence[Mode | str] = (Mode.FAST, Mode.SLOW, Mode.AUTO),
    check: Checker = exact_match,
    k: int = 1,
    temperature: float = 0.6,
    top_p: float = 0.95,
    max_new_tokens: int = 256,
    batch_size: int = 64,
    self_repair: bool = False,
    right_mode_threshold: float = 0.5,
    *,
    sampler: Sampler | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """Generate in every mode and score (see the module docstring). ``k == 1`` decodes greedily.

    Samples with ``sampler`` when given (``model`` and ``tokenizer`` may then be None; ``batch_size`` and
    ``self_repair`` are the sampler's business), else with a transformers sampler over ``model``. Replies are read
    in the sampler's think format.
    """
    sampler = sampler or default_sampler(model, tokenizer, batch_size, self_repair)
    params = SamplingParams(
        n=k, temperature=temperature if k > 1 else 0.0, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed
    )
    texts = [r["prompt"] for r in records]
    prompts = {}
    for mode in map(Mode.parse, modes):
        replies = sampler.sample(texts, params, mode=mode)
        prompts[mode.value] = per_prompt_scores(records, replies, mode, check, think=sampler.think)
    return results_from_scores(prompts, k, right_mode_threshold)


def results_from_scores(
    prompts: dict[str, list[dict[str, Any]]], k: int, right_mode_threshold: float = 0.5
) -> dict[str, Any]:
    """Summaries per mode (keys ``fast``, ``slow``, ``auto``) from per-prompt scores; auto gets its right-mode rate."""
    results: dict[str, Any] = {"k": k, "modes": {}}
    for mode, rows in prompts.items():
        results["modes"][mode] = summarize(rows, k)
    if {"fast", "slow", "auto"} <= prompts.keys():
        right = right_modes(prompts["fast"], prompts["slow"], right_mode_threshold)
        auto = results["modes"]["auto"]
        auto["right_mode_rate"] = right_mode_rate(prompts["auto"], right)
        for b, summary in auto["per_difficulty"].items():
            idx = [i for i, p in enumerate(prompts["auto"]) if p["bucket"] == b]
            summary["right_mode_rate"] = right_mode_rate([prompts["auto"][i] for i in idx], [right[i] for i in idx])
    return results


# ---------------------------------------------------------------------------------------------------- output


def markdown_table(results: dict[str, Any]) -> str:
    """One row per mode: avg@k, pass@k, mean tokens, compliance, fast share, right-mode rate (auto)."""
    k = results["k"]
    lines = [
        f"| mode | avg@{k} | pass@{k} | mean tokens | compliance | fast share | right mode |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, s in results["modes"].items():
        right = s.get("right_mode_rate")
        lines.append(
            f"| {mode} | {s[f'avg@{k}']:.1%} | {s[f'pass@{k}']:.1%} | {s['mean_tokens']:.1f} | "
            f"{s['compliance']:.1%} | {s['fast_share']:.1%} | {'-' if right is None else f'{right:.1%}'} |"
        )
    lines += ["", "Fast share per difficulty:", "", "| mode | " + " | ".join(_buckets(results)) + " |"]
    lines.append("|---|" + "---|" * len(_buckets(results)))
    for mode, s in results["modes"].items():
        cells = [
            f"{s['per_difficulty'][b]['fast_share']:.0%}" if b in s["per_difficulty"] else "-"
            for b in _buckets(results)
        ]
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _buckets(results: dict[str, Any]) -> list[str]:
    names = {b for s in results["modes"].values() for b in s["per_difficulty"]}
    return sorted(names, key=bucket_sort_key)


def plot_accuracy_tokens(results: dict[str, Any], path: str | Path) -> Path:
    """A PNG of accuracy (avg@k) against mean output tokens, one point per mode."""
    plt = pyplot()
    k = results["k"]
    fig, ax = plt.subplots(figsize=(5, 4))
    for mode, s in results["modes"].items():
        ax.scatter(s["mean_tokens"], s[f"avg@{k}"], s=60, label=mode)
        ax.annotate(mode, (s["mean_tokens"], s[f"avg@{k}"]), textcoords="offset points", xytext=(5, 5))
    ax.set_xlabel("mean output tokens")
    ax.set_ylabel(f"accuracy (avg@{k})")
    ax.set_ylim(0, 1.05)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Accuracy against tokens per mode")
    fig.tight_layout()
    return save_figure(fig, path)


def write_results(results: dict[str, Any], out_dir: str | Path, name: str = "eval") -> dict[str, Path]:
    """``<name>.json``, ``<name>.md`` and ``<name>.png`` in ``out_dir`` (each written atomically)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{name}.json", "md": out / f"{name}.md"}
    for key, text in (("json", json.dumps(results, indent=2) + "\n"), ("md", markdown_table(results))):
        tmp = paths[key].with_name(paths[key].name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(paths[key])
    paths["png"] = plot_accuracy_tokens(results, out / f"{name}.png")
    return paths
