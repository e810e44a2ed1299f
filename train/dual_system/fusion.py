"""Stage 2 fusion data: label each prompt fast or slow from the current model's pass rates, pick targets, tag.

For every prompt the current model is sampled ``k`` times in fast mode (``/no_think``) and ``k`` times in slow
mode (``/think``); each reply is verified (the answer after the think block, checked against the record). A
:class:`LabelRule` turns the two pass rates into a label:

* **fast** when the fast pass rate reaches ``fast_threshold`` *and* is not clearly below the slow one
  (``fast >= slow - margin``);
* **slow** otherwise.

Prompts that cannot be verified (no reference answer, no tests) are labelled by a fallback: an LLM judge when one
is given (a callable ``judge(record) -> "fast" | "slow" | None``), else the annotated ``difficulty``
(``<= fallback_max_easy_difficulty`` is fast), else slow, the safe choice.

Targets are the shortest correct replies: for fast labels the shortest correct fast answer (empty think block),
for slow labels the shortest correct slow trace, from the model's own samples or the teacher pool (the record's
``response`` and any ``pool`` replies, verified the same way). A prompt with a correct slow trace but no correct
fast answer still gets a ``/no_think`` target: the verified answer of the slow trace behind an empty think block
(the paper's fast targets are answers without reasoning; this is one, and it is correct).

Each labelled prompt gives one record per tag: ``/no_think`` with the fast target, ``/think`` and no tag with the
slow target, ``/auto_think`` with the labelled target (``fusion_tag`` says which). Statistics count labels per
difficulty bucket and :func:`plot_labels` draws them.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from train.core.checks import exact_match
from train.core.data import record_id, write_jsonl
from train.core.modes import DEFAULT_THINK_END, DEFAULT_THINK_START, Mode, apply_mode, format_response, parse_response
from train.eval.labels import FAST, SLOW, LabelRule, label_from_rates

logger = logging.getLogger(__name__)

#: Check a reply's answer against its record: True/False, or None when the record cannot be verified.
Check = Callable[[str | None, dict[str, Any]], "bool | None"]
Judge = Callable[[dict[str, Any]], "str | None"]


# ------------------------------------------------------------------------------------------------------ labels


@dataclass(frozen=True)
class Label:
    """A label and where it came from: ``pass_rate``, ``judge``, ``difficulty`` or ``default``."""

    label: str
    source: str


def fallback_label(record: dict[str, Any], rule: LabelRule, judge: Judge | None = None) -> Label:
    """The label of a prompt that could not be verified: judge, then annotated difficulty, then slow."""
    if judge is not None:
        verdict = judge(record)
        if verdict is not None:
            verdict = str(verdict).strip().lower()
            if verdict not in (FAST, SLOW):
                raise ValueError(f"record {record.get('id')!r}: the judge said {verdict!r}; expected fast or slow")
            return Label(verdict, "judge")
    difficulty = record.get("difficulty")
    if rule.fallback_max_easy_difficulty is not None and difficulty is not None:
        easy = float(difficulty) <= rule.fallback_max_easy_difficulty
        return Label(FAST if easy else SLOW, "difficulty")
    return Label(SLOW, "default")


# ----------------------------------------------------------------------------------------------------- checks


def verifiable(record: dict[str, Any]) -> bool:
    """Whether replies to ``record`` can be checked: a reference answer, or tests for code."""
    if record.get("task") == "code":
        return bool(record.get("tests"))
    return record.get("answer") not in (None, "")


def math_check(answer: str | None, record: dict[str, Any]) -> bool | None:
    """math-verify through the MARS math reward's ``verify_answer`` (exact match as a fast path)."""
    from rewards.math import verify_answer

    if record.get("answer") in (None, ""):
        return None
    if exact_match(answer, record):
        return True
    return verify_answer(record["answer"], answer)


def mars_check(answer: str | None, record: dict[str, Any]) -> bool | None:
    """The MARS rule layer (:func:`rewards.verify.check`): math-verify for math, sandboxed tests for code."""
    from rewards.verify import check

    return check(answer, record)


CHECKS: dict[str, Check] = {"exact": exact_match, "math": math_check, "mars": mars_check}


def get_check(name: str) -> Check:
    if name not in CHECKS:
        raise ValueError(f"unknown check {name!r}; expected one of {sorted(CHECKS)}")
    return CHECKS[name]


# ---------------------------------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class Candidate:
    """A reply that could become a target: its text, length in tokens, and whether it came from the teacher."""

    text: str
    num_tokens: int
    source: str  # "model" or "teacher"


def reply_mode(text: str, think_start: str = DEFAULT_THINK_START, think_end: str = DEFAULT_THINK_END) -> str | None:
    """``fast`` or ``slow`` for a well-formed reply with an answer, else None."""
    parsed = parse_response(text, think_start, think_end)
    if not parsed.well_formed or not parsed.answer or parsed.mode not in (FAST, SLOW):
        return None
    return parsed.mode


def shortest_correct(
    candidates: Sequence[Candidate],
    record: dict[str, Any],
    mode: str,
    check: Check,
    think_start: str = DEFAULT_THINK_START,
    think_end: str = DEFAULT_THINK_END,
) -> Candidate | None:
    """The shortest well-formed reply in ``mode`` whose answer passes ``check`` (ties: the first one)."""
    best = None
    for c in candidates:
        if reply_mode(c.text, think_start, think_end) != mode:
            continue
        if best is not None and c.num_tokens >= best.num_tokens:
            continue
        if check(parse_response(c.text, think_start, think_end).answer, record):
            best = c
    return best


def fast_from_slow(slow: str, think_start: str = DEFAULT_THINK_START, think_end: str = DEFAULT_THINK_END) -> str:
    """A fast reply with the (verified) answer of a slow one."""
    answer = parse_response(slow, think_start, think_end).answer or ""
    return format_response(answer, "", think_start, think_end)


# ------------------------------------------------------------------------------------------------ per prompt


@dataclass
class PromptResult:
    """Everything the builder decided for one prompt (one line of ``labels.jsonl``)."""

    id: str
    difficulty: float | None
    fast_rate: float | None
    slow_rate: float | None
    label: str | None
    label_source: str
    fast_target: str | None = None
    slow_target: str | None = None
    fast_target_source: str | None = None
    slow_target_source: str | None = None
    fast_tokens: float | None = None  # mean tokens of the fast samples
    slow_tokens: float | None = None

    @property
    def usable(self) -> bool:
        return self.label is not None and self.fast_target is not None and self.slow_target is not None


def decide(
    record: dict[str, Any],
    rule: LabelRule,
    check: Check,
    fast_samples: Sequence[Candidate] = (),
    slow_samples: Sequence[Candidate] = (),
    pool: Sequence[Candidate] = (),
    judge: Judge | None = None,
    think_start: str = DEFAULT_THINK_START,
    think_end: str = DEFAULT_THINK_END,
) -> PromptResult:
    """Label one prompt and choose its targets from the model's samples and the teacher pool.

    Pass rates count a sample as correct only when it is in the asked-for mode (a "fast" sample that thinks is
    not a correct fast answer). Without samples, or when the record cannot be verified, the fallback labels it.
    """
    rid = str(record.get("id") or record_id(record["prompt"]))
    difficulty = record.get("difficulty")
    can_verify = verifiable(record)

    def ok(c: Candidate, mode: str) -> bool:
        return reply_mode(c.text, think_start, think_end) == mode and bool(
            check(parse_response(c.text, think_start, think_end).answer, record)
        )

    fast_rate = slow_rate = None
    if can_verify and fast_samples and slow_samples:
        fast_rate = sum(ok(c, FAST) for c in fast_samples) / len(fast_samples)
        slow_rate = sum(ok(c, SLOW) for c in slow_samples) / len(slow_samples)
        label = Label(label_from_rates(fast_rate, slow_rate, rule), "pass_rate")
    else:
        label = fallback_label(record, rule, judge)

    if can_verify:
        fast = shortest_correct(list(fast_samples) + list(pool), record, FAST, check, think_start, think_end)
        slow = shortest_correct(list(slow_samples) + list(pool), record, SLOW, check, think_start, think_end)
    else:  # nothing to verify against: trust the teacher pool, shortest first
        fast = _shortest_in_mode(pool, FAST, think_start, think_end)
        slow = _shortest_in_mode(pool, SLOW, think_start, think_end)
    result = PromptResult(
        id=rid,
        difficulty=None if difficulty is None else float(difficulty),
        fast_rate=fast_rate,
        slow_rate=slow_rate,
        label=label.label,
        label_source=label.source,
        fast_tokens=_mean([c.num_tokens for c in fast_samples]),
        slow_tokens=_mean([c.num_tokens for c in slow_samples]),
    )
    if slow is not None:
        result.slow_target, result.slow_target_source = slow.text, slow.source
    if fast is not None:
        result.fast_target, result.fast_target_source = fast.text, fast.source
    elif slow is not None:
        result.fast_target, result.fast_target_source = fast_from_slow(slow.text, think_start, think_end), "slow"
    return result


def _shortest_in_mode(pool: Sequence[Candidate], mode: str, think_start: str, think_end: str) -> Candidate | None:
    fits = [c for c in pool if reply_mode(c.text, think_start, think_end) == mode]
    return min(fits, key=lambda c: c.num_tokens) if fits else None


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


# ----------------------------------------------------------------------------------------------------- records


def fusion_records(record: dict[str, Any], result: PromptResult) -> list[dict[str, Any]]:
    """Training records for one labelled prompt: ``/no_think``, ``/think``, no tag, and ``/auto_think``.

    Each copies the source record's fields (minus ``response`` and ``pool``) and adds ``response``, ``fusion_tag``
    (``no_think``, ``think``, ``none``, ``auto_think``), ``label`` and the pass rates. Empty when the prompt has
    no usable targets.
    """
    if not result.usable:
        return []
    base = {k: v for k, v in record.items() if k not in ("response", "pool", "prompt")}
    base.update(
        id=result.id,
        label=result.label,
        fast_rate=result.fast_rate,
        slow_rate=result.slow_rate,
        label_source=result.label_source,
    )
    labelled = result.fast_target if result.label == FAST else result.slow_target
    out = []
    for tag, mode, target in (
        ("no_think", Mode.FAST, result.fast_target),
        ("think", Mode.SLOW, result.slow_target),
        ("none", None, result.slow_target),
        ("auto_think", Mode.AUTO, labelled),
    ):
        prompt = apply_mode(record["prompt"], mode)
        if isinstance(record["prompt"], str):
            prompt = prompt[-1]["content"]
        out.append({**base, "id": f"{result.id}-{tag}", "prompt": prompt, "response": target, "fusion_tag": tag})
    return out


# ------------------------------------------------------------------------------------------------- statistics


def difficulty_bucket(difficulty: float) -> str:
    """The bucket name of an annotated difficulty: ``1`` and ``1.0`` are ``"1"``, ``2.5`` is ``"2.5"``."""
    d = float(difficulty)
    return str(int(d)) if d.is_integer() else f"{d:g}"


def bucket_of(result: PromptResult, num_buckets: int = 4) -> str:
    """A difficulty bucket: the annotated difficulty, else a slow-pass-rate complexity quartile name."""
    if result.difficulty is not None:
        return difficulty_bucket(result.difficulty)
    if result.slow_rate is not None:
        q = min(int((1.0 - result.slow_rate) * num_buckets), num_buckets - 1)
        return f"c{q}"
    return "unknown"


def statistics(results: Sequence[PromptResult]) -> dict[str, Any]:
    """Counts of labels (overall, per source, per difficulty bucket) and mean pass rates per bucket."""
    per_bucket: dict[str, dict[str, Any]] = {}
    groups: dict[str, list[PromptResult]] = defaultdict(list)
    for r in results:
        groups[bucket_of(r)].append(r)
    for bucket in sorted(groups, key=_bucket_sort_key):
        rs = groups[bucket]
        labelled = [r for r in rs if r.label is not None]
        per_bucket[bucket] = {
            "prompts": len(rs),
            "fast": sum(r.label == FAST for r in labelled),
            "slow": sum(r.label == SLOW for r in labelled),
            "fast_share": _share(sum(r.label == FAST for r in labelled), len(labelled)),
            "mean_fast_rate": _mean([r.fast_rate for r in rs if r.fast_rate is not None]),
            "mean_slow_rate": _mean([r.slow_rate for r in rs if r.slow_rate is not None]),
            "mean_fast_tokens": _mean([r.fast_tokens for r in rs if r.fast_tokens is not None]),
            "mean_slow_tokens": _mean([r.slow_tokens for r in rs if r.slow_tokens is not None]),
        }
    labels = Counter(r.label for r in results if r.label is not None)
    return {
        "prompts": len(results),
        "usable": sum(r.usable for r in results),
        "dropped_no_target": sum(not r.usable for r in results),
        "labels": dict(labels),
        "label_sources": dict(Counter(r.label_source for r in results)),
        "fast_target_sources": dict(Counter(r.fast_target_source for r in results if r.fast_target_source)),
        "slow_target_sources": dict(Counter(r.slow_target_source for r in results if r.slow_target_source)),
        "per_difficulty": per_bucket,
    }


def _share(k: int, n: int) -> float | None:
    return k / n if n else None


def _bucket_sort_key(bucket: str) -> tuple[int, float, str]:
    try:
        return (0, float(bucket), bucket)
    except ValueError:
        return (1, 0.0, bucket)


def plot_labels(stats: dict[str, Any], path: str | Path) -> Path:
    """A PNG of label counts per difficulty bucket (stacked bars) with the mean pass rates per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    buckets = list(stats["per_difficulty"])
    rows = [stats["per_difficulty"][b] for b in buckets]
    x = range(len(buckets))
    fig, ax = plt.subplots(figsize=(6, 4))
    fast = [r["fast"] for r in rows]
    slow = [r["slow"] for r in rows]
    ax.bar(x, fast, label="fast label", color="tab:orange")
    ax.bar(x, slow, bottom=fast, label="slow label", color="tab:blue")
    ax.set_xticks(list(x), buckets)
    ax.set_xlabel("difficulty")
    ax.set_ylabel("prompts")
    ax2 = ax.twinx()
    for key, style, name in (("mean_fast_rate", "o-", "fast pass rate"), ("mean_slow_rate", "s--", "slow pass rate")):
        values = [math.nan if r[key] is None else r[key] for r in rows]
        ax2.plot(list(x), values, style, color="black", label=name)
    ax2.set_ylim(0, 1.05)
    ax2.set_ylabel("mean pass rate")
    handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], loc="upper right", fontsize=8)
    ax.set_title("Fusion labels against difficulty")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path


# --------------------------------------------------------------------------------------------------- builder


@dataclass
class FusionBuildConfig:
    """Options of the fusion data builder (sampling, labelling, output)."""

    num_samples: int = field(default=4, metadata={"help": "Replies sampled per prompt and mode for pass rates."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature for pass rates."})
    max_new_tokens: int = field(default=256, metadata={"help": "Token budget of each sampled reply."})
    batch_size: int = field(default=64, metadata={"help": "Prompts per generation batch."})
    chunk_size: int = field(default=256, metadata={"help": "Prompts per checkpointed chunk (the build resumes)."})
    fast_threshold: float = field(default=0.75, metadata={"help": "Fast label needs this fast pass rate."})
    margin: float = field(
        default=0.1, metadata={"help": "Fast label also needs fast pass rate >= slow pass rate - margin."}
    )
    fallback_max_easy_difficulty: float | None = field(
        default=None,
        metadata={"help": "Unverifiable prompts with difficulty <= this are labelled fast (else slow)."},
    )
    check: str = field(default="mars", metadata={"help": "Answer check: exact, math (math-verify) or mars."})
    self_repair: bool = field(default=False, metadata={"help": "Sample with repetition self-repair."})
    sample_tags: bool = field(
        default=False,
        metadata={
            "help": "Sample with the /no_think and /think tags. Off: untagged prompts (slow, the default mode every "
            "model knows; fast replies then need fast_prefill), for a start model that has never seen the tags."
        },
    )
    fast_prefill: bool = field(
        default=True,
        metadata={
            "help": "Sample fast replies with the empty think block prefilled (Qwen3's enable_thinking=False), so "
            "a model without a fast mode yet (a slow-mode Stage-1 model) still shows how well it answers directly."
        },
    )

    def rule(self) -> LabelRule:
        return LabelRule(self.fast_threshold, self.margin, self.fallback_max_easy_difficulty)


def pool_of(record: dict[str, Any], tokenizer: Any = None) -> list[Candidate]:
    """The teacher pool of a record: its ``response`` and the replies in its ``pool`` list."""
    texts = ([record["response"]] if record.get("response") else []) + list(record.get("pool") or [])
    return [Candidate(t, _count(tokenizer, t), "teacher") for t in texts if isinstance(t, str) and t]


def _count(tokenizer: Any, text: str) -> int:
    if tokenizer is None:
        return len(text)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def sample_candidates(
    model: Any, tokenizer: Any, records: Sequence[dict[str, Any]], mode: Mode, config: FusionBuildConfig
) -> list[list[Candidate]]:
    """``num_samples`` replies per record in ``mode`` (with self-repair when configured).

    With ``fast_prefill`` the fast prompts end with the empty think block and the block is put back in front of
    each reply (its tokens counted), so candidates always carry their own think block.
    """
    from train.core.modes import think_delimiters

    prefill = config.fast_prefill and mode == Mode.FAST
    kwargs = dict(
        mode=mode if config.sample_tags else None,
        num_samples=config.num_samples,
        do_sample=config.num_samples > 1,
        temperature=config.temperature,
        max_new_tokens=config.max_new_tokens,
        batch_size=config.batch_size,
        progress=False,
        enable_thinking=False if prefill else None,
    )
    if config.self_repair:
        from train.sampling.self_repair import generate_with_repair

        gens = generate_with_repair(model, tokenizer, [r["prompt"] for r in records], **kwargs)
    else:
        from train.sampling.generation import generate

        gens = generate(model, tokenizer, [r["prompt"] for r in records], **kwargs)
    prefix = ""
    if prefill:
        ts, te = think_delimiters(tokenizer)
        prefix = f"{ts}\n\n{te}\n\n"
    extra = _count(tokenizer, prefix) if prefix else 0
    return [[Candidate(prefix + g.text, g.num_tokens + extra, "model") for g in row] for row in gens]


def prompts_of_fusion(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The prompt records behind fusion records (to label them again): untagged prompt, targets as the pool."""
    records: dict[str, dict[str, Any]] = {}
    for row in rows:
        tag = row.get("fusion_tag")
        base = str(row["id"])[: -len(f"-{tag}")] if tag and str(row["id"]).endswith(f"-{tag}") else str(row["id"])
        keep = {k: v for k, v in row.items() if k not in ("response", "fusion_tag", "label", "label_source",
                                                          "fast_rate", "slow_rate", "prompt")}  # fmt: skip
        rec = records.setdefault(base, {**keep, "id": base, "prompt": _untagged(row["prompt"]), "pool": []})
        if row.get("response") and row["response"] not in rec["pool"]:
            rec["pool"].append(row["response"])
    return list(records.values())


def _untagged(prompt: Any) -> Any:
    messages = apply_mode(prompt, None)
    return messages[-1]["content"] if isinstance(prompt, str) else messages


def merge_prompts(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per prompt: records with the same ``id`` (or the same prompt once mode tags are removed) merge.

    Their prompt loses its mode tag, and every ``response`` and ``pool`` reply joins one teacher pool, so SFT data
    with a slow and a fast response per problem gives one prompt with both as candidate targets.
    """
    merged: dict[str, dict[str, Any]] = {}
    for r in records:
        prompt = _untagged(r["prompt"])
        rid = str(r.get("id") or record_id(prompt))
        replies = ([r["response"]] if r.get("response") else []) + list(r.get("pool") or [])
        if rid not in merged:
            merged[rid] = {**{k: v for k, v in r.items() if k != "response"}, "id": rid, "prompt": prompt, "pool": []}
        elif merged[rid]["prompt"] != prompt:
            raise ValueError(
                f"record id {rid!r} is used by two different prompts: {merged[rid]['prompt']!r:.60} and {prompt!r:.60}"
            )
        merged[rid]["pool"] += [x for x in replies if x not in merged[rid]["pool"]]
    return list(merged.values())


def build_fusion(
    model: Any,
    tokenizer: Any,
    records: Sequence[dict[str, Any]],
    config: FusionBuildConfig,
    out_dir: str | Path,
    judge: Judge | None = None,
    check: Check | None = None,
) -> dict[str, Any]:
    """Label ``records`` with the model's pass rates and write the fusion data set to ``out_dir``.

    Writes ``labels.jsonl`` (one :class:`PromptResult` per prompt, appended chunk by chunk so an interrupted
    build resumes where it stopped), ``fusion.jsonl`` (the tagged training records), ``stats.json`` and
    ``labels.png``. Returns the statistics.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    check = check or get_check(config.check)
    rule = config.rule()
    from train.core.modes import think_delimiters

    ts, te = think_delimiters(tokenizer)
    records = merge_prompts(records)
    ids = [r["id"] for r in records]
    done = _read_done(out / "labels.jsonl")
    # Rewrite what was kept, so a torn last line never glues itself to the first new one.
    write_jsonl(out / "labels.jsonl", [asdict(r) for r in done.values()])
    todo = [(i, r) for i, r in zip(ids, records) if i not in done]
    if done:
        logger.info("resuming: %d of %d prompts already labelled", len(records) - len(todo), len(records))
    with (out / "labels.jsonl").open("a", encoding="utf-8") as f:
        for start in tqdm(range(0, len(todo), config.chunk_size), desc="fusion labels", leave=False):
            chunk = [{**r, "id": i} for i, r in todo[start : start + config.chunk_size]]
            for result in _label_chunk(model, tokenizer, chunk, config, rule, check, judge, ts, te):
                f.write(json.dumps(asdict(result), ensure_ascii=False) + "\n")
                done[result.id] = result
            f.flush()
    results = [done[i] for i in ids]
    by_id = {i: r for i, r in zip(ids, records)}
    rows = [row for res in results for row in fusion_records({**by_id[res.id], "id": res.id}, res)]
    write_jsonl(out / "fusion.jsonl", rows)
    stats = statistics(results)
    stats["records"] = len(rows)
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    plot_labels(stats, out / "labels.png")
    logger.info("fusion data: %d prompts, labels %s, %d records -> %s", len(results), stats["labels"], len(rows), out)
    return stats


def _label_chunk(
    model: Any,
    tokenizer: Any,
    chunk: list[dict[str, Any]],
    config: FusionBuildConfig,
    rule: LabelRule,
    check: Check,
    judge: Judge | None,
    ts: str,
    te: str,
) -> list[PromptResult]:
    sampled = [r for r in chunk if verifiable(r)]
    fast = dict(zip([r["id"] for r in sampled], sample_candidates(model, tokenizer, sampled, Mode.FAST, config)))
    slow = dict(zip([r["id"] for r in sampled], sample_candidates(model, tokenizer, sampled, Mode.SLOW, config)))
    return [
        decide(r, rule, check, fast.get(r["id"], ()), slow.get(r["id"], ()), pool_of(r, tokenizer), judge, ts, te)
        for r in chunk
    ]


def _read_done(path: Path) -> dict[str, PromptResult]:
    """Results of an earlier, interrupted build (a torn last line is ignored)."""
    done: dict[str, PromptResult] = {}
    if not path.exists():
        return done
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                logger.warning("%s: ignoring a torn line from an interrupted build", path)
                continue
            done[row["id"]] = PromptResult(**row)
    return done


def read_results(path: str | Path) -> list[PromptResult]:
    """The per-prompt results of a build (``labels.jsonl``)."""
    return list(_read_done(Path(path)).values())


# ------------------------------------------------------------------------------------------- phase-2 data mix


def record_bucket(row: dict[str, Any]) -> str:
    """The difficulty bucket of a fusion record (the same buckets as :func:`statistics`)."""
    return bucket_of(
        PromptResult(
            id=str(row.get("id")),
            difficulty=None if row.get("difficulty") is None else float(row["difficulty"]),
            fast_rate=row.get("fast_rate"),
            slow_rate=row.get("slow_rate"),
            label=row.get("label"),
            label_source=str(row.get("label_source")),
        )
    )


def difficulty_mix(rows: Sequence[dict[str, Any]], floor: float = 0.2) -> dict[str, float]:
    """Shares of the difficulty buckets in the phase-2 ``/auto_think`` mix, from the measured pass rates.

    A bucket's weight is ``floor + (1 - mean pass rate of its prompts in their labelled mode)``: buckets the model
    still gets wrong in the mode it should use get more rows, and no bucket gets fewer than ``floor`` allows.
    Prompts labelled without pass rates count as half right. Returned normalised to sum to 1.
    """
    if floor < 0:
        raise ValueError(f"floor={floor} must be >= 0")
    rates: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        rate = r.get("fast_rate") if r.get("label") == FAST else r.get("slow_rate")
        rates[record_bucket(r)].append(0.5 if rate is None else float(rate))
    if not rates:
        raise ValueError("difficulty_mix: no rows")
    raw = {b: floor + 1.0 - sum(v) / len(v) for b, v in rates.items()}
    total = sum(raw.values())
    if total <= 0:  # every bucket perfect and floor 0: mix evenly
        return {b: 1.0 / len(raw) for b in sorted(raw, key=_bucket_sort_key)}
    return {b: raw[b] / total for b in sorted(raw, key=_bucket_sort_key)}
