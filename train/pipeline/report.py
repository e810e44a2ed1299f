"""The run's tables, claims, plots and report.

``summary.md`` holds what the run measured and nothing that varies between identical runs (no wall time, no path),
so two fresh runs give the same file; ``report.md`` adds wall times, the commands, the plots (accuracy against
tokens per mode for every stage on one PNG; the trainers' loss, reward and KL/entropy curves from their
``trainer_state.json`` logs) and the per-difficulty tables.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from train.core.plots import pyplot, save_accuracy_figure, save_figure
from train.eval.evaluation import bucket_sort_key
from train.pipeline.config import EvalConfig, PipelineConfig
from train.pipeline.manifests import trainer_logs
from train.pipeline.plan import Step

MODES = ("fast", "slow", "auto")


def pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def level_stats(results: dict[str, Any], mode: str, levels: list[str]) -> tuple[float | None, float | None]:
    """Accuracy and mean tokens of ``mode`` over the difficulty buckets ``levels`` (weighted by replies)."""
    m = results.get("modes", {}).get(mode)
    if m is None:
        return None, None
    parts = [m["per_difficulty"][b] for b in levels if b in m["per_difficulty"]]
    n = sum(p["samples"] for p in parts)
    if not n:
        return None, None
    acc = sum(p["avg@1"] * p["samples"] for p in parts) / n
    return acc, sum(p["mean_tokens"] * p["samples"] for p in parts) / n


def overall(results: dict[str, Any], mode: str, key: str) -> float | None:
    m = results.get("modes", {}).get(mode)
    return None if m is None else m[key]


def figures(results: dict[str, Any], ev: EvalConfig) -> dict[str, float | None]:
    """The numbers the tables and the claims read, from one stage's results."""
    hard, easy = [ev.hard_level], list(ev.easy_levels)
    slow_tok = overall(results, "slow", "mean_tokens")
    auto_tok = overall(results, "auto", "mean_tokens")
    out = {
        "slow_easy": level_stats(results, "slow", easy)[0],
        "slow_hard": level_stats(results, "slow", hard)[0],
        "slow_hard_sampled": results.get("sampled_hard", {}).get("avg"),
        "slow": overall(results, "slow", "avg@1"),
        "slow_tokens": slow_tok,
        "fast_easy": level_stats(results, "fast", easy)[0],
        "fast": overall(results, "fast", "avg@1"),
        "no_think_compliance": overall(results, "fast", "compliance"),
        "auto": overall(results, "auto", "avg@1"),
        "auto_tokens": auto_tok,
        "auto_fast_share": overall(results, "auto", "fast_share"),
    }
    out["auto_token_ratio"] = auto_tok / slow_tok if auto_tok is not None and slow_tok else None
    routed = routed_tokens(results, easy)
    out["routed_token_ratio"] = routed / slow_tok if routed is not None and slow_tok else None
    return out


def routed_tokens(results: dict[str, Any], easy: list[str]) -> float | None:
    """Mean tokens had auto answered every ``easy`` bucket as fast mode does and the rest as slow mode does.

    The level-routing reference printed beside auto's token claim: what a router by difficulty level alone would
    spend. Not a floor: an auto mode that also answers the hard prompts fast mode gets right spends less.
    """
    modes = results.get("modes", {})
    if "fast" not in modes or "slow" not in modes:
        return None
    slow, fast = modes["slow"]["per_difficulty"], modes["fast"]["per_difficulty"]
    parts = [((fast if b in easy else slow).get(b), s["samples"]) for b, s in slow.items()]
    if any(p is None for p, _ in parts) or not sum(n for _, n in parts):
        return None
    return sum(p["mean_tokens"] * n for p, n in parts) / sum(n for _, n in parts)


def summary_table(cfg: PipelineConfig, stages: dict[str, dict[str, Any]]) -> str:
    k = cfg.evaluation.sampled_k
    lines = [
        f"| stage | slow L1-2 | slow L{cfg.evaluation.hard_level} | slow L{cfg.evaluation.hard_level} sampled "
        f"(avg@{k}, T=1) | slow all | slow tokens | fast L1-2 | /no_think compliance | auto all | auto tokens "
        "(of slow) | auto fast share |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in cfg.stages:
        if s.name not in stages:
            continue
        f = figures(stages[s.name], cfg.evaluation)
        tokens = "-" if f["slow_tokens"] is None else f"{f['slow_tokens']:.1f}"
        auto_tokens = "-" if f["auto_tokens"] is None else f"{f['auto_tokens']:.1f} ({f['auto_token_ratio']:.1%})"
        lines.append(
            f"| {s.title or s.name} | {pct(f['slow_easy'])} | {pct(f['slow_hard'])} | {pct(f['slow_hard_sampled'])} "
            f"| {pct(f['slow'])} | {tokens} | {pct(f['fast_easy'])} | {pct(f['no_think_compliance'])} "
            f"| {pct(f['auto'])} | {auto_tokens} | {pct(f['auto_fast_share'])} |"
        )
    return "\n".join(lines) + "\n"


def _last(cfg: PipelineConfig, recipe: str, stages: dict[str, Any]) -> str | None:
    names = [s.name for s in cfg.stages if s.recipe == recipe and s.name in stages]
    return names[-1] if names else None


def claims(cfg: PipelineConfig, stages: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The method's claims, each checked on this run's table (a claim whose stages did not run is left out)."""
    ev = cfg.evaluation
    f = {name: figures(r, ev) for name, r in stages.items()}
    order = [s.name for s in cfg.stages if s.name in stages]
    base = order[0] if order else None
    distill, rl, final = _last(cfg, "distill", stages), _last(cfg, "grpo", stages), _last(cfg, "dual_system", stages)
    out: list[dict[str, Any]] = []

    def add(claim: str, measured: str, met: bool) -> None:
        out.append({"claim": claim, "measured": measured, "met": bool(met)})

    if base and distill and base != distill:
        a, b = f[base]["slow_hard"], f[distill]["slow_hard"]
        add(f"distillation raises hard accuracy over the base ({base} -> {distill}, slow L{ev.hard_level})",
            f"{pct(a)} -> {pct(b)}", b > a)  # fmt: skip
    if distill and rl:
        a, b = f[distill]["slow_hard"], f[rl]["slow_hard"]
        add(f"RL raises it again ({distill} -> {rl}, slow L{ev.hard_level} greedy)", f"{pct(a)} -> {pct(b)}", b > a)
        a, b = f[distill]["slow_hard_sampled"], f[rl]["slow_hard_sampled"]
        if a is not None and b is not None:
            add(f"RL raises sampled accuracy ({distill} -> {rl}, slow L{ev.hard_level}, T=1)",
                f"{pct(a)} -> {pct(b)}", b > a)  # fmt: skip
    if final:
        g = f[final]
        add("/no_think compliance >= 99%", pct(g["no_think_compliance"]), (g["no_think_compliance"] or 0) >= 0.99)
        add("fast accuracy on easy (L1-2) >= 90%", pct(g["fast_easy"]), (g["fast_easy"] or 0) >= 0.90)
        stage1 = rl or distill
        if stage1:
            a, b = f[stage1]["slow_hard"], g["slow_hard"]
            add(f"slow accuracy on hard within 2 points of the Stage-1 model ({stage1})",
                f"{pct(a)} -> {pct(b)}", b is not None and a is not None and b >= a - 0.02)  # fmt: skip
        if g["auto"] is not None and g["slow"] is not None:
            add("auto accuracy within 3 points of slow (equal thirds)",
                f"auto {pct(g['auto'])}, slow {pct(g['slow'])}", g["auto"] >= g["slow"] - 0.03)  # fmt: skip
            # One decimal: a ratio of 65.1% must not read as the 65% it misses.
            measured = f"{g['auto_tokens']:.1f} of {g['slow_tokens']:.1f} ({g['auto_token_ratio']:.1%})"
            if g["routed_token_ratio"] is not None:
                easy = "-".join(ev.easy_levels)
                measured += f"; L{easy} fast and the rest slow: {g['routed_token_ratio']:.1%}"
            add("auto tokens <= 65% of slow's (equal thirds)", measured, g["auto_token_ratio"] <= 0.65)
    return out


def claims_table(items: list[dict[str, Any]]) -> str:
    lines = ["| claim | measured | met |", "|---|---|---|"]
    lines += [f"| {c['claim']} | {c['measured']} | {'yes' if c['met'] else '**no**'} |" for c in items]
    return "\n".join(lines) + "\n"


def level_counts(levels: list[str]) -> str:
    """How the held-out problems split over difficulty levels, as the summary's header says it."""
    counts = Counter(levels)
    if len(set(counts.values())) == 1 and "all" not in counts:
        return "equal parts per level"
    return "per level: " + ", ".join(f"{k}: {counts[k]}" for k in sorted(counts, key=bucket_sort_key))


def summary_text(cfg: PipelineConfig, stages: dict[str, dict[str, Any]], levels: list[str]) -> str:
    """The summary: its header, the per-stage table and the claims. ``levels``: each held-out problem's level."""
    ev = cfg.evaluation
    head = (f"Held-out: {len(levels)} problems ({level_counts(levels)}), greedy, {ev.max_new_tokens}-token budget; "
            f"sampled: {ev.sampled_k} replies per level-{ev.hard_level} problem at T=1 "
            f"(seed {cfg.seed}).\n\n")  # fmt: skip
    return head + summary_table(cfg, stages) + "\n" + claims_table(claims(cfg, stages))


# ------------------------------------------------------------------------------------------------------ plots


def plot_accuracy_tokens(cfg: PipelineConfig, stages: dict[str, dict[str, Any]], path: Path) -> Path:
    """Accuracy against mean tokens, one point per (stage, mode): markers by mode, colours by stage."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    markers = {"fast": "o", "slow": "s", "auto": "^"}
    for i, s in enumerate(x for x in cfg.stages if x.name in stages):
        for mode, m in stages[s.name]["modes"].items():
            ax.scatter(m["mean_tokens"], m["avg@1"], marker=markers.get(mode, "x"), color=f"C{i}", s=60,
                       label=f"{s.title or s.name}: {mode}")  # fmt: skip
    title = "Accuracy against tokens, per stage and mode"
    return save_accuracy_figure(
        fig, ax, path, "mean output tokens", "accuracy (greedy)", title, fontsize=7, loc="lower right"
    )


CURVE_KEYS = (("loss", "loss"), ("reward", "reward"), ("kl", "kl"), ("entropy", "entropy"))


def plot_training_curves(steps: list[Step], path: Path) -> Path | None:
    """One panel per logged quantity (loss, reward, KL, entropy), one line per trainer run of every stage."""
    series: dict[str, list[tuple[str, list[int], list[float]]]] = {k: [] for k, _ in CURVE_KEYS}
    for step in steps:
        for run in trainer_logs(step.output_dir):
            for key, _ in CURVE_KEYS:
                points = [(h["step"], h[key]) for h in run["log_history"] if key in h and "step" in h]
                if points:
                    label = f"{step.name}/{run['run']}".rstrip("/.")
                    series[key].append((label, [p[0] for p in points], [p[1] for p in points]))
    panels = [k for k, v in series.items() if v]
    if not panels:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    for ax, key in zip(axes[0], panels):
        for label, xs, ys in series[key]:
            ax.plot(xs, ys, label=label)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    return save_figure(fig, path)


# ----------------------------------------------------------------------------------------------------- report


def per_difficulty_table(cfg: PipelineConfig, stages: dict[str, dict[str, Any]]) -> str:
    levels = sorted({b for r in stages.values() for m in r["modes"].values() for b in m["per_difficulty"]})
    lines = ["| stage | mode | " + " | ".join(f"L{b} acc, tokens" for b in levels) + " | all |",
             "|---|---|" + "---|" * (len(levels) + 1)]  # fmt: skip
    for s in cfg.stages:
        for mode, m in stages.get(s.name, {}).get("modes", {}).items():
            cells = [
                f"{m['per_difficulty'][b]['avg@1']:.0%}, {m['per_difficulty'][b]['mean_tokens']:.1f}"
                if b in m["per_difficulty"] else "-"
                for b in levels
            ]  # fmt: skip
            lines.append(f"| {s.title or s.name} | {mode} | " + " | ".join(cells)
                         + f" | {m['avg@1']:.1%}, {m['mean_tokens']:.1f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def write_report(cfg: PipelineConfig, steps: list[Step], stages: dict[str, dict[str, Any]], run_dir: Path,
                 summary: str, world_seconds: float | None) -> Path:  # fmt: skip
    """``report.md`` with the tables, the claims, both plots, wall time and the command of every stage."""
    png = plot_accuracy_tokens(cfg, stages, run_dir / "accuracy_tokens.png") if stages else None
    curves = plot_training_curves(steps, run_dir / "training_curves.png")
    lines = [f"# Pipeline report: {cfg.name}", "", "## Summary", "", summary, "## Wall time per stage", "",
             "| stage | recipe | wall | CPU (user + system) | model |", "|---|---|---|---|---|"]  # fmt: skip
    if world_seconds is not None:
        lines.append(f"| world (data, teacher pool) | - | {world_seconds:.0f} s | - | - |")
    total, total_cpu = world_seconds or 0.0, 0.0
    for step in steps:
        d = step.done or {}
        total += d.get("seconds", 0.0)
        total_cpu += d.get("cpu_seconds", 0.0)
        wall = f"{d['seconds']:.0f} s" if "seconds" in d else "not run"
        cpu = f"{d['cpu_seconds']:.0f} s" if "cpu_seconds" in d else "-"
        attempts = d.get("attempts", [])
        if len(attempts) > 1:  # a killed or failed attempt's CPU time is not known
            wall += f" ({len(attempts)} attempts: " + " + ".join(f"{a:.0f}" for a in attempts) + " s)"
            cpu += " (the last attempt)"
        lines.append(f"| {step.stage.title or step.name} | {step.stage.recipe} | {wall} | {cpu} "
                     f"| `{d.get('model', '-')}` |")  # fmt: skip
    lines += ["", f"Training stages and data: {total:.0f} s of wall time, {total_cpu:.0f} s of CPU time in the "
              "stage processes (evaluation not included).", ""]  # fmt: skip
    lines += ["## Accuracy and mean tokens per mode and difficulty", "", per_difficulty_table(cfg, stages)]
    if png:
        lines += ["## Accuracy against tokens", "", f"![accuracy against tokens]({png.name})", ""]
    if curves:
        lines += ["## Training curves", "", "From each trainer's `trainer_state.json` log history.", "",
                  f"![training curves]({curves.name})", ""]  # fmt: skip
    lines += ["## Commands", ""]
    for step in steps:
        lines += [f"`{step.name}`:", "", "```", " ".join(step.command), "```", ""]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def write_summary(run_dir: Path, summary: str, stages: dict[str, Any], cfg: PipelineConfig) -> None:
    (run_dir / "summary.md").write_text(summary, encoding="utf-8")
    data = {"name": cfg.name, "seed": cfg.seed, "think_format": cfg.think_format,
            "stages": {k: {kk: vv for kk, vv in v.items() if kk != "model"} for k, v in stages.items()},
            "claims": claims(cfg, stages)}  # fmt: skip
    (run_dir / "summary.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
