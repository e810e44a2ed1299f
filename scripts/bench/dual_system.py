"""Benchmark Stage 2 on the arithmetic world: a slow-mode tiny model becomes a dual-system one on this CPU.

    python scripts/bench/dual_system.py --workdir outputs/bench_dual_system

1. **Starting checkpoint** (timed separately; reused from ``--start`` or an earlier run in the workdir): a ``small``
   char-level model trained by ``recipes/sft.py`` on slow-mode traces of levels 1-3.
2. **Baseline**: the starting checkpoint evaluated greedily on a held-out mix (levels 1, 2, 3 in equal parts;
   easy = levels 1-2, hard = level 3), in every mode.
3. **Dual-system run**: ``recipes/dual_system.py`` with ``recipes/configs/tiny/dual_system.yaml`` (fusion data
   from the starting model's pass rates, phase 1, phase 2), then the same evaluation.

Targets (from the issue): ``/no_think`` compliance >= 99%; fast accuracy on easy problems >= 90%; slow accuracy on
hard problems >= 90% and no more than 2 points below the starting checkpoint; auto accuracy within 3 points of
slow mode's at no more than 60% of its mean tokens. An *oracle* row (per prompt, the fast reply when it is correct,
else the slow one) shows the fewest tokens any mode choice could reach with these fast and slow replies.

Prints the table with wall times; writes ``bench.json`` and ``bench.md`` in the workdir.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from train.core.checks import exact_match
from train.core.cli import run_script, setup_logging
from train.core.data import read_records, write_jsonl
from train.core.loading import load_model_and_tokenizer
from train.core.modes import QWEN3_THINK, Mode, apply_mode
from train.eval.evaluation import markdown_table, per_prompt_scores, results_from_scores
from train.sampling import SamplerConfig, SamplingParams, make_sampler
from train.world.arithmetic import ArithmeticTeacher, make_dataset, make_problems
from train.world.tiny import make_tiny

ROOT = Path(__file__).resolve().parents[2]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="outputs/bench_dual_system", help="working folder (reused between runs)")
    p.add_argument("--start", default=None, help="a slow-mode starting checkpoint (default: build one)")
    p.add_argument("--start-steps", type=int, default=600, help="SFT steps of the starting checkpoint")
    p.add_argument("--n-train", type=int, default=4000, help="training problems (start SFT and fusion prompts)")
    p.add_argument("--n-test", type=int, default=100, help="held-out problems per level (levels 1, 2, 3)")
    p.add_argument("--max-prompts", type=int, default=600, help="prompts labelled for the fusion data")
    p.add_argument("--n-fast", type=int, default=9000,
                   help="fast pool (the recipe's fast_files): the teacher's direct answers to every level-1 problem "
                        "and this many more problems of levels 2 and 3 (2:1), none of them held out for the test; "
                        "0: no pool")  # fmt: skip
    p.add_argument("--n-phase2", type=int, default=1200,
                   help="phase-2 labelling prompts (the recipe's phase2_files), labelled by the phase-1 model only: "
                        "30 level-1 problems, the rest new problems of levels 2 and 3 (1:1)")  # fmt: skip
    p.add_argument(
        "--replay",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="replay the starting checkpoint's slow SFT data in phase 1 (the recipe's replay_files)",
    )
    p.add_argument("--phase1-steps", type=int, default=1000, help="phase-1 steps")
    p.add_argument("--phase2-steps", type=int, default=500, help="phase-2 steps")
    p.add_argument("--config", default=str(ROOT / "recipes/configs/tiny/dual_system.yaml"), help="recipe config")
    p.add_argument("--fusion-file", default=None, help="reuse a fusion.jsonl built before (skips the first build)")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more recipe overrides (--key value ...)")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------------------ steps


def build_start(work: Path, args: argparse.Namespace) -> tuple[Path, float, bool]:
    """The starting checkpoint: given, reused, or trained now. Returns (path, seconds, built)."""
    if args.start:
        return Path(args.start), 0.0, False
    out = work / "start"
    if (out / "model.safetensors").exists():
        return out, 0.0, False
    t = time.perf_counter()
    write_world(work / "data", args.n_train)
    texts = [r["prompt"] + r["response"] for r in read_records(work / "data" / "train.jsonl")]
    make_tiny(work / "init", corpus=texts[:200] + ["carry check add"], size="small", seed=0, think=QWEN3_THINK)
    run_script(ROOT / "recipes/sft.py", *[
        "--config", str(ROOT / "recipes/configs/tiny/sft.yaml"), "--model_name_or_path", str(work / "init"),
        "--train_files", str(work / "data" / "train.jsonl"), "--output_dir", str(out),
        "--max_steps", str(args.start_steps), "--logging_steps", "100", "--disable_tqdm", "true",
    ])  # fmt: skip
    return out, time.perf_counter() - t, True


def write_world(folder: Path, n_train: int) -> None:
    """The arithmetic world's slow-mode training records (levels 1-3) and a token test set."""
    train, test = make_dataset(n_train, 10, [1, 2, 3], ["slow"], think=QWEN3_THINK)
    write_jsonl(folder / "train.jsonl", train)
    write_jsonl(folder / "test.jsonl", test)


def held_out(work: Path, args: argparse.Namespace, train_ids: set[str]) -> tuple[list[dict], list[dict]]:
    """``n_test`` problems of each level 1, 2, 3, disjoint from the training problems, and ``n_test`` more of level 2.

    Level 1 has only 100 distinct problems, all of them in any few-thousand-problem training set, so level-1
    problems cannot be held out: they are drawn from all 100 (at most ``n_test``). The extra level-2 problems
    make the easy-rich mix (levels 1 : 2 : 3 = 1 : 2 : 1, easy : hard = 3 : 1) with the equal-thirds ones.
    """
    rows = make_problems(min(args.n_test, 100), (1,), seed=101)
    for level in (2, 3):
        rows += make_problems(args.n_test, (level,), seed=100 + level, exclude=train_ids)
    extra = make_problems(args.n_test, (2,), seed=112, exclude=train_ids | {r["id"] for r in rows})
    write_jsonl(work / "test.jsonl", rows)
    write_jsonl(work / "test_extra_level2.jsonl", extra)
    return rows, extra


def phase2_pool(work: Path, args: argparse.Namespace, exclude: set[str]) -> Path | None:
    """Problems for phase-2 labels only: 30 level-1 problems, the rest levels 2 and 3 (1:1), none in ``exclude``.

    Level 1 has only 100 problems, all in training and in the test mix, so its 30 cannot avoid them; the tiny
    config's ``phase2_seen_buckets: ["1"]`` trains them in phase 1 all the same (a level-1 label from an unseen
    problem would understate the final model, which has seen them all). Levels 2 and 3 avoid the training and
    test problems (``exclude``) and are kept out of phase 1.
    """
    if args.n_phase2 <= 0:
        return None
    n1 = min(30, args.n_phase2 // 10)
    rest = args.n_phase2 - n1
    rows = make_problems(n1, (1,), seed=301)
    rows += make_problems(rest // 2, (2,), seed=302, exclude=exclude)
    rows += make_problems(rest - rest // 2, (3,), seed=303, exclude=exclude)
    return write_jsonl(work / "data" / f"phase2_{args.n_phase2}.jsonl", rows)


def fast_pool(work: Path, args: argparse.Namespace, test_ids: set[str]) -> Path | None:
    """The teacher's fast answers (``/no_think``) to a large pool of problems, none of them a test problem.

    Every level-1 problem (there are 100; the test set has them all too, they cannot be held out), ``2/3 n_fast``
    level-2 and ``1/3 n_fast`` level-3 problems. The recipe drops the prompts it holds out for phase-2 labelling
    (none of level 1, see :func:`phase2_pool`).
    """
    if args.n_fast <= 0:
        return None
    problems = make_problems(100, (1,), seed=201)
    problems += make_problems(args.n_fast * 2 // 3, (2,), seed=202, exclude=test_ids)
    problems += make_problems(args.n_fast // 3, (3,), seed=203, exclude=test_ids)
    teacher = ArithmeticTeacher(QWEN3_THINK, seed=0)
    rows = [{**p, "prompt": apply_mode(p["prompt"], Mode.FAST)[0]["content"], "response": teacher.respond(p, "fast")}
            for p in problems]  # fmt: skip
    return write_jsonl(work / "data" / f"fast_pool_{args.n_fast}.jsonl", rows)


def fusion_prompts(work: Path, args: argparse.Namespace) -> Path:
    """The training problems (with their slow teacher traces as the pool), the recipe's ``train_files``."""
    path = work / "data" / "train.jsonl"
    if not path.exists():
        write_world(work / "data", args.n_train)
    return path


def run_recipe(
    work: Path,
    start: Path,
    train_file: Path,
    fast_file: Path | None,
    phase2_file: Path | None,
    args: argparse.Namespace,
) -> Path:
    out = work / "dual"
    run_script(ROOT / "recipes/dual_system.py", *[
        "--config", args.config, "--model_name_or_path", str(start), "--train_files", str(train_file),
        "--output_dir", str(out), "--max_prompts", str(args.max_prompts),
        "--phase1_steps", str(args.phase1_steps), "--phase2_steps", str(args.phase2_steps),
        *(["--fast_files", str(fast_file)] if fast_file else []),
        *(["--phase2_files", str(phase2_file)] if phase2_file else []),
        *(["--replay_files", str(train_file)] if args.replay else []),
        "--disable_tqdm", "true", *(["--fusion_file", args.fusion_file] if args.fusion_file else []), *args.extra,
    ])  # fmt: skip
    return out


def evaluate_model(
    path: Path, test: list[dict], modes: tuple[str, ...] = ("fast", "slow", "auto"), slow_tag: bool = True
) -> tuple[dict[str, list], float]:
    """Greedy per-prompt scores in ``modes`` (for the tables, the oracle and subsets) and the wall time.

    ``slow_tag=False`` asks for slow mode without a tag (the default mode), as a slow-only model was trained.
    """
    t = time.perf_counter()
    model, tok = load_model_and_tokenizer(path)
    sampler = make_sampler(SamplerConfig(batch_size=300), model=model, tokenizer=tok)
    scores = {}
    for mode in modes:
        asked = None if (mode == "slow" and not slow_tag) else mode
        gens = sampler.sample([r["prompt"] for r in test], SamplingParams(max_new_tokens=128), asked)
        scores[mode] = per_prompt_scores(test, gens, mode, exact_match, think=sampler.think)
    return scores, time.perf_counter() - t


def first(scores: dict[str, list], n: int) -> dict[str, list]:
    """The scores of the first ``n`` prompts in every mode (the equal-thirds mix)."""
    return {mode: rows[:n] for mode, rows in scores.items()}


def subset(scores: list[dict], levels: tuple[str, ...], key: str = "correct") -> float:
    rows = [p for p in scores if p["bucket"] in levels]
    values = [v for p in rows for v in p[key]]
    return sum(values) / len(values)


def compliance(scores: list[dict]) -> float:
    values = [v for p in scores for v in p["compliant"]]
    return sum(values) / len(values)


def oracle(fast: list[dict], slow: list[dict]) -> tuple[float, float]:
    """Accuracy and mean tokens when each prompt takes its fast reply if correct, else its slow reply."""
    acc = tokens = 0.0
    for f, s in zip(fast, slow):
        pick = f if f["correct"][0] else s
        acc += pick["correct"][0]
        tokens += pick["tokens"][0]
    return acc / len(fast), tokens / len(fast)


def by_level(fast: list[dict], slow: list[dict], easy: tuple[str, ...]) -> tuple[float, float]:
    """Accuracy and mean tokens when easy levels take their fast reply and the others their slow one."""
    picks = [f if f["bucket"] in easy else s for f, s in zip(fast, slow)]
    return sum(p["correct"][0] for p in picks) / len(picks), sum(p["tokens"][0] for p in picks) / len(picks)


# ----------------------------------------------------------------------------------------------------- report


EASY, HARD = ("1", "2"), ("3",)


def mix_figures(scores: dict[str, list]) -> dict[str, float]:
    """Auto against slow on one test mix, with the two reference mode choices."""
    res = results_from_scores(scores, k=1)["modes"]
    slow_acc, auto_acc = res["slow"]["avg@1"], res["auto"]["avg@1"]
    slow_tok, auto_tok = res["slow"]["mean_tokens"], res["auto"]["mean_tokens"]
    orc_acc, orc_tok = oracle(scores["fast"], scores["slow"])
    lvl_acc, lvl_tok = by_level(scores["fast"], scores["slow"], EASY)
    return {
        "slow_accuracy": slow_acc, "auto_accuracy": auto_acc, "slow_mean_tokens": slow_tok,
        "auto_mean_tokens": auto_tok, "auto_token_ratio": auto_tok / slow_tok,
        "auto_right_mode_rate": res["auto"]["right_mode_rate"],
        "oracle_accuracy": orc_acc, "oracle_mean_tokens": orc_tok, "oracle_token_ratio": orc_tok / slow_tok,
        "by_level_accuracy": lvl_acc, "by_level_mean_tokens": lvl_tok, "by_level_token_ratio": lvl_tok / slow_tok,
    }  # fmt: skip


def auto_rows(m: dict[str, float], name: str) -> list[list[str]]:
    ok = lambda c: "yes" if c else "**no**"  # noqa: E731
    return [
        [f"auto accuracy vs slow ({name})", "within 3 pts", f"slow {m['slow_accuracy']:.1%}",
         f"auto {m['auto_accuracy']:.1%}", ok(m["auto_accuracy"] >= m["slow_accuracy"] - 0.03)],
        [f"auto mean tokens / slow mean tokens ({name})", "<= 60%", f"slow {m['slow_mean_tokens']:.1f}",
         f"auto {m['auto_mean_tokens']:.1f} ({m['auto_token_ratio']:.0%})", ok(m["auto_token_ratio"] <= 0.6)],
        [f"fast on levels 1-2, slow on 3 (reference, {name})", "-", "-",
         f"{m['by_level_accuracy']:.1%} at {m['by_level_mean_tokens']:.1f} tokens ({m['by_level_token_ratio']:.0%})",
         "-"],
        [f"oracle mode choice (reference, {name})", "-", "-",
         f"{m['oracle_accuracy']:.1%} at {m['oracle_mean_tokens']:.1f} tokens ({m['oracle_token_ratio']:.0%})", "-"],
    ]  # fmt: skip


def report(start_scores: dict, final_scores: dict, n_thirds: int) -> tuple[list[list[str]], dict[str, Any]]:
    """The table rows and figures: explicit modes and auto on the equal-thirds mix, auto on the easy-rich mix."""
    thirds, start_thirds = first(final_scores, n_thirds), first(start_scores, n_thirds)
    nt = compliance(thirds["fast"])
    fast_easy = subset(thirds["fast"], EASY)
    slow_hard, slow_hard0 = subset(thirds["slow"], HARD), subset(start_thirds["slow"], HARD)
    eq, rich = mix_figures(thirds), mix_figures(final_scores)
    figures = {
        "no_think_compliance": nt, "fast_accuracy_easy": fast_easy,
        "fast_accuracy_per_level": {lv: subset(thirds["fast"], (lv,)) for lv in ("1", "2", "3")},
        "slow_accuracy_hard": slow_hard, "slow_accuracy_hard_start": slow_hard0,
        "start_slow_accuracy": subset(start_thirds["slow"], ("1", "2", "3")),
        **eq, "easy_rich_mix": rich,
    }  # fmt: skip
    ok = lambda c: "yes" if c else "**no**"  # noqa: E731
    rows = [
        ["/no_think compliance", ">= 99%", f"{compliance(start_thirds['fast']):.1%}", f"{nt:.1%}", ok(nt >= 0.99)],
        ["fast accuracy, easy (levels 1-2)", ">= 90%", f"{subset(start_thirds['fast'], EASY):.1%}",
         f"{fast_easy:.1%}", ok(fast_easy >= 0.90)],
        ["slow accuracy, hard (level 3)", ">= 90%, >= start - 2 pts", f"{slow_hard0:.1%}", f"{slow_hard:.1%}",
         ok(slow_hard >= 0.90 and slow_hard >= slow_hard0 - 0.02)],
        *auto_rows(eq, "equal thirds"),
        *auto_rows(rich, "easy-rich 1:2:1"),
    ]  # fmt: skip
    return rows, figures


def level_table(results: dict[str, Any]) -> str:
    """Accuracy and mean tokens per level and mode."""
    modes = results["modes"]
    levels = sorted({b for m in modes.values() for b in m["per_difficulty"]})
    lines = ["| mode | " + " | ".join(f"level {b}: accuracy, tokens" for b in levels) + " |"]
    lines.append("|---|" + "---|" * len(levels))
    for mode, m in modes.items():
        cells = [f"{m['per_difficulty'][b]['avg@1']:.0%}, {m['per_difficulty'][b]['mean_tokens']:.1f}" for b in levels]
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def table(rows: list[list[str]]) -> str:
    lines = ["| metric | target | start | dual-system | met |", "|---|---|---|---|---|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    setup_logging()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    start, start_s, built = build_start(work, args)
    train_file = fusion_prompts(work, args)
    test, extra = held_out(work, args, {r["id"] for r in read_records(train_file)})
    test_ids = {r["id"] for r in test + extra}
    phase2_file = phase2_pool(work, args, test_ids | {r["id"] for r in read_records(train_file)})
    phase2_ids = {r["id"] for r in read_records(phase2_file)} if phase2_file else set()
    fast_file = fast_pool(work, args, test_ids | phase2_ids)
    everything = test + extra

    # The starting model has no auto mode yet: its fast and slow modes are the baseline.
    # Its slow mode is asked for without a tag, the way it was trained (a ` /think` it never saw derails it).
    start_scores, base_s = evaluate_model(start, everything, ("fast", "slow"), slow_tag=False)
    t = time.perf_counter()
    final_path = run_recipe(work, start, train_file, fast_file, phase2_file, args)
    recipe_s = time.perf_counter() - t
    final_scores, eval_s = evaluate_model(final_path, everything)
    start_results = results_from_scores(first(start_scores, len(test)), k=1)
    final = results_from_scores(first(final_scores, len(test)), k=1)
    final_rich = results_from_scores(final_scores, k=1)

    rows, figures = report(start_scores, final_scores, len(test))
    stats_dir = work / "dual" / ("fusion_phase2" if (work / "dual" / "fusion_phase2").exists() else "fusion")
    fusion_stats = json.loads((stats_dir / "stats.json").read_text())
    times = {"start_checkpoint_s": round(start_s, 1), "start_built_now": built, "baseline_eval_s": round(base_s, 1),
             "dual_system_recipe_s": round(recipe_s, 1), "final_eval_s": round(eval_s, 1)}  # fmt: skip
    n = args.n_test
    text = table(rows)
    text += (
        f"\nEqual-thirds mix: {len(test)} held-out problems ({n} each of levels 1, 2, 3). Easy-rich mix: those plus "
        f"{len(extra)} more held-out level-2 problems ({len(everything)} in all; levels 1 : 2 : 3 = 1 : 2 : 1). "
        f"Greedy, 128-token budget. Fast pool: {args.n_fast} problems; phase-2 labelling prompts: {args.n_phase2} new "
        "problems + the held-out share of the fusion prompts. "
        f"Phase-2 fusion labels ({stats_dir.name}): {fusion_stats['labels']} over {fusion_stats['prompts']} prompts.\n"
        f"\nWall time: dual-system recipe {recipe_s:.0f} s (fusion data + phase 1 {args.phase1_steps} steps + "
        f"phase 2 {args.phase2_steps} steps), evaluation {base_s:.0f} s + {eval_s:.0f} s; starting checkpoint "
        + (f"{start_s:.0f} s ({args.start_steps} SFT steps)" if built else "reused")
        + ".\n"
    )
    text += "\nEqual-thirds mix, per mode:\n\n" + markdown_table(final)
    text += "\nPer level (equal-thirds mix):\n\n" + level_table(final)
    text += "\nEasy-rich mix, per mode:\n\n" + markdown_table(final_rich)
    print(text)
    out = {
        "figures": figures,
        "times": times,
        "start": start_results,
        "final": final,
        "final_easy_rich": final_rich,
        "fusion_stats": fusion_stats,
        "args": vars(args),
    }
    (work / "bench.json").write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    (work / "bench.md").write_text(text, encoding="utf-8")
    return out


if __name__ == "__main__":
    main()
