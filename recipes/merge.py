"""Merge checkpoints (or LoRA adapters) with a mergekit-style YAML config, streamed tensor by tensor.

    python recipes/merge.py --config recipes/configs/tiny/merge_ties.yaml --out outputs/merged
    accelerate launch --config_file recipes/accelerate/cpu.yaml recipes/merge.py --config FILE --out DIR

A mergekit config runs unchanged for the methods both support (linear, task_arithmetic, ties, dare_ties,
dare_linear, slerp); fastslow adds ``ema``. Every top-level key can be overridden on the command line, e.g.
``--merge_method dare_ties --dtype bfloat16 --parameters '{lambda: 0.8}'`` (list/mapping keys take YAML text).
Merging is single-process: under ``accelerate launch`` with several processes only the main one merges.
See docs/merging.md for methods, parameters and defaults.
"""

from __future__ import annotations

import logging
import os
import typing
from dataclasses import MISSING, Field, field, fields, make_dataclass
from pathlib import Path
from typing import Any

import yaml

from train.core.cli import parse_args, setup_logging
from train.core.device import close_distributed
from train.merging import MergeConfig, merge_from_config

logger = logging.getLogger("recipes.merge")

# The merge config's keys are MergeConfig's fields (train/merging/config.py), with their defaults; only their help
# lives here. List and mapping keys take YAML text on the command line.
_HELP = {
    "merge_method": "linear, task_arithmetic, ties, dare_ties, dare_linear, slerp, or ema (fastslow)",
    "models": "Inputs: a list of {model: PATH, parameters: {weight, density}} (YAML text on the CLI).",
    "base_model": "Base model (task vectors are taken from it; slerp's t=0; ema's average).",
    "parameters": "Method parameters (t, lambda, normalize, rescale, beta, weight, density, int8_mask).",
    "dtype": "Inputs are cast to this dtype before merging; default: keep theirs.",
    "out_dtype": "Output dtype; default: dtype, else the inputs'.",
    "tokenizer_source": "'base' or a model path to copy the tokenizer from; default: base or first.",
    "vocab_mismatch": "Embeddings of different vocab sizes: error, truncate (shared rows) or source (+ rest).",
    "random_seed": "Seed for DARE's random drops (per tensor and model).",
    "max_shard_size": "Largest output shard, e.g. 500MB, 5GB.",
}
# mergekit keys that are not MergeConfig fields: MergeConfig.from_dict turns `slices` into models and names the
# others as unsupported.
_MERGEKIT_KEYS = {
    "slices": "mergekit slices; only one slice whose sources cover every layer (same as models).",
    "tokenizer": "mergekit's tokenizer block: not supported.",
    "chat_template": "mergekit's chat_template: not supported.",
    "modules": "mergekit's multi-module merges: not supported.",
}
_YAML_FIELDS = ("models", "slices", "parameters", "tokenizer", "modules")
_SCRIPT_FIELDS = [
    ("out", str | None, field(default=None, metadata={"help": "Output folder (written atomically). Required."})),
    ("overwrite", bool, field(default=False, metadata={"help": "Replace an existing non-empty output folder."})),
    ("show_progress", bool, field(default=True, metadata={"help": "Show a progress bar over tensors."})),
    ("hash_files", bool, field(default=True, metadata={"help": "Record the sha256 of every input and output file."})),
    (
        "allow_non_finite",
        bool,
        field(default=False, metadata={"help": "Merge inputs holding NaN/inf (refused by default)."}),
    ),
]


def _cli_field(f: Field, hint: Any) -> tuple[str, Any, Any]:
    """A MergeConfig field as a command-line key: YAML text for lists and mappings, optional when required."""
    if f.name in _YAML_FIELDS:
        hint = str | None
    elif hint == str | int:  # max_shard_size: "5GB" or a byte count, both given as text
        hint = str
    if f.default is MISSING:  # merge_method: required by MergeConfig, here checked after parsing (or --config)
        return f.name, hint | None, field(default=None, metadata={"help": _HELP.get(f.name, "See docs/merging.md.")})
    default = None if f.name in _YAML_FIELDS else f.default
    return f.name, hint, field(default=default, metadata={"help": _HELP.get(f.name, "See docs/merging.md.")})


def _merge_config(self: Any) -> MergeConfig:
    """The mergekit-style mapping (YAML text from the command line parsed) as a validated MergeConfig."""
    skip = {name for name, _, _ in _SCRIPT_FIELDS}
    data: dict[str, Any] = {}
    for f in fields(self):
        value = getattr(self, f.name)
        if isinstance(value, str) and value.strip() in ("null", "None", "~", ""):
            value = None  # lets the command line clear a key the config file set
        if f.name in skip or value is None:
            continue
        if f.name in _YAML_FIELDS and isinstance(value, str):
            value = yaml.safe_load(value)
        data[f.name] = value
    return MergeConfig.from_dict(data)


_hints = typing.get_type_hints(MergeConfig)
#: The merge config (MergeConfig's keys plus mergekit's) and where to write the result.
MergeScriptArguments = make_dataclass(
    "MergeScriptArguments",
    _SCRIPT_FIELDS[:2]
    + [_cli_field(f, _hints[f.name]) for f in fields(MergeConfig)]
    + [(name, str | None, field(default=None, metadata={"help": h})) for name, h in _MERGEKIT_KEYS.items()]
    + _SCRIPT_FIELDS[2:],
    # Keys whose config-file value is a list or mapping, parsed by merge_config (train.core.cli lets any through).
    namespace={"merge_config": _merge_config, "__module__": __name__, "yaml_fields": {*_YAML_FIELDS, *_MERGEKIT_KEYS}},
)


# The config dataclasses, in the order TrlParser fills them (also read by the config-validation test).
ARG_CLASSES = (MergeScriptArguments,)


def main(argv: list[str] | None = None) -> Path | None:
    (args,) = parse_args(ARG_CLASSES, argv)
    setup_logging("INFO")
    if not args.out:
        raise SystemExit("--out DIR is required")
    if args.merge_method is None:
        raise SystemExit("no merge_method: give --config FILE (or --merge_method and --models)")
    cfg = args.merge_config()
    if int(os.environ.get("RANK", "0")) != 0:
        logger.info("not the main process; the main process merges")
        return None
    out = merge_from_config(
        cfg,
        args.out,
        overwrite=args.overwrite,
        show_progress=args.show_progress,
        hash_files=args.hash_files,
        allow_non_finite=args.allow_non_finite,
    )
    logger.info("merged model written to %s", out)
    return out


if __name__ == "__main__":
    main()
    close_distributed()
