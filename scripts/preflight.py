"""Before launching a stage: will it fit, how long will its sampling take, and does its input exist in the chain?

    python scripts/preflight.py --config recipes/configs/embedded-7b/grpo.yaml \
        --accelerate recipes/accelerate/zero3.yaml --model-config /models/base-7b/config.json \
        --device-gb 80 --n-devices 8

From the model's ``config.json`` and the recipe YAML alone (no model is built, no GPU needed), per device: weights,
gradients and optimizer states under the accelerate config's ZeRO stage or FSDP sharding, activations with and
without gradient checkpointing, logits per micro-batch, the colocated vLLM share and its KV cache, and the sampling
phases' peak (train/core/memory.py); the sampling volume in tokens and hours at ``--tokens-per-s`` per device; the
extras installed here and the ones the config needs; and the chain of stage inputs and outputs of the config's
scale folder (train/core/chain.py). Exits 1 with the reasons when the config will not fit or an input is written by
no earlier stage; 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from train.core.chain import LAUNCH, ORDERS, chain_table, check_chain, load_chain
from train.core.memory import config_extras, estimate, fmt_hours, installed_extras, sampling_volume


def read_yaml(path: str | Path) -> dict:
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise SystemExit(f"{path}: must be a YAML mapping")
    return data


def model_config_for(args: argparse.Namespace, recipe: dict) -> dict:
    """--model-config, or <model_name_or_path>/config.json when that folder exists here."""
    path = Path(args.model_config) if args.model_config else None
    if path is None:
        model = recipe.get("model_name_or_path") or recipe.get("base_model")
        path = Path(str(model)) / "config.json" if model else None
    if path is None or not path.exists():
        raise SystemExit(f"no model config.json at {path}: pass --model-config PATH (the model's config.json)")
    return json.loads(path.read_text())


def report(args: argparse.Namespace) -> tuple[str, list[str]]:
    """The printed report and the reasons to refuse (empty: go)."""
    recipe, config = read_yaml(args.config), Path(args.config)
    launch = LAUNCH.get(config.parent.name, {}).get(config.stem, (None, 8))  # the header's launch, by default
    args.accelerate = args.accelerate or launch[0]
    args.n_devices = args.n_devices or launch[1]
    accelerate = read_yaml(args.accelerate) if args.accelerate else None
    est = estimate(model_config_for(args, recipe), recipe, accelerate, args.device_gb, args.n_devices)
    lines = [f"# preflight: {args.config}", f"accelerate: {args.accelerate or 'none (one process)'}", "", est.table()]
    reasons = list(est.reasons)

    volume = sampling_volume(recipe, args.n_devices, args.tokens_per_s, args.reply_fraction, kind=est.kind)
    if volume:
        lines += ["", f"sampling at {args.tokens_per_s:g} tokens/s per device x {args.n_devices}, replies "
                      f"{args.reply_fraction:g} of the token limit on average:"]  # fmt: skip
        lines += [f"- {what}: {tokens / 1e6:,.1f}M tokens, {fmt_hours(hours)}" for what, tokens, hours in volume]

    have, needs = installed_extras(), config_extras(recipe, accelerate)
    lines += ["", "extras: " + ", ".join(f"{k} {v or '-'}" for k, v in have.items())]
    missing = [f"{extra} (for {why})" for extra, why in needs.items() if not have.get(extra)]
    if missing:  # a login node may lack them: said, not refused
        lines.append("needed by this config but not installed here: " + ", ".join(missing))

    if config.parent.name in ORDERS:
        links = check_chain(load_chain(config.parent))
        lines += ["", f"stage chain of {config.parent}:", chain_table(links)]
        reasons += [f"{ln.step}.{ln.key} = {ln.path}: {ln.problem}" for ln in links if ln.problem]
    else:
        lines += ["", f"stage chain: none declared for {config.parent.name} (train/core/chain.py ORDERS)"]
    return "\n".join(lines), reasons


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="recipe YAML (recipes/configs/<scale>/<stage>.yaml)")
    p.add_argument("--accelerate", default=None,
                   help="accelerate YAML (recipes/accelerate/*.yaml); default: the one the config's stage is launched "
                        "with (train/core/chain.py LAUNCH), else none (one process)")  # fmt: skip
    p.add_argument("--model-config", default=None, help="the model's config.json (default: <model>/config.json)")
    p.add_argument("--device-gb", type=float, default=80.0, help="memory per device in GB (1e9 bytes)")
    p.add_argument("--n-devices", type=int, default=None,
                   help="training devices sharing the state, all nodes (default: LAUNCH's, else 8)")  # fmt: skip
    p.add_argument("--tokens-per-s", type=float, default=2500.0, help="generated tokens per second per device")
    p.add_argument("--reply-fraction", type=float, default=0.5, help="mean reply length / the token limit")
    args = p.parse_args(argv)
    text, reasons = report(args)
    print(text)
    if reasons:
        print("\nPREFLIGHT FAILED:\n" + "\n".join(f"- {r}" for r in reasons), file=sys.stderr)
        return 1
    print("\npreflight passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
