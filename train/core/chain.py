"""The chain of a scale's stages: which stage writes each path a later stage reads.

A scale folder (``recipes/configs/embedded-7b``) holds one YAML per recipe stage; the data-building scripts between
them (teacher generation, verification, fusion labels) have no YAML, so their paths are declared here
(:data:`SCRIPT_STEPS`). :func:`load_chain` reads each stage's input paths (the model and data keys) and output paths
(the folder its recipe saves the final model in, the files it writes) from its YAML, the way the recipe does:

- ``sft``, ``grpo``: the final model is ``output_dir`` (``output_dir/merged`` for LoRA with ``merge_lora``);
- ``distill``: ``output_dir/iteration_<iterations-1>/model`` (also named in ``final.json``); every iteration's
  ``student`` and ``model`` folders are written too; ``output_dir`` itself is not a model folder;
- ``dual_system``: ``output_dir`` (``output_dir/merged`` for LoRA);
- ``merge``: the ``out`` key, or the ``--out`` its command gives (:data:`CLI_OUTPUTS`).

:func:`check_chain` then holds the rule: every input under ``outputs/`` is written by an earlier step (the exact
folder or file, not a parent), and a model read from anywhere else (the user's base: a local folder or hub id)
is allowed only as the first model a chain reads. Data outside ``outputs/`` is the user's (prompt sets under
``data/``). ``scripts/preflight.py`` prints the chain and ``tests/test_stage_chain.py`` checks it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

PRODUCED_ROOT = "outputs/"  # paths under it must come from an earlier step
MODEL_KEYS = ("model_name_or_path", "base_model")
DATA_KEYS = ("train_file", "train_files", "eval_file", "fusion_file", "replay_files", "fast_files", "phase2_files")


@dataclass(frozen=True)
class Step:
    """One step of a chain: a recipe run with its YAML, or a data-building script."""

    name: str
    recipe: str | None  # recipes/<recipe>.py; None for a script step
    config: str | None  # the YAML, relative to the repository root
    models_in: dict[str, str] = field(default_factory=dict)  # key -> model folder (or hub id)
    data_in: dict[str, list[str]] = field(default_factory=dict)  # key -> files
    models_out: list[str] = field(default_factory=list)  # the final model first
    data_out: list[str] = field(default_factory=list)
    optional: bool = False  # an alternative or side step: its outputs feed nothing required
    command: str = ""  # for a script step: the script (its full command is in the stage YAMLs' headers)


@dataclass(frozen=True)
class Link:
    """One input of one step and the earlier step that writes it (None: the user's, or nobody's)."""

    step: str
    key: str
    path: str
    kind: str  # "model" or "data"
    producer: str | None
    problem: str = ""  # why the link is broken; empty when it holds


#: The embedded-7b data-building scripts (paths as in the headers of distill.yaml and dual_system.yaml).
SCRIPT_STEPS: dict[str, dict[str, Step]] = {
    "embedded-7b": {
        "teacher": Step("teacher", None, None, data_in={"--input": ["data/distill/prompts.jsonl"]},
                        data_out=["outputs/embedded-7b/teacher.jsonl"], command="scripts/generate_teacher.py"),
        "verify": Step("verify", None, None, data_in={"--input": ["outputs/embedded-7b/teacher.jsonl"]},
                       data_out=["outputs/embedded-7b/pool.jsonl"], command="scripts/select_data.py verify"),
        "fusion": Step("fusion", None, None, models_in={"--model": "outputs/embedded-7b/grpo"},
                       data_in={"--data": ["data/stage2_prompts.jsonl"]},
                       data_out=["outputs/embedded-7b/fusion/fusion.jsonl"], command="scripts/build_fusion_data.py"),
    }
}  # fmt: skip

#: Step order per scale folder; each name is a script step above or a YAML (<name>.yaml) in the folder, whose
#: recipe is the longest recipe name the file name starts with. Optional steps are alternatives or side products.
ORDERS: dict[str, tuple[str, ...]] = {
    "embedded-7b": ("teacher", "verify", "sft", "distill", "merge", "grpo", "grpo_async", "fusion", "dual_system"),
}
OPTIONAL: dict[str, frozenset[str]] = {"embedded-7b": frozenset({"merge", "grpo_async"})}
#: How each recipe step is launched (the accelerate config and training devices its YAML's header names); merge
#: runs on the CPU. grpo_async trains on 4 GPUs while trl vllm-serve generates on the other 4.
LAUNCH: dict[str, dict[str, tuple[str | None, int]]] = {
    "embedded-7b": {
        "sft": ("recipes/accelerate/fsdp2.yaml", 8),
        "distill": ("recipes/accelerate/zero3.yaml", 8),
        "merge": (None, 1),
        "grpo": ("recipes/accelerate/zero3.yaml", 8),
        "grpo_async": ("recipes/accelerate/zero3.yaml", 4),
        "dual_system": ("recipes/accelerate/zero3.yaml", 8),
    }
}
#: Outputs set on the command line rather than in the YAML (merge's ``--out``; its header shows the command).
CLI_OUTPUTS: dict[str, dict[str, str]] = {"embedded-7b": {"merge": "outputs/embedded-7b/merged-iter2"}}
RECIPES = ("dual_system", "distill", "merge", "grpo", "sft")


def norm(path: str) -> str:
    return os.path.normpath(str(path))


def recipe_of(name: str) -> str:
    """The recipe of a config file stem (``grpo_async`` -> ``grpo``)."""
    for recipe in sorted(RECIPES, key=len, reverse=True):
        if name == recipe or name.startswith(recipe + "_"):
            return recipe
    raise ValueError(f"{name}: no recipe in {RECIPES} matches this config name")


def _as_list(value: Any) -> list[str]:
    if value in (None, "", []):
        return []
    return [str(v) for v in value] if isinstance(value, list | tuple) else [str(value)]


def recipe_outputs(recipe: str, cfg: Mapping[str, Any]) -> list[str]:
    """The model folders a recipe's config makes it write, the final one first (see the module docstring)."""
    if recipe == "merge":
        return _as_list(cfg.get("out"))
    out = cfg.get("output_dir")
    if not out:
        return []
    if recipe == "distill":
        n = int(cfg.get("iterations", 1))
        finals = [f"{out}/iteration_{n - 1}/model"]
        others = [f"{out}/iteration_{t}/{leaf}" for t in range(n) for leaf in ("model", "student")]
        return finals + [p for p in others if p not in finals]
    lora_merged = cfg.get("use_peft") and cfg.get("merge_lora", True)
    return [f"{out}/merged" if lora_merged else str(out)]


def recipe_step(name: str, config: Path, root: Path, optional: bool = False) -> Step:
    """A recipe step read from its YAML."""
    cfg = yaml.safe_load(config.read_text()) or {}
    recipe = recipe_of(name)
    models = {k: str(cfg[k]) for k in MODEL_KEYS if cfg.get(k)}
    for n, entry in enumerate(cfg.get("models") or []):  # merge inputs
        models[f"models[{n}].model"] = str(entry["model"] if isinstance(entry, Mapping) else entry)
    data = {k: _as_list(cfg.get(k)) for k in DATA_KEYS if _as_list(cfg.get(k))}
    rel = str(config.relative_to(root)) if config.is_relative_to(root) else str(config)
    return Step(name, recipe, rel, models, data, recipe_outputs(recipe, cfg), optional=optional)


def load_chain(folder: str | Path, root: str | Path | None = None) -> list[Step]:
    """The steps of a scale folder, in order (:data:`ORDERS`)."""
    folder = Path(folder)
    root = Path(root) if root else folder.parents[2]
    scale = folder.name
    if scale not in ORDERS:
        raise KeyError(f"{folder}: no stage order for the scale {scale!r} (train/core/chain.py ORDERS)")
    scripts, optional = SCRIPT_STEPS.get(scale, {}), OPTIONAL.get(scale, frozenset())
    steps = []
    for name in ORDERS[scale]:
        if name in scripts:
            steps.append(scripts[name])
        else:
            step = recipe_step(name, folder / f"{name}.yaml", root, optional=name in optional)
            cli_out = CLI_OUTPUTS.get(scale, {}).get(name)
            steps.append(replace(step, models_out=[cli_out]) if cli_out and not step.models_out else step)
    return steps


def check_chain(steps: list[Step]) -> list[Link]:
    """Every input of every step with its producer; a broken link carries its ``problem``."""
    produced: dict[str, str] = {}  # path -> step that writes it
    links: list[Link] = []
    first_model_seen = False
    for step in steps:
        for key, path in step.models_in.items():
            links.append(_link(step, key, path, "model", produced, user_ok=not first_model_seen))
        for key, paths in step.data_in.items():
            links += [_link(step, key, p, "data", produced, user_ok=True) for p in paths]
        first_model_seen = first_model_seen or bool(step.models_in)
        for path in step.models_out + step.data_out:
            produced.setdefault(norm(path), step.name)
    return links


def _link(step: Step, key: str, path: str, kind: str, produced: dict[str, str], user_ok: bool) -> Link:
    producer = produced.get(norm(path))
    if producer:
        return Link(step.name, key, path, kind, producer)
    if norm(path).startswith(norm(PRODUCED_ROOT) + os.sep):
        parents = [p for p in produced if p.startswith(norm(path) + os.sep)]
        hint = f" (not a {kind} folder; {produced[parents[0]]} writes {parents[0]})" if parents else ""
        return Link(step.name, key, path, kind, None, f"written by no earlier step{hint}")
    if kind == "model" and not user_ok:
        return Link(step.name, key, path, kind, None, "a model from outside the chain after the user's base")
    return Link(step.name, key, path, kind, None)  # the user's base model or data


def chain_table(links: list[Link]) -> str:
    """The links as a markdown table."""
    lines = ["| step | key | path | written by |", "|---|---|---|---|"]
    for ln in links:
        source = ln.producer or ("**BROKEN: " + ln.problem + "**" if ln.problem else f"the user ({ln.kind})")
        lines.append(f"| {ln.step} | {ln.key} | `{ln.path}` | {source} |")
    return "\n".join(lines)
