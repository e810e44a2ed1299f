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

import copy
import json
import logging
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from accelerate import PartialState
from tqdm.auto import tqdm

from rewards.math import verify_answer
from rewards.verify import check as rule_check
from train.core.checks import exact_match
from train.core.data import base_id, difficulty_bucket, record_id, write_jsonl
from train.core.fingerprint import RUN_CONFIG, check_run_config
from train.core.modes import Mode, ThinkFormat, tagged, untagged
from train.core.plots import pyplot, save_figure
from train.eval.evaluation import bucket_sort_key
from train.eval.labels import FAST, SLOW, LabelRule, label_from_rates, margin_in_samples
from train.sampling.base import Sampler, SamplerConfig, SamplingParams, make_sampler
from train.sampling.params import chunk_seed
from train.sampling.reply import Reply
from train.sampling.sharded import ShardedSampler

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
    if record.get("answer") in (None, ""):
        return None
    if exact_match(answer, record):
        return True
    return verify_answer(record["answer"], answer)


def mars_check(answer: str | None, record: dict[str, Any]) -> bool | None:
    """The MARS rule layer (:func:`rewards.verify.check`): math-verify for math, sandboxed tests for code."""
    return rule_check(answer, record)


CHECKS: dict[str, Check] = {"exact": exact_match, "math": math_check, "mars": mars_check}


def get_check(name: str) -> Check:
    if name not in CHECKS:
        raise ValueError(f"unknown check {name!r}; expected one of {sorted(CHECKS)}")
    return CHECKS[name]


# ---------------------------------------------------------------------------------------------------- targets


def reply_mode(text: str, think: ThinkFormat) -> str | None:
    """``fast`` or ``slow`` for a well-formed reply with an answer, else None."""
    parsed = think.parse(text)
    if not parsed.well_formed or not parsed.answer or parsed.mode not in (FAST, SLOW):
        return None
    return parsed.mode


def shortest_correct(
    replies: Sequence[Reply], record: dict[str, Any], mode: str, check: Check, think: ThinkFormat
) -> Reply | None:
    """The shortest well-formed reply in ``mode`` whose answer passes ``check`` (ties: the first one)."""
    best = None
    for r in replies:
        if reply_mode(r.text, think) != mode:
            continue
        if best is not None and r.num_tokens >= best.num_tokens:
            continue
        if check(think.parse(r.text).answer, record):
            best = r
    return best


def fast_from_slow(slow: str, think: ThinkFormat) -> str:
    """A fast reply with the (verified) answer of a slow one."""
    return think.format(think.parse(slow).answer or "", "")


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
    fast_samples: Sequence[Reply] = (),
    slow_samples: Sequence[Reply] = (),
    pool: Sequence[Reply] = (),
    judge: Judge | None = None,
    *,
    think: ThinkFormat,
) -> PromptResult:
    """Label one prompt and choose its targets from the model's samples and the teacher pool.

    Pass rates count a sample as correct only when it is in the asked-for mode (a "fast" sample that thinks is
    not a correct fast answer). Without samples, or when the record cannot be verified, the fallback labels it.
    Every reply (samples and pool) is read with ``think``, the student's format: rewrite the pool into it first
    (:func:`pool_of`). A target's source is ``model`` (a sample) or ``teacher`` (the pool); on equal length the
    model's own reply wins.
    """
    rid = str(record.get("id") or record_id(record["prompt"]))
    difficulty = record.get("difficulty")
    can_verify = verifiable(record)

    def ok(r: Reply, mode: str) -> bool:
        return reply_mode(r.text, think) == mode and bool(check(think.parse(r.text).answer, record))

    fast_rate = slow_rate = None
    if can_verify and fast_samples and slow_samples:
        fast_rate = sum(ok(r, FAST) for r in fast_samples) / len(fast_samples)
        slow_rate = sum(ok(r, SLOW) for r in slow_samples) / len(slow_samples)
        label = Label(label_from_rates(fast_rate, slow_rate, rule), "pass_rate")
    else:
        label = fallback_label(record, rule, judge)

    targets: dict[str, tuple[Reply, str] | None] = {}
    for mode, samples in ((FAST, fast_samples), (SLOW, slow_samples)):
        if can_verify:
            own = shortest_correct(samples, record, mode, check, think)
            teacher = shortest_correct(pool, record, mode, check, think)
        else:  # nothing to verify against: trust the teacher pool, shortest first
            own, teacher = None, _shortest_in_mode(pool, mode, think)
        targets[mode] = _shorter((own, "model"), (teacher, "teacher"))
    result = PromptResult(
        id=rid,
        difficulty=None if difficulty is None else float(difficulty),
        fast_rate=fast_rate,
        slow_rate=slow_rate,
        label=label.label,
        label_source=label.source,
        fast_tokens=_mean([r.num_tokens for r in fast_samples]),
        slow_tokens=_mean([r.num_tokens for r in slow_samples]),
    )
    fast, slow = targets[FAST], targets[SLOW]
    if slow is not None:
        result.slow_target, result.slow_target_source = slow[0].text, slow[1]
    if fast is not None:
        result.fast_target, result.fast_target_source = fast[0].text, fast[1]
    elif slow is not None:
        result.fast_target, result.fast_target_source = fast_from_slow(slow[0].text, think), "slow"
    return result


def _shorter(*options: tuple[Reply | None, str]) -> tuple[Reply, str] | None:
    """The shortest present reply with its source; the first one on a tie."""
    present = [(r, source) for r, source in options if r is not None]
    return min(present, key=lambda x: x[0].num_tokens) if present else None


def _shortest_in_mode(pool: Sequence[Reply], mode: str, think: ThinkFormat) -> Reply | None:
    fits = [r for r in pool if reply_mode(r.text, think) == mode]
    return min(fits, key=lambda r: r.num_tokens) if fits else None


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


# ----------------------------------------------------------------------------------------------------- records

#: Record keys naming the think format of the record's ``response`` and ``pool`` (the teacher's), when it is not
#: the student's.
POOL_FORMAT_KEYS = ("think_start", "think_end")


def fusion_records(record: dict[str, Any], result: PromptResult) -> list[dict[str, Any]]:
    """Training records for one labelled prompt: ``/no_think``, ``/think``, no tag, and ``/auto_think``.

    Each copies the source record's fields (minus ``response``, ``pool`` and the pool's think format: the targets
    are in the student's) and adds ``response``, ``fusion_tag`` (``no_think``, ``think``, ``none``,
    ``auto_think``), ``label`` and the pass rates. Empty when the prompt has no usable targets.
    """
    if not result.usable:
        return []
    base = {k: v for k, v in record.items() if k not in ("response", "pool", "prompt", *POOL_FORMAT_KEYS)}
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
        prompt = tagged(record["prompt"], mode)
        out.append({**base, "id": f"{result.id}-{tag}", "prompt": prompt, "response": target, "fusion_tag": tag})
    return out


# ------------------------------------------------------------------------------------------------- statistics


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
    for bucket in sorted(groups, key=bucket_sort_key):
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


def plot_labels(stats: dict[str, Any], path: str | Path) -> Path:
    """A PNG of label counts per difficulty bucket (stacked bars) with the mean pass rates per mode."""
    buckets = list(stats["per_difficulty"])
    rows = [stats["per_difficulty"][b] for b in buckets]
    x = range(len(buckets))
    fig, ax = pyplot().subplots(figsize=(6, 4))
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
    return save_figure(fig, path)


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
    margin: float | None = field(
        default=None,
        metadata={
            "help": "Fast label also needs fast pass rate >= slow pass rate - margin (null: one sample, "
            "1 / num_samples; a margin finer than one sample tolerates no fast miss)."
        },
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
        margin = 1 / self.num_samples if self.margin is None else self.margin
        return LabelRule(self.fast_threshold, margin, self.fallback_max_easy_difficulty)

    def sampler_config(self) -> SamplerConfig:
        """The transformers sampler these options ask for (when the builder is given a model, not a sampler)."""
        return SamplerConfig(backend="transformers", batch_size=self.batch_size, self_repair=self.self_repair)


def pool_format(record: dict[str, Any], think: ThinkFormat) -> ThinkFormat:
    """The think format of a record's teacher replies: its ``think_start``/``think_end``, else the student's."""
    start, end = (record.get(k) for k in POOL_FORMAT_KEYS)
    return ThinkFormat(start, end) if start and end else think


def pool_of(record: dict[str, Any], think: ThinkFormat, tokenizer: Any = None) -> list[Reply]:
    """The teacher pool of a record, its ``response`` and the replies in its ``pool`` list, in ``think``'s tags.

    A teacher that writes other tags (:func:`pool_format`) has its replies rewritten into the student's, so they are
    read, and trained on, in the student's format. Lengths are counted with ``tokenizer`` (characters without one).
    """
    source = pool_format(record, think)
    texts = ([record["response"]] if record.get("response") else []) + list(record.get("pool") or [])
    texts = [think.rewrite(t, source) for t in texts if isinstance(t, str) and t]
    return [Reply(t, _count(tokenizer, t)) for t in texts]


def _count(tokenizer: Any, text: str) -> int:
    if tokenizer is None:
        return len(text)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def sample_replies(
    sampler: Sampler,
    records: Sequence[dict[str, Any]],
    mode: Mode,
    config: FusionBuildConfig,
    tokenizer: Any = None,
    seed: int | None = None,
) -> list[list[Reply]]:
    """``num_samples`` replies per record in ``mode`` (greedy for one sample).

    With ``fast_prefill`` the fast prompts end with the empty think block and the block is put back in front of
    each reply (its tokens counted with ``tokenizer``, the sampler's when not given), so every reply carries its
    own think block.
    """
    prefill = config.fast_prefill and mode == Mode.FAST
    params = SamplingParams(
        n=config.num_samples,
        temperature=config.temperature if config.num_samples > 1 else 0.0,
        max_new_tokens=config.max_new_tokens,
        seed=seed,
    )
    prompts = [r["prompt"] for r in records]
    asked = mode if config.sample_tags else None
    if not prefill:
        return sampler.sample(prompts, params, asked)
    replies = prefilled(sampler).sample(prompts, params, asked)
    prefix = sampler.think.format("")
    extra = _count(tokenizer if tokenizer is not None else getattr(sampler, "tokenizer", None), prefix)
    # The token ids and log-probs of the reply no longer cover its text: drop them rather than leave them wrong.
    return [
        [Reply(prefix + r.text, r.num_tokens + extra, r.finish_reason, repairs=r.repairs) for r in row]
        for row in replies
    ]


def prefilled(sampler: Sampler) -> Sampler:
    """A copy of ``sampler`` whose prompts end with an empty think block (Qwen3's ``enable_thinking=False``)."""
    if isinstance(sampler, ShardedSampler):
        return sampler.with_inner(prefilled)
    if not isinstance(getattr(sampler, "chat_template_kwargs", None), dict):
        raise ValueError(
            f"{type(sampler).__name__} cannot prefill the empty think block; use the transformers sampler or "
            "fast_prefill=False"
        )
    fast = copy.copy(sampler)
    fast.chat_template_kwargs = {**sampler.chat_template_kwargs, "enable_thinking": False}
    return fast


def prompts_of_fusion(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The prompt records behind fusion records (to label them again): untagged prompt, targets as the pool."""
    records: dict[str, dict[str, Any]] = {}
    for row in rows:
        base = base_id(row)
        keep = {k: v for k, v in row.items() if k not in ("response", "fusion_tag", "label", "label_source",
                                                          "fast_rate", "slow_rate", "prompt")}  # fmt: skip
        rec = records.setdefault(base, {**keep, "id": base, "prompt": untagged(row["prompt"]), "pool": []})
        if row.get("response") and row["response"] not in rec["pool"]:
            rec["pool"].append(row["response"])
    return list(records.values())


def merge_prompts(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per prompt: records with the same ``id`` (or the same prompt once mode tags are removed) merge.

    Their prompt loses its mode tag, and every ``response`` and ``pool`` reply joins one teacher pool, so SFT data
    with a slow and a fast response per problem gives one prompt with both as candidate targets. Records of one
    prompt must name the same think format for their replies (:func:`pool_format`).
    """
    merged: dict[str, dict[str, Any]] = {}
    for r in records:
        prompt = untagged(r["prompt"])
        rid = str(r.get("id") or record_id(prompt))
        replies = ([r["response"]] if r.get("response") else []) + list(r.get("pool") or [])
        if rid not in merged:
            merged[rid] = {**{k: v for k, v in r.items() if k != "response"}, "id": rid, "prompt": prompt, "pool": []}
        elif merged[rid]["prompt"] != prompt:
            raise ValueError(
                f"record id {rid!r} is used by two different prompts: {merged[rid]['prompt']!r:.60} and {prompt!r:.60}"
            )
        elif any(merged[rid].get(k) != r.get(k) for k in POOL_FORMAT_KEYS):
            raise ValueError(f"record id {rid!r}: its replies are written in two think formats")
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
    *,
    sampler: Sampler | None = None,
    seed: int | None = None,
    state: Any = None,
) -> dict[str, Any]:
    """Label ``records`` with the model's pass rates and write the fusion data set to ``out_dir``.

    ``seed`` (the run's) seeds each chunk's sampling (:func:`~train.sampling.params.chunk_seed` of the chunk's first
    id), so two runs, or a run and its resume, draw the same replies and the same labels; None leaves the global
    random state in charge.

    Samples with ``sampler`` when given (``model`` may then be None; ``tokenizer`` still counts the pool's tokens),
    else with a transformers sampler over ``model`` (:meth:`FusionBuildConfig.sampler_config`). Replies are read,
    and teacher replies rewritten, in the sampler's think format.

    Writes ``labels.jsonl`` (one :class:`PromptResult` per prompt, appended chunk by chunk so an interrupted
    build resumes where it stopped, under the configuration recorded in ``run_config.json``), ``fusion.jsonl``
    (the tagged training records), ``stats.json`` and
    ``labels.png``. Returns the statistics.

    In a multi-process run every process calls it with a :class:`~train.sampling.sharded.ShardedSampler` (each
    samples its share of every chunk, all get the whole chunk back); the main process (of accelerate's ``state``)
    writes the files.
    """
    state = state if state is not None else PartialState()
    writes = state.is_main_process
    out = Path(out_dir)
    check = check or get_check(config.check)
    rule = config.rule()
    if writes and 0 < rule.margin and margin_in_samples(rule.margin, config.num_samples) == 0:  # once, not per rank
        logger.warning("fusion: margin %g is finer than one of %d samples (%.3g): it tolerates no fast miss, and a "
                       "prompt whose slow replies are all right is labelled slow after one wrong fast reply",
                       rule.margin, config.num_samples, 1 / config.num_samples)  # fmt: skip
    sampler = sampler or make_sampler(config.sampler_config(), model=model, tokenizer=tokenizer)
    records = merge_prompts(records)
    ids = [r["id"] for r in records]
    labels = out / "labels.jsonl"
    if writes:
        out.mkdir(parents=True, exist_ok=True)
        # Labels of another configuration must not be mixed with this one's (ResumeConfigError names the keys).
        check_run_config(out / RUN_CONFIG, fusion_run_config(config, seed, sampler.think))
        done = _read_done(labels)
        # Rewrite what was kept, so a torn last line never glues itself to the first new one.
        write_jsonl(labels, [asdict(r) for r in done.values()])
    state.wait_for_everyone()
    if not writes:
        done = _read_done(labels)  # what the main process kept: every process labels the same chunks
    todo = [(i, r) for i, r in zip(ids, records) if i not in done]
    if done and writes:
        logger.info("resuming: %d of %d prompts already labelled", len(records) - len(todo), len(records))
    with labels.open("a", encoding="utf-8") if writes else nullcontext() as f:
        for start in tqdm(range(0, len(todo), config.chunk_size), desc="fusion labels", leave=False):
            chunk = [{**r, "id": i} for i, r in todo[start : start + config.chunk_size]]
            draw = None if seed is None else chunk_seed(seed, str(chunk[0]["id"]))
            for result in _label_chunk(sampler, tokenizer, chunk, config, rule, check, judge, draw):
                if f is not None:
                    f.write(json.dumps(asdict(result), ensure_ascii=False) + "\n")
                done[result.id] = result
            if f is not None:
                f.flush()
    results = [done[i] for i in ids]
    by_id = {i: r for i, r in zip(ids, records)}
    rows = [row for res in results for row in fusion_records({**by_id[res.id], "id": res.id}, res)]
    stats = statistics(results)
    stats["records"] = len(rows)
    if writes:
        write_jsonl(out / "fusion.jsonl", rows)
        (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
        plot_labels(stats, out / "labels.png")
        logger.info(
            "fusion data: %d prompts, labels %s, %d records -> %s", len(results), stats["labels"], len(rows), out
        )
    state.wait_for_everyone()
    return stats


def _label_chunk(
    sampler: Sampler,
    tokenizer: Any,
    chunk: list[dict[str, Any]],
    config: FusionBuildConfig,
    rule: LabelRule,
    check: Check,
    judge: Judge | None,
    seed: int | None = None,
) -> list[PromptResult]:
    think = sampler.think
    sampled = [r for r in chunk if verifiable(r)]
    ids = [r["id"] for r in sampled]
    slow_seed = None if seed is None else seed + 1  # the two modes must not share their random draws
    fast = dict(zip(ids, sample_replies(sampler, sampled, Mode.FAST, config, tokenizer, seed)))
    slow = dict(zip(ids, sample_replies(sampler, sampled, Mode.SLOW, config, tokenizer, slow_seed)))
    return [
        decide(
            r,
            rule,
            check,
            fast.get(r["id"], ()),
            slow.get(r["id"], ()),
            pool_of(r, think, tokenizer),
            judge,
            think=think,
        )
        for r in chunk
    ]


def _read_done(path: Path) -> dict[str, PromptResult]:
    """Results of an earlier, interrupted build.

    Read as bytes: a kill mid-write can tear the last line inside a multi-byte character, which a text read would
    fail to decode. A torn last line (no newline) is dropped and logged; a malformed complete line is an error.
    """
    done: dict[str, PromptResult] = {}
    if not path.exists():
        return done
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        logger.warning("%s: ignoring a torn last line (%d bytes) from an interrupted build", path, len(data) - end)
    for line_no, line in enumerate(data[:end].decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}, row {line_no}: malformed JSON ({exc.msg})") from None
        done[row["id"]] = PromptResult(**row)
    return done


def fusion_run_config(config: FusionBuildConfig, seed: int | None, think: ThinkFormat) -> dict[str, Any]:
    """The keys that decide a fusion build's labels: the build config's own fields (not those of a subclass such as
    the dual-system config), the seed and the think format."""
    keys = {f.name: getattr(config, f.name) for f in fields(FusionBuildConfig)}
    return {**keys, "seed": seed, "think_start": think.start, "think_end": think.end}


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
        return {b: 1.0 / len(raw) for b in sorted(raw, key=bucket_sort_key)}
    return {b: raw[b] / total for b in sorted(raw, key=bucket_sort_key)}
