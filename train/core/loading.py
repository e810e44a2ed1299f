"""Loading models and tokenizers from a local path or a hub id, never touching the network for a local path.

Every model the project loads goes through :func:`load_model` (the one ``AutoModelForCausalLM.from_pretrained``
call), and every loader with a config through :func:`load_model_and_tokenizer` with a :class:`LoadOptions`: the
``from_pretrained`` options of a trl ``ModelConfig`` and training config (``dtype``, ``attn_implementation``,
``trust_remote_code``, ``load_in_4bit``/``load_in_8bit`` through trl's ``get_quantization_config``, the revision and
``model_init_kwargs``), so no flag in a recipe's ``--help`` is dropped on the way to the weights. A quantized base is
prepared for QLoRA with peft's ``prepare_model_for_kbit_training`` and placed on this process's accelerator; a model
loaded for sampling goes to the device accelerate chose (``device="auto"``) in that device's precision.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from peft import prepare_model_for_kbit_training
from tokenizers import AddedToken
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from trl import get_quantization_config

from train.core.device import model_dtype
from train.core.guards import NonFiniteError, first_nonfinite
from train.core.modes import (
    PANGU_THINK,
    QWEN3_THINK,
    ThinkFormat,
    chat_template,
    install_chat_template,
    is_fastslow_template,
    record_think_format,
)

logger = logging.getLogger(__name__)

# A ``{% generation %}`` block, which trl's assistant_only_loss needs (as trl.chat_template_utils checks it).
_GENERATION = re.compile(r"\{%-?\s*generation\s*-?%\}")
_DTYPES = {"auto": "auto", "bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass
class LoadOptions:
    """How a model is loaded: the ``from_pretrained`` options every loader honours.

    Build it from a recipe's configs with :meth:`from_model_config` (trl's ``ModelConfig`` and its training config,
    which holds ``trust_remote_code`` and ``model_init_kwargs`` in trl 1.16), or directly for a script. ``dtype``
    None means float32 for training and the device's precision for sampling.
    """

    dtype: str | torch.dtype | None = None
    attn_implementation: str | None = None
    trust_remote_code: bool = False
    revision: str | None = None
    quantization_config: Any = None
    device_map: Any = None
    use_peft: bool = False
    gradient_checkpointing: bool = False
    gradient_checkpointing_kwargs: dict[str, Any] | None = None
    model_init_kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_model_config(cls, model_args: Any, training_args: Any = None, **changes: Any) -> LoadOptions:
        """The options of trl's ``ModelConfig`` (and of the training config, when given).

        ``load_in_4bit``/``load_in_8bit`` become a ``BitsAndBytesConfig`` (trl's ``get_quantization_config``) with
        the model on this process's accelerator (:func:`kbit_device_map`); unquantized models get no device map
        (the trainer, or ``device="auto"``, places them).
        """
        quantization = get_quantization_config(model_args)
        init = dict(getattr(training_args, "model_init_kwargs", None) or {})
        # model_init_kwargs win over the ModelConfig (as in trl's scripts); the keys this class holds move here.
        dtype = init.pop("dtype", init.pop("torch_dtype", model_args.dtype))
        options = cls(
            dtype=dtype,
            attn_implementation=init.pop("attn_implementation", model_args.attn_implementation),
            trust_remote_code=bool(init.pop("trust_remote_code", getattr(training_args, "trust_remote_code", False))),
            revision=init.pop("revision", model_args.model_revision),
            quantization_config=init.pop("quantization_config", quantization),
            device_map=init.pop("device_map", kbit_device_map(training_args) if quantization is not None else None),
            use_peft=bool(model_args.use_peft),
            gradient_checkpointing=bool(getattr(training_args, "gradient_checkpointing", False)),
            gradient_checkpointing_kwargs=getattr(training_args, "gradient_checkpointing_kwargs", None),
            model_init_kwargs=init,
        )
        return dataclasses.replace(options, **changes)

    @property
    def quantized(self) -> bool:
        return self.quantization_config is not None

    def model_kwargs(self) -> dict[str, Any]:
        """The ``from_pretrained`` keyword arguments (``dtype`` and ``revision`` aside, which :func:`load_model`
        takes as its own); ``model_init_kwargs`` come last and win, as in trl's scripts."""
        kwargs: dict[str, Any] = {"trust_remote_code": self.trust_remote_code}
        if self.attn_implementation:
            kwargs["attn_implementation"] = self.attn_implementation
        if self.quantization_config is not None:
            kwargs["quantization_config"] = self.quantization_config
        if self.device_map is not None:
            kwargs["device_map"] = self.device_map
        return {**kwargs, **self.model_init_kwargs}


def accelerator_device() -> torch.device:
    """The device accelerate chose for this process (``cuda:<local rank>``, ``npu:<n>``, ..., else ``cpu``)."""
    return PartialState().device


def sampling_device(device: str | torch.device | None = None) -> torch.device:
    """The device to sample on: ``device``, or with None/``"auto"`` the one accelerate chose for this process."""
    return accelerator_device() if device is None or str(device) == "auto" else torch.device(device)


def kbit_device_map(training_args: Any = None) -> dict[str, str]:
    """Where a bitsandbytes-quantized model goes: whole, on this process's accelerator (trl's old
    ``get_kbit_device_map``; quantized weights cannot be moved after loading, so the trainer would not place them).

    ``training_args.device`` is read first, so the process group is created with the config's ``ddp_timeout``.
    """
    if training_args is not None:
        _ = training_args.device
    return {"": str(accelerator_device())}


def check_quantization(quantization_config: Any) -> None:
    """Refuse a bitsandbytes request that cannot be honoured, rather than load unquantized (QLoRA silently
    becoming LoRA on a full-precision base)."""
    if quantization_config is None or getattr(quantization_config, "quant_method", None) != "bitsandbytes":
        return
    if importlib.util.find_spec("bitsandbytes") is None:
        bits = "4" if getattr(quantization_config, "load_in_4bit", False) else "8"
        raise ImportError(
            f"load_in_{bits}bit: loading the base model in {bits} bits (QLoRA) needs bitsandbytes, which is not "
            "installed: pip install 'fastslow[bitsandbytes]' (or unset load_in_4bit/load_in_8bit to train plain LoRA "
            "on the full-precision base)"
        )


def is_local(name_or_path: str | os.PathLike) -> bool:
    return Path(name_or_path).expanduser().exists()


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def looks_like_path(name: str) -> bool:
    """Whether ``name`` is meant as a local path: ``./``, ``../``, ``/`` or ``~`` first, more than one ``/``, or a
    first component that exists here (``outputs/sft`` with an ``outputs/`` folder). A hub id is ``org/name``."""
    if name.startswith(("./", "../", "/", "~", ".\\", "..\\")) or name in (".", "..") or name.count("/") > 1:
        return True
    return "/" in name and Path(name.split("/", 1)[0]).exists()


def _hub_kwargs(name_or_path: str | os.PathLike, revision: str | None) -> dict[str, Any]:
    """``from_pretrained`` options for a local folder or a hub id; a missing local path is an error naming it.

    A string that looks like a path (:func:`looks_like_path`) and does not exist is never sent to the hub, where a
    typo becomes a misleading repo-id error or a minute of network retries. A hub id is looked up only when it is a
    valid repo id; with ``HF_HUB_OFFLINE`` set, only in the local hub cache.
    """
    if is_local(name_or_path):
        # local_files_only stops transformers from asking the hub about a local folder (e.g. for a missing
        # generation config), which on an offline machine would hang until it times out.
        return {"local_files_only": True}
    name = str(name_or_path)
    if isinstance(name_or_path, Path) or looks_like_path(name):
        raise FileNotFoundError(f"{name}: no such model folder (resolved to {Path(name).expanduser().resolve()})")
    try:
        validate_repo_id(name)
    except HFValidationError:
        raise FileNotFoundError(f"{name}: no such model folder, and not a valid hub id (org/name)") from None
    kwargs: dict[str, Any] = {"revision": revision} if revision else {}
    return {**kwargs, "local_files_only": True} if hub_offline() else kwargs


def _from_pretrained(load: Any, name_or_path: str | os.PathLike, revision: str | None, **kwargs: Any) -> Any:
    hub = _hub_kwargs(name_or_path, revision)
    try:
        return load(str(name_or_path), **hub, **kwargs)
    except OSError as exc:
        if is_local(name_or_path) or not hub_offline():
            raise
        raise OSError(
            f"{name_or_path}: not a local folder, and not in the hub cache (HF_HUB_OFFLINE is set, so the hub is "
            f"not asked): {exc}"
        ) from exc


def _ensure_single_tokens(tokenizer: PreTrainedTokenizerBase, fmt: ThinkFormat) -> None:
    """Make each think delimiter one token: a saved template can name ``<think>`` in a vocabulary without it, where
    it would be split into seven character tokens and never learnt as one delimiter."""
    split = [t for t in (fmt.start, fmt.end) if len(tokenizer.encode(t, add_special_tokens=False)) != 1]
    if split:
        logger.info("adding the think delimiters %s as tokens (the tokenizer split them)", split)
        tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in split])


def load_tokenizer(
    name_or_path: str | os.PathLike,
    think: ThinkFormat | None = None,
    revision: str | None = None,
    *,
    think_start: str | None = None,
    think_end: str | None = None,
    trust_remote_code: bool = False,
) -> PreTrainedTokenizerBase:
    """A tokenizer with the fastslow template installed and the run's think format resolved and recorded.

    The format is resolved here, once (see :func:`resolve_think_format`): ``think`` (a config's override), else the
    one recorded in the tokenizer, else the one its vocabulary implies. It is written into the tokenizer
    (``init_kwargs``, so ``save_pretrained`` keeps it); read it back with :meth:`ThinkFormat.from_tokenizer`.
    ``think_start``/``think_end`` are the older spelling of ``think`` (a config's two keys), still accepted; one of
    them alone overrides that delimiter only. ``trust_remote_code`` runs a checkpoint's own tokenizer code
    (openPangu's).
    """
    if think is not None and not isinstance(think, ThinkFormat):
        raise TypeError(f"load_tokenizer: think must be a ThinkFormat (or think_start=/think_end=), not {think!r}")
    remote = {"trust_remote_code": True} if trust_remote_code else {}
    tok = _from_pretrained(AutoTokenizer.from_pretrained, name_or_path, revision, **remote)
    fmt = resolve_think_format(tok, think, think_start=think_start, think_end=think_end)
    template = tok.chat_template
    # A template is kept when it has generation markers and this format's delimiters (e.g. trl's qwen3_training);
    # a fastslow template of an older version is replaced by the current one.
    stale = is_fastslow_template(template) and template != chat_template(fmt)
    if template is None or stale or fmt.start not in template or not _GENERATION.search(template):
        install_chat_template(tok, fmt)
    else:
        record_think_format(tok, fmt)
    _ensure_single_tokens(tok, fmt)
    tok.padding_side = "left"  # decoder-only generation pads on the left
    return tok


def resolve_think_format(
    tokenizer: Any,
    think: ThinkFormat | None = None,
    *,
    think_start: str | None = None,
    think_end: str | None = None,
) -> ThinkFormat:
    """The run's think format: ``think`` if given, else the tokenizer's recorded one, else its vocabulary's.

    The vocabulary implies Qwen3's ``<think>``/``</think>`` when it has them, openPangu's ``[unused16]``/
    ``[unused17]`` when it has those (and not Qwen3's), and Qwen3's otherwise, with a warning: this is the one
    place where a format is chosen for a model that does not say. ``think_start``/``think_end`` override one
    delimiter of the result each (a config's keys).
    """
    if think is None:
        try:
            think = ThinkFormat.from_tokenizer(tokenizer)
        except ValueError:
            think = _vocabulary_format(tokenizer)
    if think_start or think_end:
        think = ThinkFormat(think_start or think.start, think_end or think.end)
    return think


def _vocabulary_format(tokenizer: Any) -> ThinkFormat:
    vocab = tokenizer.get_vocab()
    for fmt in (QWEN3_THINK, PANGU_THINK):
        if fmt.start in vocab and fmt.end in vocab:
            return fmt
    logger.warning(
        "the tokenizer records no think format and its vocabulary has neither %s nor %s: using %s (set think_start/"
        "think_end in the config to choose another)",
        QWEN3_THINK,
        PANGU_THINK,
        QWEN3_THINK,
    )
    return QWEN3_THINK


def load_model(
    name_or_path: str | os.PathLike,
    dtype: str | torch.dtype | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    revision: str | None = None,
    allow_nonfinite_weights: bool = False,
    *,
    options: LoadOptions | None = None,
    **kwargs: Any,
) -> PreTrainedModel:
    """A causal LM; embeddings are resized when ``tokenizer`` has grown (think tags added).

    The one ``from_pretrained`` of a model: ``options`` (:class:`LoadOptions`) give its keyword arguments, and
    ``dtype``/``revision``/``kwargs`` given here override them (``dtype`` None: the options', else float32). A
    bitsandbytes request without bitsandbytes installed is refused (:func:`check_quantization`).

    A checkpoint with a NaN or infinite weight is refused (:class:`train.core.guards.NonFiniteError` naming the file
    and the tensor): it would train to NaN everywhere and still save. ``allow_nonfinite_weights=True`` loads it.
    """
    options = options or LoadOptions()
    kwargs = {**options.model_kwargs(), **kwargs}
    if not kwargs.get("trust_remote_code"):
        kwargs.pop("trust_remote_code", None)
    check_quantization(kwargs.get("quantization_config"))
    dtype = dtype if dtype is not None else (options.dtype if options.dtype is not None else "float32")
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(_DTYPES)}")
        dtype = _DTYPES[dtype]
    revision = revision or options.revision
    model = _from_pretrained(AutoModelForCausalLM.from_pretrained, name_or_path, revision, dtype=dtype, **kwargs)
    bad = None if allow_nonfinite_weights else first_nonfinite([*model.named_parameters(), *model.named_buffers()])
    if bad:
        name, count = bad
        raise NonFiniteError(
            f"{checkpoint_file(name_or_path, name)}: tensor {name!r} has {count} NaN/inf value(s) as loaded in {dtype}"
            " (a corrupt checkpoint, or values beyond that dtype's range); allow_nonfinite_weights loads it anyway"
        )
    if tokenizer is not None and len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        logger.info("resizing embeddings %d -> %d", model.get_input_embeddings().weight.shape[0], len(tokenizer))
        model.resize_token_embeddings(len(tokenizer))
    if tokenizer is not None:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def checkpoint_file(name_or_path: str | os.PathLike, tensor: str = "") -> str:
    """The weights file of a local checkpoint (the shard holding ``tensor`` when indexed), else ``name_or_path``."""
    folder = Path(name_or_path).expanduser()
    if not folder.is_dir():
        return str(name_or_path)
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index).exists():
            weight_map = json.loads((folder / index).read_text(encoding="utf-8")).get("weight_map", {})
            return str(folder / weight_map[tensor]) if tensor in weight_map else str(folder / index)
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).exists():
            return str(folder / name)
    return str(folder)


def load_model_and_tokenizer(
    name_or_path: str | os.PathLike,
    dtype: str | torch.dtype | None = None,
    *,
    options: LoadOptions | None = None,
    think: ThinkFormat | None = None,
    think_start: str | None = None,
    think_end: str | None = None,
    device: str | torch.device | None = None,
    training: bool = False,
    allow_nonfinite_weights: bool = False,
    **kwargs: Any,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model and its tokenizer (the think format resolved by :func:`load_tokenizer`), loaded with ``options``.

    ``training=True``: the tokenizer pads on the right, the model stays where it was loaded (the trainer places it)
    in float32 unless the options say otherwise, and a quantized base (``load_in_4bit``/``load_in_8bit``) is
    prepared for QLoRA (peft's ``prepare_model_for_kbit_training``: frozen base, norms in float32, input gradients
    for checkpointing); it trains through LoRA only, so ``use_peft`` is required.

    For sampling, ``device`` places the model (``"auto"``: the device accelerate chose, :func:`accelerator_device`)
    in that device's precision unless ``dtype``/``options`` say otherwise; None leaves it where it was loaded. A
    model loaded with a device map (quantized) is never moved.
    """
    options = options or LoadOptions()
    if training and options.quantized and not options.use_peft:
        raise ValueError(
            "load_in_4bit/load_in_8bit: a quantized base model trains through a LoRA adapter only (QLoRA); set "
            "use_peft: true"
        )
    tokenizer = load_tokenizer(
        name_or_path,
        think,
        options.revision,
        think_start=think_start,
        think_end=think_end,
        trust_remote_code=options.trust_remote_code,
    )
    target = None
    if device is not None and not training:
        target = sampling_device(device)
    if dtype is None and options.dtype is None:
        dtype = model_dtype(target.type) if target is not None else "float32"
    model = load_model(
        name_or_path, dtype, tokenizer, allow_nonfinite_weights=allow_nonfinite_weights, options=options, **kwargs
    )
    if training:
        tokenizer.padding_side = "right"  # training pads on the right; generation switches to left
        if options.quantized:
            model = prepare_for_kbit_training(model, options)
    elif target is not None and options.device_map is None and "device_map" not in kwargs:
        model.to(target)
    return model, tokenizer


def prepare_for_kbit_training(model: PreTrainedModel, options: LoadOptions) -> PreTrainedModel:
    """peft's QLoRA preparation of a quantized base, with the run's gradient checkpointing settings."""
    return prepare_model_for_kbit_training(
        model,
        use_gradient_checkpointing=options.gradient_checkpointing,
        gradient_checkpointing_kwargs=options.gradient_checkpointing_kwargs,
    )
