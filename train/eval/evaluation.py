"""Mode-aware evaluation: accuracy, output tokens, tag compliance and the auto mode's choices, per mode.

For each mode (fast ``/no_think``, slow ``/think``, auto ``/auto_think``) every prompt gets ``n`` replies
(greedy when ``n == 1``), and :func:`evaluate` reports:

* ``avg@n`` (mean accuracy over all replies; also under ``avg@k`` for each requested ``k``, of which it is the
  unbiased estimate) and ``pass@k`` for each requested ``k <= n`` (the unbiased estimator of Chen et al. 2021 from
  the ``n`` samples, :mod:`train.eval.passk`);
* mean output tokens; the truncation rate (replies that hit ``max_new_tokens``); tag compliance (``/no_think``
  wants an empty think block, ``/think`` a non-empty one, ``/auto_think`` either, always closed); the share of fast
  replies, overall and per difficulty bucket;
* accuracy over token budgets (the curve :func:`train.eval.passk.budget_curve` reads off the full-budget run);
* for auto mode, the **right-mode rate**: how often auto picked the mode that was right for that prompt, where
  the right mode comes from the same prompt's fast and slow results through the fusion label rule (fast when fast
  mode is correct, i.e. its accuracy reaches ``right_mode_threshold``, and not below slow mode's; slow otherwise).

The results record the sampling settings (``results["sampling"]``). They are written as JSON, a markdown table, a
PNG of accuracy against mean tokens per mode and a PNG of accuracy over token budgets; every reply, with its
correctness, tokens and finish reason, can be written as JSONL (``generations_path``).
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from train.core.checks import Checker, exact_match
from train.core.data import difficulty_bucket, write_jsonl
from train.core.modes import Mode, ThinkFormat
from train.core.plots import pyplot, save_accuracy_figure
from train.eval.labels import LabelRule, label_from_rates
from train.eval.passk import budget_curve, budget_grid, ks_for, mean_pass_at_k, plot_budget_curves
from train.eval.passk import pass_at_k as pass_at_k  # re-exported: its home was here
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
    """For each prompt: its replies' correctness, tokens, think-block modes, compliance and truncation.

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
                "truncated": [r.truncated for r in replies],
            }
        )
    return out


def summarize(prompts: Sequence[dict[str, Any]], k: int | Sequence[int] | None = None) -> dict[str, Any]:
    """avg@n, pass@k (each ``k``; default 1, 2, 4, ..., n), mean tokens, truncation rate, compliance and fast
    share, overall and per difficulty bucket. ``n`` is the fewest replies a prompt has."""
    if not prompts:
        raise ValueError("nothing to summarize: no prompts")
    n = min(len(p["correct"]) for p in prompts)
    ks = ks_for(n, k)
    summary = _summary(prompts, n, ks)
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for p in prompts:
        groups[p["bucket"]].append(p)
    summary["per_difficulty"] = {b: _summary(groups[b], n, ks) for b in sorted(groups, key=bucket_sort_key)}
    return summary


def _summary(prompts: Sequence[dict[str, Any]], n: int, ks: Sequence[int]) -> dict[str, Any]:
    samples = [
        (c, t, m, ok) for p in prompts for c, t, m, ok in zip(p["correct"], p["tokens"], p["modes"], p["compliant"])
    ]
    count = len(samples)
    if not count:
        raise ValueError("nothing to summarize: no replies")
    accuracy = sum(s[0] for s in samples) / count
    # avg@k is the mean accuracy of k replies, whose estimate from n >= k replies is the mean over all n
    out: dict[str, Any] = {"prompts": len(prompts), "samples": count}
    out.update({f"avg@{k}": accuracy for k in sorted({*ks, n})})
    out.update({f"pass@{k}": mean_pass_at_k([p["correct"] for p in prompts], k) for k in ks})
    truncated = [t for p in prompts for t in p.get("truncated", [False] * len(p["correct"]))]
    out.update(
        mean_tokens=sum(s[1] for s in samples) / count,
        truncation_rate=sum(truncated) / count,
        compliance=sum(s[3] for s in samples) / count,
        fast_share=sum(s[2] == "fast" for s in samples) / count,
    )
    return out


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
    k: int | Sequence[int] = 1,
    temperature: float = 0.6,
    top_p: float = 0.95,
    max_new_tokens: int = 256,
    batch_size: int = 64,
    self_repair: bool = False,
    right_mode_threshold: float = 0.5,
    *,
    n: int | None = None,
    sampler: Sampler | None = None,
    seed: int | None = None,
    generations_path: str | Path | None = None,
    budget_points: int = 16,
) -> dict[str, Any]:
    """Generate ``n`` replies per prompt in every mode and score them (see the module docstring).

    ``k``: the pass@k values to report (an int or a list); ``n`` (default: the largest ``k``) replies per prompt,
    decoded greedily when ``n == 1``, else sampled at ``temperature``/``top_p`` with ``seed``. Samples with
    ``sampler`` when given (``model`` and ``tokenizer`` may then be None; ``batch_size`` and ``self_repair`` are the
    sampler's business), else with a transformers sampler over ``model``. Replies are read in the sampler's think
    format. ``generations_path``: write every reply there as JSONL (:func:`generation_rows`).
    """
    ks = sorted({k} if isinstance(k, int) else set(k))
    n = n or max(ks)
    ks_for(n, ks)  # every k fits n, before anything is generated
    sampler = sampler or default_sampler(model, tokenizer, batch_size, self_repair)
    params = SamplingParams(
        n=n, temperature=temperature if n > 1 else 0.0, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed
    )
    texts = [r["prompt"] for r in records]
    prompts, rows = {}, []
    for mode in map(Mode.parse, modes):
        replies = sampler.sample(texts, params, mode=mode)
        prompts[mode.value] = per_prompt_scores(records, replies, mode, check, think=sampler.think)
        rows += generation_rows(records, replies, prompts[mode.value], mode.value)
    results = results_from_scores(
        prompts, ks, right_mode_threshold, max_new_tokens=max_new_tokens, budget_points=budget_points
    )
    results["sampling"] = {
        **{key: getattr(params, key) for key in ("n", "temperature", "top_p", "max_new_tokens", "seed")},
        "greedy": params.greedy,
        "sampler": type(sampler).__name__,
        "self_repair": self_repair,
        "think_start": sampler.think.start,
        "think_end": sampler.think.end,
    }
    if generations_path is not None:
        results["generations"] = str(write_jsonl(generations_path, rows))
    return results


def generation_rows(
    records: Sequence[dict[str, Any]], generations: Sequence[Sequence[Reply]], scores: Sequence[dict], mode: str
) -> list[dict[str, Any]]:
    """One row per reply: the record's id, prompt, reference and difficulty, the mode asked, the reply's index,
    text, tokens, finish reason, truncation, correctness, the mode it took and whether that complied."""
    rows = []
    for record, replies, score in zip(records, generations, scores, strict=True):
        for j, reply in enumerate(replies):
            rows.append(
                {
                    "id": record.get("id"),
                    "mode": mode,
                    "sample": j,
                    "prompt": record.get("prompt"),
                    "reference": record.get("answer"),
                    "difficulty": record.get("difficulty"),
                    "text": reply.text,
                    "num_tokens": reply.num_tokens,
                    "finish_reason": reply.finish_reason,
                    "truncated": reply.truncated,
                    "correct": score["correct"][j],
                    "reply_mode": score["modes"][j],
                    "compliant": score["compliant"][j],
                }
            )
    return rows


def results_from_scores(
    prompts: dict[str, list[dict[str, Any]]],
    k: int | Sequence[int] | None,
    right_mode_threshold: float = 0.5,
    *,
    max_new_tokens: int | None = None,
    budget_points: int = 16,
) -> dict[str, Any]:
    """Summaries per mode (keys ``fast``, ``slow``, ``auto``) from per-prompt scores; auto gets its right-mode rate.

    ``k``: the pass@k values (None: 1, 2, 4, ..., n). Each mode gets its accuracy over ``budget_points`` token
    budgets up to ``max_new_tokens`` (default: the longest reply).
    """
    n = min(len(p["correct"]) for rows in prompts.values() for p in rows)
    ks = ks_for(n, k)
    results: dict[str, Any] = {"k": max(ks), "ks": ks, "n": n, "modes": {}}
    longest = max_new_tokens or max(max(p["tokens"]) for rows in prompts.values() for p in rows)
    budgets = budget_grid(max(1, longest), budget_points)
    for mode, rows in prompts.items():
        results["modes"][mode] = summarize(rows, ks)
        results["modes"][mode]["budget_curve"] = {"budgets": budgets, "accuracy": budget_curve(rows, budgets)}
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
    """One row per mode: avg@n, pass@k, mean tokens, truncation, compliance, fast share, right-mode rate (auto)."""
    n, ks = results.get("n", results["k"]), results.get("ks", [results["k"]])
    passes = "".join(f" pass@{k} |" for k in ks)
    lines = [
        f"| mode | avg@{n} |{passes} mean tokens | truncated | compliance | fast share | right mode |",
        "|---|---|" + "---|" * len(ks) + "---|---|---|---|---|",
    ]
    for mode, s in results["modes"].items():
        right = s.get("right_mode_rate")
        cells = "".join(f" {s[f'pass@{k}']:.1%} |" for k in ks)
        lines.append(
            f"| {mode} | {s[f'avg@{n}']:.1%} |{cells} {s['mean_tokens']:.1f} | {s.get('truncation_rate', 0.0):.1%} | "
            f"{s['compliance']:.1%} | {s['fast_share']:.1%} | {'-' if right is None else f'{right:.1%}'} |"
        )
    if "sampling" in results:
        sp = results["sampling"]
        lines += ["", f"Sampling: n={sp['n']}, temperature={sp['temperature']}, top_p={sp['top_p']}, "
                  f"max_new_tokens={sp['max_new_tokens']}, seed={sp['seed']}."]  # fmt: skip
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
    n = results.get("n", results["k"])
    fig, ax = plt.subplots(figsize=(5, 4))
    for mode, s in results["modes"].items():
        ax.scatter(s["mean_tokens"], s[f"avg@{n}"], s=60, label=mode)
        ax.annotate(mode, (s["mean_tokens"], s[f"avg@{n}"]), textcoords="offset points", xytext=(5, 5))
    return save_accuracy_figure(
        fig, ax, path, "mean output tokens", f"accuracy (avg@{n})", "Accuracy against tokens per mode"
    )


def write_results(results: dict[str, Any], out_dir: str | Path, name: str = "eval") -> dict[str, Path]:
    """``<name>.json``, ``<name>.md``, ``<name>.png`` and, when the results have budget curves,
    ``<name>.budget.png`` in ``out_dir`` (each written atomically)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{name}.json", "md": out / f"{name}.md"}
    for key, text in (("json", json.dumps(results, indent=2) + "\n"), ("md", markdown_table(results))):
        tmp = paths[key].with_name(paths[key].name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(paths[key])
    paths["png"] = plot_accuracy_tokens(results, out / f"{name}.png")
    if all("budget_curve" in m for m in results["modes"].values()):
        paths["budget_png"] = plot_budget_curves(results, out / f"{name}.budget.png")
    return paths
