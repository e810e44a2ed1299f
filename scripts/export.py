"""Export fastslow records as RL prompt files for verl or OpenRLHF, with the MARS config their reward adapters read.

    python scripts/export.py --to verl --data outputs/data/train.jsonl --out outputs/export/train.parquet \
        --think-format qwen3 --mode slow
    python scripts/export.py --to openrlhf --dataset-name openai/gsm8k --dataset-config main \
        --dataset-preset gsm8k --out outputs/export/gsm8k.jsonl --tokenizer outputs/final

verl (``--to verl``): Parquet, one row per record, in the schema of verl's ``examples/data_preprocess`` scripts::

    data_source   the record's source (or --data-source, else fastslow/<task>)
    prompt        the chat messages [{"role": "user", "content": ...}] (the mode tag appended with --mode)
    ability       the task (math, code, general)
    reward_model  {"style": "rule", "ground_truth": the reference answer; for code, the tests as JSON text}
    extra_info    {"index", "split", "id", "task", "answer", "tests" (JSON text or null), "difficulty", "question"}

OpenRLHF (``--to openrlhf``): JSONL rows ``{"input": messages, "label": JSON {"task", "answer", "tests"},
"datasource": ...}`` for ``--data.input_key input --data.label_key label --data.apply_chat_template``.

Next to the data it writes ``<out stem>.mars.yaml``: the MARS config (``--mars-config``, else the defaults) with the
think format replies are read in (``--think-format`` or the ``--tokenizer``'s, recorded as
``think_start``/``think_end``), and ``<out stem>.export.json`` (what was written, from what, and the engine's
command-line keys for the reward function), whose keys it also prints. Records come from ``--data`` (fastslow record
files) or a data set (``--dataset-name`` with a preset or column mapping; see ``train/core/sources.py``).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from rewards.router import MARSConfig
from train.core.cli import setup_logging
from train.core.data import DataError, read_records, to_messages, write_jsonl
from train.core.loading import load_tokenizer
from train.core.modes import THINK_FORMATS, Mode, ThinkFormat, tagged, untagged
from train.core.sources import add_source_arguments, load_source_from

logger = logging.getLogger("scripts.export")

ENGINES = ("verl", "openrlhf")
ADAPTERS = Path(__file__).resolve().parents[1] / "rewards" / "adapters"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--to", required=True, choices=ENGINES, help="the RL framework whose prompt format to write")
    p.add_argument("--data", nargs="+", help="fastslow record files (jsonl/json/csv/parquet); or --dataset-name")
    add_source_arguments(p)
    p.add_argument("--out", required=True, help="output file (.parquet for verl, .jsonl for openrlhf)")
    p.add_argument("--split", default="train", help="the split name written into verl's extra_info")
    p.add_argument(
        "--mode", default="keep", choices=["keep", *(m.value for m in Mode)], help="mode tag for every prompt"
    )
    p.add_argument("--data-source", default=None, help="data_source of every row (default: record source)")
    fmt = p.add_mutually_exclusive_group(required=True)
    fmt.add_argument("--think-format", choices=sorted(THINK_FORMATS), help="think tags the policy writes")
    fmt.add_argument("--tokenizer", help="the policy's tokenizer: its think format (and token counts in the adapters)")
    p.add_argument("--mars-config", default=None, help="MARS config YAML to extend (default: MARSConfig defaults)")
    p.add_argument("--limit", type=int, default=None, help="export only the first N records")
    return p.parse_args(argv)


def load(args: argparse.Namespace) -> list[dict[str, Any]]:
    if bool(args.data) == bool(args.dataset_name):
        raise SystemExit("give exactly one of --data (record files) and --dataset-name (a data set)")
    if args.dataset_name:
        return load_source_from(args, limit=args.limit)
    records = [r for path in args.data for r in read_records(path)]
    return records[: args.limit] if args.limit is not None else records


def ground_truth(record: dict[str, Any]) -> str:
    """The reference the rule rewards check: the tests (JSON text) for code, else the answer ("" when none)."""
    if record["task"] == "code":
        return json.dumps(record["tests"] or [], ensure_ascii=False)
    return record["answer"] or ""


def prompt_messages(record: dict[str, Any], mode: str) -> list[dict[str, str]]:
    prompt = record["prompt"] if mode == "keep" else tagged(record["prompt"], mode)
    return to_messages(prompt)


def data_source(record: dict[str, Any], override: str | None) -> str:
    return override or record.get("source") or f"fastslow/{record['task']}"


def question(record: dict[str, Any]) -> str:
    """The last user turn without its mode tag (the judge rewards read it as the question)."""
    messages = to_messages(untagged(record["prompt"]))
    return [m for m in messages if m["role"] == "user"][-1]["content"]


def verl_rows(records: list[dict[str, Any]], split: str, mode: str, source: str | None) -> list[dict[str, Any]]:
    rows = []
    for i, r in enumerate(records):
        tests = None if r["tests"] is None else json.dumps(r["tests"], ensure_ascii=False)
        extra = {"index": i, "split": split, "id": r["id"], "task": r["task"], "answer": r["answer"], "tests": tests}
        extra.update(difficulty=r.get("difficulty"), question=question(r))
        rows.append(
            {
                "data_source": data_source(r, source),
                "prompt": prompt_messages(r, mode),
                "ability": r["task"],
                "reward_model": {"style": "rule", "ground_truth": ground_truth(r)},
                "extra_info": extra,
            }
        )
    return rows


def openrlhf_rows(records: list[dict[str, Any]], mode: str, source: str | None) -> list[dict[str, Any]]:
    rows = []
    for r in records:
        label = {"task": r["task"], "answer": r["answer"], "tests": r["tests"], "id": r["id"]}
        rows.append(
            {
                "input": prompt_messages(r, mode),
                "label": json.dumps(label, ensure_ascii=False),
                "datasource": data_source(r, source),
            }
        )
    return rows


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pd.DataFrame(rows).to_parquet(tmp, index=False)
    tmp.replace(path)
    return path


def think_of(args: argparse.Namespace) -> ThinkFormat:
    if args.think_format:
        return THINK_FORMATS[args.think_format]
    return ThinkFormat.from_tokenizer(load_tokenizer(args.tokenizer))


def write_mars_config(path: Path, base: str | None, think: ThinkFormat) -> Path:
    """The MARS config the adapters read: ``base`` (or the defaults) with the think format set."""
    data = (yaml.safe_load(Path(base).read_text(encoding="utf-8")) or {}) if base else {}
    config = MARSConfig.from_dict({**data, "think_start": think.start, "think_end": think.end}, base or "defaults")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False, allow_unicode=True), encoding="utf-8")
    tmp.replace(path)
    return path


def engine_keys(engine: str, out: Path, mars: Path, tokenizer: str | None) -> list[str]:
    """The engine's command-line keys that read this export with the fastslow reward."""
    if engine == "verl":
        keys = [
            f"data.train_files={out}",
            "data.prompt_key=prompt",
            f"reward.custom_reward_function.path={ADAPTERS / 'verl.py'}",
            "reward.custom_reward_function.name=compute_score",
            f"+reward.custom_reward_function.reward_kwargs.config={mars}",
        ]
        if tokenizer:
            keys.append(f"+reward.custom_reward_function.reward_kwargs.tokenizer={tokenizer}")
        return keys
    keys = [
        f"FASTSLOW_MARS_CONFIG={mars}",
        f"--data.prompt_dataset {out}",
        "--data.input_key input",
        "--data.label_key label",
        "--data.apply_chat_template",
        f"--reward.remote_url {ADAPTERS / 'openrlhf.py'}",
    ]
    return keys + ([f"FASTSLOW_TOKENIZER={tokenizer}"] if tokenizer else [])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    setup_logging()
    records = load(args)
    if not records:
        raise DataError("no records to export")
    out = Path(args.out)
    think = think_of(args)
    code_without_tests = sum(r["task"] == "code" and not r["tests"] for r in records)
    if code_without_tests:
        logger.warning("%d code records have no tests: the code reward does not apply to them", code_without_tests)
    if args.to == "verl":
        write_parquet(out, verl_rows(records, args.split, args.mode, args.data_source))
    else:
        write_jsonl(out, openrlhf_rows(records, args.mode, args.data_source))
    stem = out.with_suffix("")
    mars = write_mars_config(stem.with_name(stem.name + ".mars.yaml"), args.mars_config, think)
    tokenizer = str(Path(args.tokenizer).resolve()) if args.tokenizer and Path(args.tokenizer).exists() else None
    tasks: dict[str, int] = {}
    for r in records:
        tasks[r["task"]] = tasks.get(r["task"], 0) + 1
    manifest = {
        "engine": args.to,
        "out": str(out),
        "rows": len(records),
        "tasks": tasks,
        "mode": args.mode,
        "think_start": think.start,
        "think_end": think.end,
        "mars_config": str(mars),
        "inputs": args.data or [args.dataset_name],
        "engine_keys": engine_keys(args.to, out.resolve(), mars.resolve(), tokenizer or args.tokenizer),
    }
    manifest_path = stem.with_name(stem.name + ".export.json")
    tmp = manifest_path.with_name(manifest_path.name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(manifest_path)
    print(f"wrote {len(records)} rows ({tasks}) to {out}; reward config {mars}")
    print("engine keys:\n  " + "\n  ".join(manifest["engine_keys"]))
    return manifest


if __name__ == "__main__":
    main()
