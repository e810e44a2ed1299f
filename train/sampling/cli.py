"""The sampler's keys as command-line flags, so that every script offers the same ones with the same help.

    parser = argparse.ArgumentParser()
    add_sampler_arguments(parser, skip=("model",))  # --backend, --device, --dtype, --gpu_memory_utilization, ...
    args = parser.parse_args()
    config = sampler_config_from_args(args, model=args.model)

Flags are :class:`~train.sampling.params.SamplerConfig`'s fields, under their own names (``--base_url``) and with
dashes (``--base-url``); help and defaults come from the dataclass, so a script cannot drift from the config.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import types
import typing
from collections.abc import Iterable
from typing import Any

import torch

from train.sampling.params import BACKENDS, SamplerConfig

_CHOICES = {"backend": (*BACKENDS, "auto")}


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _scalar(hint: Any) -> tuple[type, bool]:
    """The scalar type of a field's annotation, and whether None is allowed (``int | None``)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0], True
    return hint, False


def _converter(kind: type, optional: bool) -> Any:
    def convert(text: str) -> Any:
        if optional and text.strip().lower() in ("none", "null"):
            return None
        return _bool(text) if kind is bool else kind(text)

    convert.__name__ = kind.__name__  # argparse names the type in its error message
    return convert


def add_sampler_arguments(
    parser: argparse.ArgumentParser,
    skip: Iterable[str] = (),
    defaults: dict[str, Any] | None = None,
    title: str = "sampling backend (train.sampling.SamplerConfig)",
) -> argparse._ArgumentGroup:
    """Add a flag per :class:`SamplerConfig` field not in ``skip`` to ``parser`` (one argument group).

    ``defaults`` replaces a field's default for this script (e.g. a smaller ``batch_size``). Booleans take
    ``--flag``, ``--flag true`` or ``--flag false``; an optional number takes ``none``. ``--backend auto`` is vLLM
    when it is installed and a GPU is visible, else transformers (:func:`resolve_backend`).
    """
    skip, defaults = set(skip), dict(defaults or {})
    unknown = (skip | set(defaults)) - {f.name for f in dataclasses.fields(SamplerConfig)}
    if unknown:
        raise ValueError(f"not SamplerConfig fields: {sorted(unknown)}")
    hints = typing.get_type_hints(SamplerConfig)
    group = parser.add_argument_group(title)
    for f in dataclasses.fields(SamplerConfig):
        if f.name in skip:
            continue
        kind, optional = _scalar(hints[f.name])
        default = defaults.get(f.name, f.default)
        names = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
        extra: dict[str, Any] = {"choices": _CHOICES[f.name]} if f.name in _CHOICES else {}
        if kind is bool:
            extra.update(nargs="?", const=True)
        group.add_argument(
            *names,
            dest=f.name,
            type=_converter(kind, optional),
            default=default,
            help=f"{f.metadata['help']} (default: {default})",
            **extra,
        )
    return group


def sampler_config_from_args(args: argparse.Namespace | Any, **overrides: Any) -> SamplerConfig:
    """The :class:`SamplerConfig` of the parsed flags: every field ``args`` holds (those :func:`add_sampler_arguments`
    added, and a script's own ``--model``), the others at their defaults, ``overrides`` on top; the config's own
    checks apply."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(SamplerConfig) if hasattr(args, f.name)}
    values = {**values, **overrides}
    if "backend" in values:
        values["backend"] = resolve_backend(values["backend"])
    return SamplerConfig(**values)


def resolve_backend(backend: str) -> str:
    """``auto``: ``vllm`` when vLLM is installed and a CUDA GPU is visible, else ``transformers``; others as given."""
    if backend != "auto":
        return backend
    return "vllm" if importlib.util.find_spec("vllm") is not None and torch.cuda.is_available() else "transformers"
