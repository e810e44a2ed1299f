"""Benchmark the rule rewards against naive baselines measured in the same run.

    python scripts/bench/reward_speed.py                       # every part, defaults below
    python scripts/bench/reward_speed.py --part code --solutions 64 --cases 1 5 10 --workers 2

(a) math: ``MathReward.score`` (each reference parsed once per process, short answer texts cached too) against a
naive verifier that parses both the reference and the answer on every call (math-verify ``parse`` + ``verify``,
the same extraction settings); the GRPO shape, ``--generations`` completions per reference, whose final answers
repeat as they do in a group. Every round starts with all caches empty; math-verify's own small LaTeX caches are
emptied before every call in both arms. Both arms must give the same scores (checked). Target: >= 2x.

(b) code: ``CodeReward`` with the full sandbox (namespaces, user switch, limits; one sandbox process per solution,
a fork per case) against a bare ``subprocess.run`` of the same interpreter with the same flags (``-I -S``) per test
case, no limits, compared the same way. Both run on a thread pool of ``--workers``. Overhead = sandbox time /
bare time; target <= 1.5x. Both arms must give the same scores (checked).

(c) verify: the cost of one ``verify_answer`` call by what is already parsed (nothing, the reference, both), per
sample pair; no target, it shows where (a)'s speed-up comes from.

(d) bombs: answers holding numbers too large to compute (issue #15): the value and wall time of one ``MathReward``
call each, and the growth of this process's resident memory; the last one slips past the filter and is killed in
its worker at the time limit (``--bomb-timeout``). Target: every call within the limit plus ~1 s, memory flat.

``MathReward`` verifies in worker processes (``rewards.math.ISOLATE``): its caches, and math-verify's, live there,
so the cache clearing below goes through ``rmath.clear_cache``, which reaches the workers; a worker is started
before any arm is timed.

Arms are interleaved over ``--repeats`` rounds and the median time per arm is reported, which damps the noise of a
shared machine.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from math_verify import verify

import rewards.math as rmath
from rewards.base import extract_answer
from rewards.code import CodeReward, extract_code
from rewards.sandbox import SandboxLimits, compare_output, normalize_tests
from train.core.modes import QWEN3_THINK

THINK = QWEN3_THINK  # the workloads below write Qwen3's think blocks

# ------------------------------------------------------------------------------------------------------ math

# (reference, ways a completion may state it): several completions per prompt, as GRPO samples them.
MATH_ITEMS = [
    ("\\frac{1}{2}", ["$\\boxed{\\frac{1}{2}}$", "so $\\boxed{0.5}$", "$\\boxed{\\frac{2}{4}}$", "$\\boxed{1/3}$"]),
    ("2\\sqrt{3}", ["$\\boxed{\\sqrt{12}}$", "$\\boxed{2\\sqrt{3}}$", "$\\boxed{3.46}$", "$\\boxed{\\sqrt{3}}$"]),
    ("x^2+2x+1", ["$\\boxed{(x+1)^2}$", "$\\boxed{x^2+2x+1}$", "$\\boxed{x^2+1}$", "$\\boxed{(x-1)^2}$"]),
    ("(1,2)", ["$\\boxed{(1,2)}$", "$\\boxed{(2,1)}$", "$\\boxed{1<x<2}$", "$\\boxed{(1, 2)}$"]),
    ("\\{1,2,3\\}", ["$\\boxed{\\{3,2,1\\}}$", "$\\boxed{\\{1,2\\}}$", "$\\boxed{\\{1,2,3\\}}$", "$\\boxed{6}$"]),
    (
        "\\frac{\\pi}{4}",
        ["$\\boxed{\\pi/4}$", "$\\boxed{\\frac{\\pi}{4}}$", "$\\boxed{45}$", "$\\boxed{\\frac{\\pi}{2}}$"],
    ),
    ("1000", ["The answer is $\\boxed{1000}$", "$\\boxed{1,000}$", "$\\boxed{999}$", "$\\boxed{10^3}$"]),
]


def math_workload(generations: int) -> tuple[list[str], list[str]]:
    """``generations`` completions per reference (cycling through its phrasings), with a think block."""
    completions, golds = [], []
    for gold, answers in MATH_ITEMS:
        for g in range(generations):
            completions.append(f"<think>working it out, try {g}</think>So the result is {answers[g % len(answers)]}.")
            golds.append(gold)
    return completions, golds


def bench_math(generations: int, repeats: int) -> dict[str, float]:
    completions, golds = math_workload(generations)
    reward = rmath.MathReward(think=THINK)

    def naive_score(completion: str, gold: str) -> float | None:
        # open-r1 style: both sides parsed on every call, with the same extraction settings as MathReward.
        reference = rmath.parse_reference.__wrapped__(gold)  # the uncached function under the cache
        if not reference:
            return None
        answer = extract_answer(completion, THINK)
        parsed = rmath._parse(answer) if answer and answer.strip() else []
        return float(bool(parsed) and verify(list(reference), parsed, strict=True, timeout_seconds=None))

    def run(score: Callable[[str, str], float | None]) -> tuple[float, list[float | None]]:
        rmath.clear_cache(math_verify_caches=True)  # every round starts cold: first parses count
        total, out = 0.0, []
        for completion, gold in zip(completions, golds):
            # math-verify's own LaTeX caches never help either arm (here and in the workers)
            rmath.clear_cache(math_verify_caches=True, references=False, answers=False)
            start = time.perf_counter()
            out.append(score(completion, gold))
            total += time.perf_counter() - start
        return total, out

    naive_t, cached_t = [], []
    rmath.verify_answer("\\frac12", "0.5")  # start the worker: its start-up is not what is measured
    for _ in range(repeats):
        t, a = run(naive_score)
        naive_t.append(t)
        t, b = run(lambda completion, gold: reward.score(completion, answer=gold))
        cached_t.append(t)
        if a != b:
            raise SystemExit(f"math arms disagree: naive {a} vs cached {b}")
    n = len(completions)
    return {
        "calls": n,
        "naive_per_s": n / statistics.median(naive_t),
        "cached_per_s": n / statistics.median(cached_t),
        "correct": sum(x == 1.0 for x in a),
    }


# ---------------------------------------------------------------------------------------------- verify cost

VERIFY_PAIRS = [
    ("42", "So the answer is $\\boxed{42}$."),
    ("\\frac{1}{2}", "so the answer is $\\boxed{0.5}$"),
    ("1<x<2", "The solution set is $(1,2)$."),
    ("2\\sqrt{3}", "Therefore $\\boxed{\\sqrt{12}}$"),
    ("x^2+1", "We get $1 + x^2$"),
    ("1,000", "The answer is 1000."),
]


def measure_cost(pairs: list[tuple[str, str]], repeats: int = 20) -> dict[str, float]:
    """Mean milliseconds per ``verify_answer`` call, by what is already parsed.

    ``fresh_ms``: nothing cached (every cache emptied first). ``cached_reference_ms``: the reference cached, the
    answer parsed afresh (the common case in GRPO: one reference, many different completions).
    ``cached_both_ms``: the answer text seen before too.
    """
    totals = {"fresh_ms": 0.0, "cached_reference_ms": 0.0, "cached_both_ms": 0.0}
    for _ in range(repeats):
        for gold, answer in pairs:
            for key in totals:
                if key == "fresh_ms":
                    rmath.clear_cache(math_verify_caches=True)
                elif key == "cached_reference_ms":
                    rmath.clear_cache(math_verify_caches=True, references=False)
                start = time.perf_counter()
                rmath.verify_answer(gold, answer)
                totals[key] += time.perf_counter() - start
    n = repeats * len(pairs)
    return {**{k: 1e3 * v / n for k, v in totals.items()}, "calls": n}


def print_verify_cost(repeats: int) -> None:
    rmath.verify_answer("\\frac12", "0.5")  # import-time, worker start and first-call costs are not measured
    rows = [((gold, answer), measure_cost([(gold, answer)], repeats)) for gold, answer in VERIFY_PAIRS]
    rows.append((("all pairs", ""), measure_cost(VERIFY_PAIRS, repeats)))
    print(f"\n(c) verify_answer per call, {repeats} calls per pair and setting (ms/call)")
    print("| reference | answer | fresh | reference cached | both cached |\n|---|---|---|---|---|")
    for (gold, answer), c in rows:
        fresh, ref, both = c["fresh_ms"], c["cached_reference_ms"], c["cached_both_ms"]
        print(f"| `{gold}` | {answer} | {fresh:.3f} | {ref:.3f} | {both:.3f} |")


# ----------------------------------------------------------------------------------------------------- bombs

BOMBS = [
    ("2", "\\boxed{2^{2^{64}}}"),
    ("2", "\\boxed{9^{9^{9^{9}}}}"),
    ("2", "\\boxed{100000!}"),
    ("2", "\\boxed{(2^{64})!}"),  # past the filter (a computed operand): the worker is killed at the limit
]


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))


def print_bombs(timeout_s: float) -> None:
    reward = rmath.MathReward(timeout_s=timeout_s, think=THINK)
    rmath.verify_answer("\\frac12", "0.5")  # a started worker
    before = _rss_mb()
    print(f"\n(d) answers too large to compute, time limit {timeout_s}s (target: within the limit + ~1 s)")
    print("| reference | answer | score | seconds |\n|---|---|---|---|")
    for gold, answer in BOMBS:
        start = time.perf_counter()
        (score,) = reward([f"<think>big</think>{answer}"], answer=[gold])
        print(f"| `{gold}` | `{answer}` | {score} | {time.perf_counter() - start:.2f} |")
    start = time.perf_counter()
    rmath.verify_answer("\\frac12", "0.5")
    print(f"next call (a fresh worker, started at the kill): {time.perf_counter() - start:.2f}s")
    print(f"resident memory of this process: {before:.0f} MB before, {_rss_mb():.0f} MB after")


# ------------------------------------------------------------------------------------------------------ code

PROGRAMS = {  # name: (correct solution, wrong solution); every program reads stdin and prints
    "sum": ("print(sum(map(int, input().split())))", "print(sum(map(int, input().split())) + 1)"),
    "sort": (
        "n = int(input())\nxs = sorted(map(int, input().split()))\nprint(' '.join(map(str, xs)))",
        "n = int(input())\nxs = list(map(int, input().split()))\nprint(' '.join(map(str, xs)))",
    ),
    "fib": (
        "import sys\nn = int(sys.stdin.readline())\na, b = 0, 1\nfor _ in range(n):\n    a, b = b, a + b\nprint(a)",
        "n = int(input())\nprint(n * n)",
    ),
    "primes": (
        "n = int(input())\nsieve = [True] * (n + 1)\nsieve[:2] = [False, False]\n"
        "for i in range(2, int(n ** 0.5) + 1):\n    if sieve[i]:\n"
        "        sieve[i*i::i] = [False] * len(sieve[i*i::i])\n"
        "print(sum(sieve))",
        "n = int(input())\nprint(n // 2)",
    ),
}


def _case(program: str, rng: random.Random) -> dict[str, str]:
    if program == "sum":
        xs = [rng.randint(-1000, 1000) for _ in range(rng.randint(1, 20))]
        return {"input": " ".join(map(str, xs)), "output": str(sum(xs))}
    if program == "sort":
        xs = [rng.randint(0, 99) for _ in range(rng.randint(1, 30))]
        return {"input": f"{len(xs)}\n{' '.join(map(str, xs))}", "output": " ".join(map(str, sorted(xs)))}
    if program == "fib":
        n = rng.randint(0, 90)
        a, b = 0, 1
        for _ in range(n):
            a, b = b, a + b
        return {"input": str(n), "output": str(a)}
    n = rng.randint(2, 20000)
    return {
        "input": str(n),
        "output": str(sum(all(k % d for d in range(2, int(k**0.5) + 1)) for k in range(2, n + 1))),
    }


def code_workload(solutions: int, cases: int, seed: int = 0) -> tuple[list[str], list[list[dict[str, str]]]]:
    """Completions (3 in 4 correct, the rest wrong or crashing) and their tests."""
    rng = random.Random(seed)
    names = sorted(PROGRAMS)
    completions, tests = [], []
    for i in range(solutions):
        name = names[i % len(names)]
        good, bad = PROGRAMS[name]
        code = good if i % 4 else (bad if i % 8 else "raise RuntimeError('oops')")
        completions.append(f"<think>plan for {name}</think>Here it is:\n```python\n{code}\n```")
        tests.append([_case(name, rng) for _ in range(cases)])
    return completions, tests


def bare_reward(python: str, workers: int, timeout_s: float) -> Callable[..., list[float]]:
    """The baseline: the same extraction and comparison, but a bare subprocess.run per case, no containment."""

    def one(completion: str, tests: list[dict[str, str]]) -> float:
        code = extract_code(extract_answer(completion, THINK))
        if code is None:
            return 0.0
        passed = 0
        for case in normalize_tests(tests):
            try:
                proc = subprocess.run(
                    [python, "-I", "-S", "-c", code],
                    input=case["input"],
                    capture_output=True,
                    text=True,
                    timeout=timeout_s,
                )
            except subprocess.TimeoutExpired:
                continue
            passed += proc.returncode == 0 and compare_output(proc.stdout, case["output"]) is None
        return passed / len(tests)

    def reward(completions: list[str], tests: list[list[dict[str, str]]]) -> list[float]:
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(one, completions, tests))

    return reward


def bench_code(solutions: int, cases: int, workers: int, repeats: int) -> dict[str, float]:
    completions, tests = code_workload(solutions, cases)
    limits = SandboxLimits()
    sandboxed = CodeReward(limits=limits, max_workers=workers, think=THINK)
    bare = bare_reward(limits.python, workers, limits.timeout_s)
    bare_t, box_t = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        a = bare(completions, tests)
        bare_t.append(time.perf_counter() - start)
        start = time.perf_counter()
        b = sandboxed(completions, tests=tests)
        box_t.append(time.perf_counter() - start)
        if a != b:
            raise SystemExit(f"code arms disagree ({cases} cases): bare {a} vs sandbox {b}")
    isolation = next(r.isolation for r in sandboxed.last_results if r is not None and r.cases)
    return {
        "cases": cases,
        "bare_s": statistics.median(bare_t),
        "sandbox_s": statistics.median(box_t),
        "isolation": isolation,
        "mean_score": sum(b) / len(b),
    }


# ------------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[2], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--part", choices=("math", "code", "verify", "bombs", "all"), default="all", help="which benchmark to run"
    )
    parser.add_argument("--generations", type=int, default=8, help="math: completions per reference (GRPO group)")
    parser.add_argument("--solutions", type=int, default=32, help="code: solutions per batch")
    parser.add_argument("--cases", type=int, nargs="+", default=[1, 5, 10], help="code: test cases per solution")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="code: solutions run at once")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds per arm (median reported)")
    parser.add_argument("--verify-repeats", type=int, default=20, help="verify: timed calls per pair and setting")
    parser.add_argument("--bomb-timeout", type=float, default=2.0, help="bombs: the math reward's time limit")
    args = parser.parse_args(argv)

    print(f"machine: {os.cpu_count()} CPUs, python {sys.version.split()[0]}, euid {os.geteuid()}")
    if args.part in ("math", "all"):
        m = bench_math(args.generations, args.repeats)
        print(
            f"\n(a) math reward, {m['calls']} calls ({args.generations} completions per reference, "
            f"{m['correct']} correct)"
        )
        print("| arm | calls/s | speed-up |\n|---|---|---|")
        print(f"| naive: parse both sides every call | {m['naive_per_s']:.0f} | 1.00x |")
        print(
            f"| MathReward: reference (and repeated answers) parsed once | {m['cached_per_s']:.0f} | "
            f"{m['cached_per_s'] / m['naive_per_s']:.2f}x (target >= 2x) |"
        )
    if args.part in ("code", "all"):
        print(f"\n(b) code reward, {args.solutions} solutions per batch, {args.workers} workers")
        print(
            "| cases/solution | bare subprocess.run per case (solutions/s) | full sandbox (solutions/s) | "
            "isolation | overhead (target <= 1.5x) |\n|---|---|---|---|---|"
        )
        for cases in args.cases:
            c = bench_code(args.solutions, cases, args.workers, args.repeats)
            print(
                f"| {cases} | {args.solutions / c['bare_s']:.1f} | {args.solutions / c['sandbox_s']:.1f} | "
                f"{c['isolation']} | {c['sandbox_s'] / c['bare_s']:.2f}x |"
            )

    if args.part in ("verify", "all"):
        print_verify_cost(args.verify_repeats)
    if args.part in ("bombs", "all"):
        print_bombs(args.bomb_timeout)


if __name__ == "__main__":
    main()
