"""Per-device memory of a recipe config for a model config: arithmetic only, no model is built.

``estimate(model_config, recipe, accelerate, device_gb, n_devices)`` reads a Hugging Face ``config.json`` (as a
dict), a recipe YAML (as a dict) and an accelerate config (as a dict, or None for one plain process), and adds up
what one device holds at its peak. Figures are decimal GB (1e9 bytes), like the vendors' "80 GB".

What is counted, and why (each is an estimate; the rows say which assumption they rest on):

- **Training state** (bytes per parameter, divided by the device count where the state is sharded):
  DeepSpeed with bf16 keeps bf16 weights (2) and gradients (2) and fp32 master weights plus Adam's two moments
  (12); ZeRO-1 shards the 12, ZeRO-2 also the gradients, ZeRO-3 also the weights. accelerate's FSDP2 with mixed
  precision upcasts the trainable weights to fp32 (accelerate/utils/fsdp_utils.py), so weights 4, gradients 4 and
  Adam 8, all sharded under full sharding. Plain DDP on a bf16 model: weights 2, gradients 2 plus DDP's bucket copy
  2, Adam's moments in the weights' dtype 4. LoRA: the frozen base in its dtype (0.5 byte for 4-bit) and 16 bytes
  per adapter parameter (PEFT keeps adapters in fp32).
- **Gathered weights**: ZeRO-3 keeps at most ``stage3_max_live_parameters`` (1e9 by default) gathered; FSDP2
  gathers the root unit (embeddings and LM head) for the whole forward and about two decoder layers at a time.
- **Activations** of one micro-batch (``per_device_train_batch_size`` x sequence tokens): with gradient
  checkpointing each layer keeps its bf16 input (tokens x hidden) and one layer is recomputed in full at a time;
  without it every layer keeps everything autograd saves. Per token and layer that is about
  ``4 hidden + 2 (q+k+v) + 2 q + 4 ffn`` bf16 values (norm inputs, projections, attention output, SwiGLU's
  gate/up/activation/product); eager attention adds the scores (heads x seq^2, twice).
- **Logits**: trl 1.16's SFT and GRPO trainers score through a fused LM head (trl/trainer/utils.py
  ``add_fused_lm_head``) that projects 4,096 tokens x 32,768 vocabulary entries at a time, so the full
  ``tokens x vocab`` fp32 logits are never materialised; both figures are printed, the fused one is added up.
- **vLLM**: a colocated engine reserves ``gpu_memory_utilization`` x device memory (its own weights, activations
  and KV cache) next to training, unless sleep mode frees it while training runs. Its KV cache must hold at least
  one sequence of ``max_model_len`` tokens or the engine refuses to start.
- **Sampling phases** of distillation and dual-system relabelling run after the training model is released: a
  vLLM share, or for transformers a bf16 model plus the KV cache of a whole generation batch (HF ``generate``
  grows the cache of every sequence in the batch to its full length).
- **Runtime**: CUDA context, NCCL buffers and allocator fragmentation: 3 GB plus 5% of the device.
"""

from __future__ import annotations

import importlib.metadata
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

GB = 1e9
PROMPT_TOKENS = 1024  # GRPO: assumed prompt length (trl 1.16 has no max_prompt_length); see the table's note
FUSED_TOKENS, FUSED_VOCAB = 4096, 32768  # trl 1.16's fused LM head tile (kernels/chunked_logprob.py, utils.py)
ZERO3_LIVE_PARAMS = 1e9  # DeepSpeed's stage3_max_live_parameters default (transformers' "auto" keeps it)
VLLM_RUNTIME_GB = 2.0  # vLLM's own activations and CUDA graphs inside its share (profiled by vLLM at start)
RUNTIME_GB, RUNTIME_SHARE = 3.0, 0.05
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4, "auto": 2, None: 2}
LORA_ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class PreflightError(ValueError):
    """A config the estimator cannot read (a missing model key, an unknown accelerate type)."""


@dataclass(frozen=True)
class ModelShape:
    """The dimensions of a decoder-only transformer with grouped-query attention and a SwiGLU MLP."""

    layers: int
    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    qkv_bias: bool

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | Any) -> ModelShape:
        cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        cfg = cfg.get("text_config") or cfg

        def need(key: str) -> int:
            if cfg.get(key) is None:
                raise PreflightError(f"model config: missing key {key!r} (a decoder-only config.json is expected)")
            return int(cfg[key])

        hidden, heads = need("hidden_size"), need("num_attention_heads")
        return cls(
            layers=need("num_hidden_layers"),
            hidden=hidden,
            ffn=need("intermediate_size"),
            heads=heads,
            kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or hidden // heads),
            vocab=need("vocab_size"),
            tied=bool(cfg.get("tie_word_embeddings", False)),
            qkv_bias=bool(cfg.get("attention_bias", cfg.get("model_type") == "qwen2")),  # Qwen2 always has it
        )

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear layer of one decoder layer."""
        q, kv, h, f = self.heads * self.head_dim, self.kv_heads * self.head_dim, self.hidden, self.ffn
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, f), "up_proj": (h, f), "down_proj": (f, h)}  # fmt: skip

    def layer_params(self) -> int:
        bias = (self.heads + 2 * self.kv_heads) * self.head_dim if self.qkv_bias else 0
        return sum(i * o for i, o in self.linears().values()) + bias + 2 * self.hidden  # + two RMSNorms

    def outer_params(self) -> int:
        """Embeddings, the LM head (unless tied) and the final norm: what lives outside the decoder layers."""
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden

    def params(self) -> int:
        return self.layers * self.layer_params() + self.outer_params()

    def lora_params(self, r: int, targets: list[str] | str | None) -> int:
        names = LORA_ALL if targets in (None, "all-linear") or targets == ["all-linear"] else targets
        names = [names] if isinstance(names, str) else names
        return self.layers * sum(r * (i + o) for n, (i, o) in self.linears().items() if n in names)

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes

    def activation_elems_per_token(self) -> int:
        """bf16 values one decoder layer keeps per token for backward (see the module docstring)."""
        qkv = (self.heads + 2 * self.kv_heads) * self.head_dim
        return 4 * self.hidden + 2 * qkv + 2 * self.heads * self.head_dim + 4 * self.ffn


@dataclass(frozen=True)
class Sharding:
    """How the accelerate config spreads the training state over the devices."""

    name: str
    params: bool  # weights sharded
    grads: bool
    optim: bool
    fsdp: bool = False
    offload_optim: bool = False
    offload_params: bool = False

    @classmethod
    def from_accelerate(cls, accelerate: Mapping[str, Any] | None) -> Sharding:
        acc = dict(accelerate or {})
        kind = str(acc.get("distributed_type", "NO"))
        if kind == "DEEPSPEED":
            ds = acc.get("deepspeed_config") or {}
            stage = int(ds.get("zero_stage", 0))
            return cls(f"ZeRO-{stage}", params=stage >= 3, grads=stage >= 2, optim=stage >= 1,
                       offload_optim=ds.get("offload_optimizer_device", "none") not in ("none", None),
                       offload_params=ds.get("offload_param_device", "none") not in ("none", None))  # fmt: skip
        if kind == "FSDP":
            fs = acc.get("fsdp_config") or {}
            full = bool(fs.get("fsdp_reshard_after_forward", True))
            return cls("FSDP2 full shard" if full else "FSDP2 shard grad/optim", params=full, grads=True,
                       optim=True, fsdp=True, offload_params=bool(fs.get("fsdp_offload_params", False)))  # fmt: skip
        if kind in ("MULTI_GPU", "MULTI_NPU", "NO", "MULTI_CPU"):
            return cls("DDP (replicated)" if kind != "NO" else "one process", params=False, grads=False, optim=False)
        raise PreflightError(f"accelerate config: distributed_type {kind!r} is not one the estimator knows")


def recipe_kind(recipe: Mapping[str, Any]) -> str:
    """Which recipe a config dict belongs to, from the keys only that recipe has."""
    if "models" in recipe and "merge_method" in recipe:
        return "merge"
    if "num_generations" in recipe or "mars" in recipe or "use_vllm" in recipe:
        return "grpo"
    if "iterations" in recipe or "candidates_per_iteration" in recipe:
        return "distill"
    if "phase1_steps" in recipe or "fusion_file" in recipe:
        return "dual_system"
    return "sft"


@dataclass
class Row:
    name: str
    gb: float
    note: str = ""
    counted: bool = True  # added to the peak (False: shown for comparison only)


@dataclass
class MemoryEstimate:
    """Rows per device, the peak, the verdict and its reasons."""

    kind: str
    device_gb: float
    n_devices: int
    params: int
    rows: list[Row] = field(default_factory=list)
    sampling_rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)  # why it does not fit (empty: it fits)
    training_peak_gb: float = 0.0
    sampling_peak_gb: float = 0.0

    @property
    def fits(self) -> bool:
        return not self.reasons

    @property
    def peak_gb(self) -> float:
        return max(self.training_peak_gb, self.sampling_peak_gb)

    def table(self) -> str:
        head = (f"{self.kind}: {self.params / 1e9:.2f}B parameters, {self.n_devices} device(s) of "
                f"{self.device_gb:g} GB")  # fmt: skip
        if not self.rows:  # merge: nothing on the accelerator
            return "\n".join([head, "", "verdict: fits (no accelerator memory)"] + [f"- {n}" for n in self.notes])
        lines = [head, "", "| per device | GB | note |", "|---|---:|---|"]
        for r in self.rows:
            lines.append(f"| {r.name if r.counted else f'({r.name})'} | {r.gb:.1f} | {r.note} |")
        lines.append(f"| **training peak** | **{self.training_peak_gb:.1f}** | of {self.device_gb:g} GB |")
        for r in self.sampling_rows:
            lines.append(f"| {r.name if r.counted else f'({r.name})'} | {r.gb:.1f} | {r.note} |")
        if self.sampling_peak_gb:
            lines.append(f"| **sampling peak** | **{self.sampling_peak_gb:.1f}** | training model released first |")
        verdict = "fits" if self.fits else "DOES NOT FIT: " + "; ".join(self.reasons)
        lines += ["", f"verdict: {verdict}"] + [f"- {n}" for n in self.notes]
        return "\n".join(lines)


def _training_state(shape: ModelShape, sh: Sharding, recipe: Mapping[str, Any], n: int) -> list[Row]:
    p, dtype_b = shape.params(), DTYPE_BYTES.get(recipe.get("dtype"), 2)
    if recipe.get("use_peft"):
        lora = shape.lora_params(int(recipe.get("lora_r", 16)), recipe.get("lora_target_modules"))
        base_b = 0.5625 if recipe.get("load_in_4bit") else 0.5 * 2.25 if recipe.get("load_in_8bit") else dtype_b
        base_div = n if sh.params else 1
        return [Row("weights", (p * base_b / base_div + lora * 4) / GB,
                    f"frozen base {base_b:g} B/param{' sharded' if sh.params else ''}; {lora / 1e6:.0f}M LoRA fp32"),
                Row("gradients", lora * 4 / GB, "LoRA only"),
                Row("optimizer states", lora * 8 / GB, "AdamW moments of LoRA")]  # fmt: skip
    if sh.fsdp:  # accelerate upcasts trainable weights to fp32 under mixed precision
        w, g, o = 4, 4, 8
    elif sh.name.startswith("ZeRO"):
        w, g, o = 2, 2, 12
    else:  # DDP / one process: Adam moments in the weights' dtype, DDP's gradient buckets
        w, g, o = dtype_b, dtype_b * (2 if n > 1 else 1), 2 * dtype_b
    div = {k: (n if on else 1) for k, on in (("w", sh.params), ("g", sh.grads), ("o", sh.optim))}
    off_w, off_o = 0 if sh.offload_params else 1, 0 if sh.offload_optim else 1
    shard = f"/{n}" if n > 1 else ""
    return [Row("weights", off_w * p * w / div["w"] / GB, f"{w} B/param{shard if sh.params else ''}"),
            Row("gradients", p * g / div["g"] / GB, f"{g} B/param{shard if sh.grads else ''}"),
            Row("optimizer states", off_o * p * o / div["o"] / GB,
                f"{o} B/param{shard if sh.optim else ''}{' (offloaded)' if not off_o else ''}")]  # fmt: skip


def _gathered(shape: ModelShape, sh: Sharding) -> Row | None:
    if not sh.params:
        return None
    if sh.fsdp:
        gb = (shape.outer_params() + 2 * shape.layer_params()) * 2 / GB
        return Row("gathered weights", gb, "FSDP2: embeddings + LM head + 2 layers, bf16")
    return Row("gathered weights", min(shape.params(), ZERO3_LIVE_PARAMS) * 2 / GB, "ZeRO-3 live parameters, bf16")


def _seq_tokens(kind: str, recipe: Mapping[str, Any]) -> int:
    if kind == "grpo":
        return PROMPT_TOKENS + int(recipe.get("max_completion_length") or 256)
    return int(recipe.get("max_length") or 1024)


def _activations(shape: ModelShape, recipe: Mapping[str, Any], kind: str) -> tuple[list[Row], int]:
    micro, seq = int(recipe.get("per_device_train_batch_size", 8)), _seq_tokens(kind, recipe)
    tokens = micro * seq
    per_layer = tokens * shape.activation_elems_per_token() * 2
    if recipe.get("attn_implementation") == "eager":  # scores and softmax, (micro, heads, seq, seq) each
        per_layer += micro * shape.heads * seq * seq * 2 * 2
    edges = tokens * shape.hidden * 2 * 2  # embedding output and final hidden state
    with_ckpt = tokens * shape.hidden * 2 * shape.layers + per_layer + edges
    without = per_layer * shape.layers + edges
    on = recipe.get("activation_checkpointing", recipe.get("gradient_checkpointing"))  # transformers 5 renames it
    on = True if on is None else bool(on)  # unset: train.core.device turns it on for accelerators
    what = f"{micro} x {seq:,} tokens"
    rows = [
        Row("activations, checkpointing", with_ckpt / GB, what + (" (used)" if on else ""), counted=on),
        Row("activations, no checkpointing", without / GB, what + ("" if on else " (used)"), counted=not on),
    ]
    return rows, tokens


def _logits(shape: ModelShape, tokens: int) -> list[Row]:
    tile = min(tokens, FUSED_TOKENS) * min(shape.vocab, FUSED_VOCAB) * 4 * 2
    head = shape.vocab * shape.hidden * 2  # the LM head gathered for the projection
    full = tokens * shape.vocab * (2 + 4 + 4)  # bf16 logits, fp32 upcast, fp32 log-softmax kept for backward
    return [Row("logits, fused LM head", (tile + head) / GB, "trl 1.16: 4,096 x 32,768 fp32 tiles + bf16 head"),
            Row("logits if materialised", full / GB, f"{tokens:,} tokens x {shape.vocab:,} vocab, bf16+2 fp32",
                counted=False)]  # fmt: skip


def _vllm_rows(shape: ModelShape, share: float, device_gb: float, max_len: int, name: str) -> tuple[Row, Row, str]:
    """The engine's share, its KV cache capacity, and a reason when one sequence of max_len does not fit."""
    gb = share * device_gb
    kv_gb = gb - shape.params() * 2 / GB - VLLM_RUNTIME_GB
    per_tok = shape.kv_bytes_per_token()
    cap = max(0, int(kv_gb * GB / per_tok))
    kv = Row("  KV cache in it", max(kv_gb, 0.0),
             f"{per_tok / 1e3:.0f} kB/token: {cap:,} tokens = {cap // max(max_len, 1)} x {max_len:,}-token sequences",
             counted=False)  # fmt: skip
    reason = "" if cap >= max_len else f"{name}: KV cache holds {cap:,} tokens < one {max_len:,}-token sequence"
    return Row(name, gb, f"gpu_memory_utilization {share:g} x {device_gb:g} GB"), kv, reason


def sampling_phases(recipe: Mapping[str, Any], kind: str) -> list[tuple[str, str, float, int]]:
    """(phase, backend, vLLM share, batch) of each sampling phase a training recipe runs between its trainings, read
    as the recipe reads them (train/distill/stage.py ``phase_sampler_config``; the ``sampler_*`` keys)."""
    backend = recipe.get("sampler_backend") or "transformers"
    share = float(recipe.get("sampler_gpu_memory_utilization") or 0.9)
    if kind == "distill":
        batch = int(recipe.get("generation_batch_size") or 64)
        pass_backend = recipe.get("complexity_backend") or backend
        pass_share = float(recipe.get("complexity_gpu_memory_utilization") or share)
        return [("pass rates", pass_backend, pass_share, batch), ("evaluation", backend, share, batch)]
    if kind == "dual_system" and (recipe.get("relabel_before_phase2") or not recipe.get("fusion_file")):
        return [("fusion labels / relabelling", backend, share, int(recipe.get("batch_size") or 64))]
    return []


def _sampling_phase(shape: ModelShape, recipe: Mapping[str, Any], kind: str, device_gb: float, est: MemoryEstimate):
    """Distillation's pass rates and evaluation, dual-system relabelling: the training model is released first."""
    max_len = PROMPT_TOKENS + int(recipe.get("max_new_tokens") or 1024)
    for phase, backend, share, batch in sampling_phases(recipe, kind):
        if backend == "vllm":
            row, kv, reason = _vllm_rows(shape, share, device_gb, max_len, f"{phase}: vLLM engine")
            est.sampling_rows += [row, kv]
            est.reasons += [reason] if reason else []
            peak = row.gb + RUNTIME_GB
        elif backend == "transformers":
            weights = shape.params() * 2 / GB
            cache = batch * max_len * shape.kv_bytes_per_token() / GB
            est.sampling_rows += [Row(f"{phase}: transformers model", weights, "bf16 copy"),
                                  Row("  KV cache of a generation batch", cache,
                                      f"{batch} x {max_len:,} tokens")]  # fmt: skip
            peak = weights + cache + RUNTIME_GB + RUNTIME_SHARE * device_gb
        else:  # an endpoint: the sampling runs elsewhere
            est.sampling_rows.append(Row(f"{phase}: {backend}", 0.0, "served elsewhere"))
            peak = 0.0
        est.sampling_peak_gb = max(est.sampling_peak_gb, peak)


def _mapping(value: Mapping[str, Any] | str | Path | None, what: str) -> dict[str, Any] | None:
    """A config given as a dict, or as the path of its YAML."""
    if value is None or isinstance(value, Mapping):
        return None if value is None else dict(value)
    path = Path(value)
    if not path.is_file():
        raise PreflightError(f"{what}: {value!r} is neither a mapping nor a YAML file (pass the config, not a name)")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, Mapping):
        raise PreflightError(f"{what}: {path} is not a YAML mapping")
    return dict(data)


def estimate(
    model_config: Mapping[str, Any] | Any,
    recipe: Mapping[str, Any] | str | Path,
    accelerate: Mapping[str, Any] | str | Path | None,
    device_gb: float,
    n_devices: int,
    *,
    kind: str | None = None,
) -> MemoryEstimate:
    """Per-device memory of ``recipe`` (a recipe YAML as a dict, or its path) for ``model_config`` (a ``config.json``
    as a dict, or a transformers config) under ``accelerate`` (an accelerate YAML as a dict or path; None: one plain
    process) on ``n_devices`` devices of ``device_gb`` GB. ``kind`` (sft, distill, dual_system, grpo, merge) is read
    from the keys when not given."""
    recipe, accelerate = _mapping(recipe, "recipe config") or {}, _mapping(accelerate, "accelerate config")
    shape, kind = ModelShape.from_config(model_config), kind or recipe_kind(recipe)
    est = MemoryEstimate(kind, device_gb, n_devices, shape.params())
    if kind == "merge":  # streamed tensor by tensor on the CPU: no accelerator memory
        est.notes.append("merge runs on the CPU, streamed tensor by tensor: host memory ~ the largest shard x inputs")
        return est
    sh = Sharding.from_accelerate(accelerate)
    n = max(1, int(n_devices))
    est.rows += _training_state(shape, sh, recipe, n)
    gathered = _gathered(shape, sh)
    est.rows += [gathered] if gathered else []
    act_rows, tokens = _activations(shape, recipe, kind)
    est.rows += act_rows + _logits(shape, tokens)
    if kind == "grpo" and recipe.get("use_vllm") and recipe.get("vllm_mode", "colocate") == "colocate":
        share = float(recipe.get("vllm_gpu_memory_utilization", 0.3))
        max_len = int(recipe.get("vllm_max_model_length") or _seq_tokens(kind, recipe))
        row, kv, reason = _vllm_rows(shape, share, device_gb, max_len, "vLLM engine (colocated)")
        if recipe.get("vllm_enable_sleep_mode"):
            row.counted, row.note = False, row.note + "; asleep while training (sleep mode)"
            est.sampling_rows.append(Row("vLLM awake + training state", row.gb + _state_gb(est), "generation phase"))
            est.sampling_peak_gb = row.gb + _state_gb(est) + RUNTIME_GB + RUNTIME_SHARE * device_gb
        est.rows += [row, kv]
        est.reasons += [reason] if reason else []
    est.rows.append(Row("runtime", RUNTIME_GB + RUNTIME_SHARE * device_gb, "CUDA/NCCL, fragmentation"))
    est.training_peak_gb = sum(r.gb for r in est.rows if r.counted)
    if kind in ("distill", "dual_system"):
        _sampling_phase(shape, recipe, kind, device_gb, est)
    if kind == "grpo":
        est.notes.append(f"sequence = {PROMPT_TOKENS:,} prompt tokens (assumed) + max_completion_length")
    est.notes.insert(0, f"sharding: {sh.name} over {n} device(s)")
    for what, gb in (("training", est.training_peak_gb), ("sampling", est.sampling_peak_gb)):
        if gb > device_gb:
            est.reasons.append(f"{what} peak {gb:.1f} GB > {device_gb:g} GB per device")
    return est


def _state_gb(est: MemoryEstimate) -> float:
    return sum(r.gb for r in est.rows if r.name in ("weights", "gradients", "optimizer states", "gathered weights"))


def sampling_volume(
    recipe: Mapping[str, Any],
    n_devices: int,
    tokens_per_s: float,
    reply_fraction: float = 0.5,
    kind: str | None = None,
) -> list[tuple[str, float, float]]:
    """(what, generated tokens, hours) of the recipe's sampling, with replies ``reply_fraction`` of the token limit
    long on average and ``tokens_per_s`` generated per device, all devices sampling their share."""
    kind = kind or recipe_kind(recipe)
    rate = tokens_per_s * max(1, n_devices) * 3600
    out: list[tuple[str, float]] = []
    if kind == "distill":
        per_it = int(recipe.get("candidates_per_iteration") or 0) * int(recipe.get("complexity_samples") or 8)
        reply = int(recipe.get("max_new_tokens") or 1024) * reply_fraction
        out.append((f"pass rates, per iteration ({per_it:,} replies)", per_it * reply))
        its = int(recipe.get("iterations", 1))
        out.append((f"pass rates, {its} iterations", per_it * reply * its))
        evals = int(recipe.get("eval_max_samples") or 0) + int(recipe.get("track_first_iteration") or 0)
        out.append((f"evaluation, per iteration ({evals:,} replies)", evals * reply))
    elif kind == "dual_system":
        reply = int(recipe.get("max_new_tokens") or 1024) * reply_fraction
        k = int(recipe.get("num_samples") or 8)
        out.append((f"fusion labels, per 1,000 prompts ({k} x 2 modes)", 1000 * k * 2 * reply))
    elif kind == "grpo":
        batch = (int(recipe.get("per_device_train_batch_size", 8)) * max(1, n_devices)
                 * int(recipe.get("gradient_accumulation_steps", 1)))  # fmt: skip
        reply = int(recipe.get("max_completion_length") or 256) * reply_fraction
        out.append((f"rollouts, per optimizer step ({batch:,} completions)", batch * reply))
        out.append(("rollouts, per 100 steps", 100 * batch * reply))
    return [(what, toks, toks / rate) for what, toks in out]


def fmt_hours(h: float) -> str:
    return f"{h * 60:.0f} min" if h < 1 else f"{h:.1f} h" if not math.isinf(h) else "inf"


#: pyproject's extras and the distribution each brings (what importlib.metadata can see installed).
EXTRAS = {"vllm": "vllm", "deepspeed": "deepspeed", "flash-attn": "flash-attn", "tensorboard": "tensorboard",
          "bitsandbytes": "bitsandbytes", "npu": "torch-npu"}  # fmt: skip
#: Config values that need an extra: attn_implementation, report_to, quantization and sharding.
VALUE_EXTRAS = {"flash_attention_2": "flash-attn", "tensorboard": "tensorboard", "load_in_4bit": "bitsandbytes",
                "load_in_8bit": "bitsandbytes", "use_vllm": "vllm", "vllm": "vllm"}  # fmt: skip
NEEDS_NO_EXTRA = {"sdpa", "eager", "none", "flex_attention"}


def installed_extras() -> dict[str, str | None]:
    """Each extra's distribution version, or None when it is not installed."""
    found: dict[str, str | None] = {}
    for extra, dist in EXTRAS.items():
        try:
            found[extra] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[extra] = None
    return found


def config_extras(recipe: Mapping[str, Any], accelerate: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The extras a recipe config (and accelerate config) needs: {extra: the key = value that needs it}."""
    needs: dict[str, str] = {}
    report = recipe.get("report_to")
    attn = recipe.get("attn_implementation")
    if attn in VALUE_EXTRAS:
        needs[VALUE_EXTRAS[attn]] = f"attn_implementation={attn}"
    for value in report if isinstance(report, list) else [report]:
        if value in VALUE_EXTRAS:
            needs[VALUE_EXTRAS[value]] = f"report_to={value}"
    for key in ("load_in_4bit", "load_in_8bit", "use_vllm"):
        if recipe.get(key):
            needs[VALUE_EXTRAS[key]] = f"{key}=true"
    for key in ("complexity_backend", "sampler_backend"):
        if recipe.get(key) == "vllm":
            needs["vllm"] = f"{key}=vllm"
    if (accelerate or {}).get("distributed_type") == "DEEPSPEED":
        needs["deepspeed"] = "accelerate distributed_type=DEEPSPEED"
    return needs
