"""The arithmetic world: graded problems and a programmatic teacher, where a CPU run shows real learning.

A tiny model cannot add two 3-digit numbers in one step, but it can follow a digit-by-digit trace: that makes
slow mode really better than fast mode on hard problems, and fast mode good enough on easy ones, the situation
the dual system is built for.

Levels (difficulty):

====  =====================  ==========================
1     ``a+b``, 1 digit each  easy: fast answers suffice
2     ``a+b``, 2 digits
3     ``a+b``, 3 digits      hard: needs the trace
4     ``a*b``, 2 x 1 digits
5     ``a+b``, 4 digits
6     ``a*b``, 3 x 2 digits
7     ``a+b``, 5 digits      out of reach of a small student
8     ``a+b``, 6 digits
====  =====================  ==========================

:func:`make_mixed_problems` draws a pool with a given share per level (the distillation benchmark's skewed pool:
mostly mastered or out-of-reach prompts, a minority learnable).

The teacher writes slow answers (a digit-by-digit trace in the think block, then the result) and fast answers
(an empty think block, then the result). ``verbosity`` adds redundant steps and ``error_rate`` makes it slip
(one wrong digit, carried through), so verification and shortest-correct selection have work to do.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from train.core.data import record_id
from train.core.modes import Mode, ThinkFormat, apply_mode, format_response

LEVELS: dict[int, tuple[str, int, int]] = {
    1: ("+", 1, 1),
    2: ("+", 2, 2),
    3: ("+", 3, 3),
    4: ("*", 2, 1),
    5: ("+", 4, 4),
    6: ("*", 3, 2),
    7: ("+", 5, 5),
    8: ("+", 6, 6),
}


def _number(rng: random.Random, digits: int) -> int:
    return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)


def prompt_text(a: int, op: str, b: int) -> str:
    return f"Compute {a}{op}{b}."


def make_problem(level: int, rng: random.Random) -> dict:
    """One record of the given level (see the module docstring)."""
    if level not in LEVELS:
        raise ValueError(f"unknown level {level}; expected one of {sorted(LEVELS)}")
    op, da, db = LEVELS[level]
    a, b = _number(rng, da), _number(rng, db)
    prompt = prompt_text(a, op, b)
    answer = a + b if op == "+" else a * b
    return {
        "id": f"arith-{record_id(prompt)}",
        "prompt": prompt,
        "task": "math",
        "answer": str(answer),
        "difficulty": level,
        "source": "arithmetic",
        "a": a,
        "b": b,
        "op": op,
    }


def make_problems(
    n: int, levels: tuple[int, ...] | list[int] = (1, 2, 3), seed: int = 0, exclude: set[str] | None = None
) -> list[dict]:
    """``n`` distinct problems, levels drawn uniformly; ids in ``exclude`` (e.g. a test set) are skipped."""
    rng = random.Random(seed)
    seen = set(exclude or ())
    out: list[dict] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 100 * n + 1000:
            raise ValueError(f"cannot draw {n} distinct problems from levels {levels}")
        p = make_problem(rng.choice(list(levels)), rng)
        if p["id"] not in seen:
            seen.add(p["id"])
            out.append(p)
    return out


def make_mixed_problems(
    n: int, shares: dict[int, float], seed: int = 0, exclude: set[str] | None = None
) -> list[dict]:
    """``n`` distinct problems with ``round(n * share)`` of each level (shares normalised; the rounding remainder
    goes to the largest share), shuffled with ``seed``; ids in ``exclude`` are skipped."""
    if not shares or any(v < 0 for v in shares.values()) or sum(shares.values()) <= 0:
        raise ValueError(f"shares must be non-negative with a positive sum, got {shares}")
    total = sum(shares.values())
    counts = {level: round(n * v / total) for level, v in shares.items()}
    counts[max(shares, key=shares.get)] += n - sum(counts.values())
    seen = set(exclude or ())
    out: list[dict] = []
    for level, count in sorted(counts.items()):
        drawn = make_problems(count, (level,), seed=seed * 1000 + level, exclude=seen)
        seen |= {p["id"] for p in drawn}
        out += drawn
    random.Random(seed).shuffle(out)
    return out


# ----------------------------------------------------------------------------------------------------- traces


def addition_steps(a: int, b: int) -> tuple[list[str], int]:
    """Digit-by-digit addition, least significant digit first: ``x+y+c=s`` per column."""
    da, db = str(a)[::-1], str(b)[::-1]
    carry, digits, lines = 0, [], []
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        s = x + y + carry
        lines.append(f"{x}+{y}+{carry}={s}")
        digits.append(s % 10)
        carry = s // 10
    if carry:
        lines.append(f"carry {carry}")
        digits.append(carry)
    return lines, int("".join(map(str, digits[::-1])))


def multiply_digit_steps(a: int, d: int) -> tuple[list[str], int]:
    """``a * d`` for one digit ``d``: ``x*d+c=s`` per digit of ``a``."""
    carry, digits, lines = 0, [], []
    for ch in str(a)[::-1]:
        s = int(ch) * d + carry
        lines.append(f"{ch}*{d}+{carry}={s}")
        digits.append(s % 10)
        carry = s // 10
    if carry:
        lines.append(f"carry {carry}")
        digits.append(carry)
    return lines, int("".join(map(str, digits[::-1])))


def multiplication_steps(a: int, b: int) -> tuple[list[str], int]:
    """Long multiplication: one partial product per digit of ``b``, then their sum."""
    lines: list[str] = []
    total = 0
    for shift, ch in enumerate(str(b)[::-1]):
        part_lines, part = multiply_digit_steps(a, int(ch))
        lines += part_lines + [f"{a}*{ch}={part}"]
        shifted = part * 10**shift
        if shift:
            add_lines, new_total = addition_steps(total, shifted)
            lines += [f"add {total}+{shifted}"] + add_lines
            total = new_total
        else:
            total = shifted
    return lines, total


def solve_steps(a: int, op: str, b: int) -> tuple[list[str], int]:
    if op == "+":
        return addition_steps(a, b)
    if op == "*":
        return multiplication_steps(a, b)
    raise ValueError(f"unknown operator {op!r}")


# ---------------------------------------------------------------------------------------------------- teacher


@dataclass
class ArithmeticTeacher:
    """A programmatic teacher for the arithmetic world.

    ``think``: the format the replies are written in (the student's). ``verbosity`` in [0, 1]: the chance of a
    redundant line (a restated step) after each step. ``error_rate``: the chance that a response contains one wrong
    digit, carried through to a wrong result.
    """

    think: ThinkFormat
    verbosity: float = 0.0
    error_rate: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.think, ThinkFormat):
            raise TypeError(f"ArithmeticTeacher: think must be a ThinkFormat, got {self.think!r}")
        for name in ("verbosity", "error_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        self._rng = random.Random(self.seed)

    def get_state(self) -> list:
        """The random generator's state as plain JSON (lists), to save with a flushed chunk of replies."""
        version, internal, gauss = self._rng.getstate()
        return [version, list(internal), gauss]

    def set_state(self, state: list) -> None:
        """Continue from a state :meth:`get_state` saved: a resumed run draws what an uninterrupted one would."""
        version, internal, gauss = state
        self._rng.setstate((version, tuple(internal), gauss))

    def trace(self, problem: dict) -> tuple[str, int]:
        lines, result = solve_steps(problem["a"], problem["op"], problem["b"])
        if self._rng.random() < self.error_rate:
            result = self._slip(result)
        out = []
        for line in lines:
            out.append(line)
            if self._rng.random() < self.verbosity:
                out.append(f"check {line}")
        return "\n".join(out), result

    def _slip(self, result: int) -> int:
        digits = list(str(result))
        i = self._rng.randrange(len(digits))
        choices = [d for d in "0123456789" if d != digits[i] and not (i == 0 and d == "0" and len(digits) > 1)]
        digits[i] = self._rng.choice(choices)
        return int("".join(digits))

    def respond(self, problem: dict, mode: Mode | str = Mode.SLOW) -> str:
        """A reply in ``mode``: slow gives the trace then the result, fast an empty block then the result."""
        mode = Mode.parse(mode)
        if mode == Mode.FAST:
            result = solve_steps(problem["a"], problem["op"], problem["b"])[1]
            if self._rng.random() < self.error_rate:
                result = self._slip(result)
            return format_response(str(result), "", self.think)
        thinking, result = self.trace(problem)
        return format_response(str(result), thinking, self.think)


def corpus(problems: list[dict], think: ThinkFormat) -> list[str]:
    """Texts covering every character the world uses (replies in ``think``'s format), for training a tokenizer."""
    teacher = ArithmeticTeacher(think)
    return [p["prompt"] + teacher.respond(p) for p in problems[:200]] + ["carry check add"]


def make_dataset(
    n_train: int,
    n_test: int,
    levels: list[int],
    modes: list[str] = ("slow",),
    slow_tag: str = "both",
    verbosity: float = 0.0,
    error_rate: float = 0.0,
    seed: int = 0,
    *,
    think: ThinkFormat,
) -> tuple[list[dict], list[dict]]:
    """(training records with a teacher ``response`` in ``think``'s format, one per problem and mode; held-out
    problems, disjoint).

    Slow prompts carry ``/think`` (``slow_tag="think"``), no tag (``"none"``) or either at random (``"both"``),
    so the model obeys both spellings of the request; fast ones carry ``/no_think``.
    """
    if slow_tag not in ("both", "think", "none"):
        raise ValueError(f"slow_tag={slow_tag!r}; expected both, think or none")
    test = make_problems(n_test, levels, seed=seed + 1)
    train = make_problems(n_train, levels, seed=seed, exclude={p["id"] for p in test})
    teacher = ArithmeticTeacher(think, verbosity=verbosity, error_rate=error_rate, seed=seed)
    rows = []
    rng = random.Random(seed)
    for p in train:
        for mode in map(Mode.parse, modes):
            tag = mode
            if mode == Mode.SLOW and (slow_tag == "none" or (slow_tag == "both" and rng.random() < 0.5)):
                tag = None  # no tag means slow too
            prompt = apply_mode(p["prompt"], tag)[0]["content"]
            rows.append({**p, "prompt": prompt, "response": teacher.respond(p, mode)})
    return rows, test
