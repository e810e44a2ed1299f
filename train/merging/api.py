"""The streaming merge and its function-level API.

``merge_checkpoints`` (simple arguments) and ``merge_from_config`` (a mergekit-style config) read every input
tensor by tensor, check that the inputs fit together before writing anything, merge each tensor with a pure method
from ``methods.py``, and write a normal ``save_pretrained`` folder into a temporary sibling directory that is renamed
into place only when complete. Peak memory is about one tensor per input plus a few float32 working copies of it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from train.merging import methods
from train.merging.config import METHODS, MergeConfig, ModelInput, parse_dtype, resolve_parameters, tensor_t
from train.merging.io import (
    DTYPE_NAMES,
    OutputTensor,
    SafetensorsCheckpoint,
    ShardedWriter,
    commit_dir,
    partial_dir,
    recover_commit,
)
from train.merging.lora import LoraSource, is_adapter, resolve_adapter_base

logger = logging.getLogger(__name__)

MANIFEST_NAME = "merge_manifest.json"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "spiece.model",
)


class MergeError(ValueError):
    """Inputs that cannot be merged together."""


class IncompatibleModelsError(MergeError):
    """Inputs of different architectures (``architectures`` / ``model_type`` in config.json)."""


class TensorMismatchError(MergeError):
    """Inputs whose tensor names, shapes or dtypes differ; the message names the tensor and the models."""

    def __init__(self, message: str, tensor: str):
        super().__init__(message)
        self.tensor = tensor


class NonFiniteError(MergeError):
    """An input or output tensor with NaN/inf values; the message names the file (or output) and the tensor."""

    def __init__(self, message: str, tensor: str):
        super().__init__(message)
        self.tensor = tensor


# -- inputs ------------------------------------------------------------------------------------------------------


def open_model(ref: str | Path) -> SafetensorsCheckpoint | LoraSource:
    """A merge input from a local reference: a checkpoint folder, an adapter folder, or ``BASE+ADAPTER``."""
    ref = str(ref)
    if "+" in ref and not Path(ref).exists():
        base, adapter = ref.split("+", 1)
        if not Path(base).is_dir() or not is_adapter(adapter):
            raise MergeError(f"model {ref!r}: expected 'BASE_DIR+ADAPTER_DIR' with both folders present locally")
        return LoraSource(base, adapter)
    path = Path(ref)
    if not path.is_dir():
        raise MergeError(
            f"model {ref!r} is not a local folder (fastslow merges local checkpoints; it never downloads)"
        )
    if is_adapter(path):
        return LoraSource(resolve_adapter_base(path), path)
    return SafetensorsCheckpoint(path)


def model_config(source: SafetensorsCheckpoint | LoraSource) -> dict[str, Any]:
    folder = source.base_dir if isinstance(source, LoraSource) else source.folder
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise MergeError(f"{folder}: no config.json")
    return json.loads(path.read_text())


def _num_layers(config: Mapping[str, Any]) -> int | None:
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(config.get(key), int):
            return config[key]
    return None


class _Plan:
    """Who is read in which order and how one tensor is merged, shared by the streaming and in-memory paths."""

    def __init__(self, cfg: MergeConfig, num_layers: int | None):
        self.cfg = cfg
        self.spec = cfg.method
        self.num_layers = num_layers
        if self.spec.base == "unused":
            if cfg.base_model and cfg.base_model not in [m.model for m in cfg.models]:
                logger.warning("%s ignores base_model %s (not one of the models)", cfg.merge_method, cfg.base_model)
            self.merged = list(cfg.models)  # the models the method combines, in order
            self.order = [m.model for m in cfg.models]
            self.base_index = None
        else:
            others = cfg.non_base_models()
            self.merged = others
            if cfg.base_model:
                self.order = [cfg.base_model] + [m.model for m in others]
                self.base_index = 0
            else:
                self.order = [m.model for m in others]
                self.base_index = None

    def merge(self, name: str, tensors: list[torch.Tensor], release: bool = False) -> torch.Tensor:
        """Merge the tensors of ``name`` given in ``self.order``; returns a float32/float64 tensor.

        ``release``: the list is the caller's to give up; entries are set to None as soon as they are used, so
        memory-mapped inputs are unmapped early (the streaming merge's case).
        """
        t = tensor_t(name, self.num_layers)
        glob, per = resolve_parameters(self.cfg, name, t, self.merged)
        spec = self.spec
        if spec.name == "linear":
            return methods.linear(tensors, [p["weight"] for p in per], bool(glob["normalize"]), release=release)
        if spec.name == "ema":
            return methods.ema(tensors, beta=float(glob["beta"]), release=release)
        base, others = tensors[0], list(tensors[1:])
        if release:
            tensors.clear()
        if spec.name == "slerp":
            return methods.slerp(base, others[0], float(glob["t"]))
        generators = None
        if spec.sparsify == "random":
            generators = [torch.Generator().manual_seed(self._seed(name, i)) for i in range(len(others))]
        return methods.generalized_task_arithmetic(
            base,
            others,
            [float(p["weight"]) for p in per],
            [float(p["density"]) for p in per] if "density" in spec.model_params else None,
            sparsify=spec.sparsify,
            consensus=spec.consensus,
            normalize=bool(glob["normalize"]),
            lambda_=float(glob["lambda"]),
            rescale=glob["rescale"],
            generators=generators,
            release=release,
        )

    def _seed(self, name: str, index: int) -> int:
        """A DARE seed per (run seed, tensor, model): reproducible and independent of the order tensors are visited."""
        digest = hashlib.sha256(f"{self.cfg.random_seed}\0{name}\0{index}".encode()).digest()
        return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


# -- checks ------------------------------------------------------------------------------------------------------


def _check_architectures(refs: Sequence[str], configs: Sequence[Mapping[str, Any]]) -> None:
    for key in ("architectures", "model_type"):
        values = [c.get(key) for c in configs]
        if any(v != values[0] for v in values):
            detail = ", ".join(f"{r}: {v}" for r, v in zip(refs, values))
            raise IncompatibleModelsError(f"inputs have different {key}: {detail}")


def _vocab_plan(cfg: MergeConfig, refs, sources, configs, source_index: int) -> dict[str, tuple[int, int]]:
    """For tensors whose first dimension is the vocabulary: (rows merged from all inputs, rows in the output)."""
    vocabs = [c.get("vocab_size") for c in configs]
    if len(set(vocabs)) <= 1:
        return {}
    plan = {}
    ref = sources[0]
    for name in ref.names():
        shapes = [s.info(name).shape for s in sources]
        if len(set(shapes)) == 1:
            continue
        rows = [s[0] if s else None for s in shapes]
        if any(sh[1:] != shapes[0][1:] for sh in shapes) or rows != vocabs:
            continue  # not an embedding; reported as a shape mismatch later
        if cfg.vocab_mismatch == "error":
            detail = ", ".join(f"{r}: {v}" for r, v in zip(refs, vocabs))
            raise TensorMismatchError(
                f"tensor {name!r} has different vocabulary sizes ({detail}); set vocab_mismatch: truncate (keep the "
                "rows all models share) or source (shared rows merged, the rest from tokenizer_source)",
                name,
            )
        common = min(rows)
        out_rows = common if cfg.vocab_mismatch == "truncate" else rows[source_index]
        plan[name] = (common, out_rows)
    return plan


def _check_tensors(refs, sources, vocab_plan, dtype_given: bool) -> None:
    ref_names = sources[0].names()
    ref_set = set(ref_names)
    for r, s in zip(refs[1:], sources[1:]):
        names = set(s.names())
        missing, extra = sorted(ref_set - names), sorted(names - ref_set)
        if missing:
            raise TensorMismatchError(
                f"tensor {missing[0]!r} is in {refs[0]} but not in {r} ({len(missing)} missing)", missing[0]
            )
        if extra:
            raise TensorMismatchError(
                f"tensor {extra[0]!r} is in {r} but not in {refs[0]} ({len(extra)} extra)", extra[0]
            )
    for name in ref_names:
        infos = [s.info(name) for s in sources]
        for r, info in zip(refs[1:], infos[1:]):
            if info.shape != infos[0].shape and name not in vocab_plan:
                raise TensorMismatchError(
                    f"tensor {name!r} has shape {list(infos[0].shape)} in {refs[0]} but {list(info.shape)} in {r}",
                    name,
                )
            if info.dtype != infos[0].dtype and not dtype_given:
                raise TensorMismatchError(
                    f"tensor {name!r} is {infos[0].dtype} in {refs[0]} but {info.dtype} in {r}; set dtype to merge "
                    "inputs of different dtypes",
                    name,
                )


def _check_layer_ranges(cfg: MergeConfig, refs, configs) -> None:
    layers = dict(zip(refs, (_num_layers(c) for c in configs)))
    for m in cfg.models:
        if m.layer_range is not None and list(m.layer_range) != [0, layers.get(m.model)]:
            raise MergeError(
                f"slice source {m.model!r} has layer_range {list(m.layer_range)} but the model has "
                f"{layers.get(m.model)} layers; only whole-model slices are supported"
            )


# -- output ------------------------------------------------------------------------------------------------------


def _tokenizer_folder(source) -> Path:
    if isinstance(source, LoraSource) and any((source.adapter_dir / f).is_file() for f in TOKENIZER_FILES):
        return source.adapter_dir
    return Path(source.base_dir if isinstance(source, LoraSource) else source.folder)


def _write_side_files(tmp: Path, ref_source, ref_config, tok_source, out_dtype, vocab_size) -> None:
    config = dict(ref_config)
    if out_dtype is not None:
        config["dtype"] = str(out_dtype).removeprefix("torch.")
        config.pop("torch_dtype", None)
    if vocab_size is not None:
        config["vocab_size"] = vocab_size
    (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    ref_folder = Path(ref_source.base_dir if isinstance(ref_source, LoraSource) else ref_source.folder)
    if (ref_folder / "generation_config.json").is_file():
        shutil.copy2(ref_folder / "generation_config.json", tmp / "generation_config.json")
    tok_folder = _tokenizer_folder(tok_source)
    copied = [f for f in TOKENIZER_FILES if (tok_folder / f).is_file()]
    for f in copied:
        shutil.copy2(tok_folder / f, tmp / f)
    if not copied:
        logger.warning("no tokenizer files in %s; the merged folder has no tokenizer", tok_folder)


def _input_record(ref: str, role: str, source, hash_files: bool = True) -> dict[str, Any]:
    rec: dict[str, Any] = {"model": ref, "role": role, "path": str(Path(ref.split("+")[0]).resolve())}
    if isinstance(source, LoraSource):
        rec["base"] = str(source.base_dir.resolve())
        rec["adapter"] = str(source.adapter_dir.resolve())
    files = source.file_hashes() if hash_files else dict.fromkeys(source.files)
    rec["files"] = {str(f): h for f, h in files.items()}
    return rec


# -- the merge ---------------------------------------------------------------------------------------------------


def merge_from_config(
    config: MergeConfig | Mapping[str, Any] | str | Path,
    out_dir: str | Path,
    overwrite: bool = False,
    show_progress: bool = True,
    hash_files: bool = True,
    allow_non_finite: bool = False,
) -> Path:
    """Run a merge described by a :class:`MergeConfig`, a mergekit-style dict or a YAML file; returns ``out_dir``.

    ``hash_files=False`` skips the sha256 of input and output files (the manifest then records null hashes); it
    saves about a second per GB of checkpoints read on a busy CPU.

    Every input tensor and every merged tensor is checked for NaN/inf before it is written: a non-finite one raises
    :class:`NonFiniteError` naming the file (or the output) and the tensor, unless ``allow_non_finite``. The output
    is committed atomically; the leftovers of a commit killed half-way are recovered at the next start
    (:func:`train.merging.io.recover_commit`).
    """
    if isinstance(config, (str, Path)):
        cfg = MergeConfig.from_yaml(config)
    elif isinstance(config, MergeConfig):
        cfg = config
    else:
        cfg = MergeConfig.from_dict(dict(config))
    out = Path(out_dir).resolve()
    if out.parent.exists():
        recover_commit(out)  # a commit killed half-way: the old output back, or the new one's leftovers gone
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass overwrite=True (--overwrite) to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)

    start = time.time()
    dtype, out_dtype = parse_dtype(cfg.dtype), parse_dtype(cfg.out_dtype)
    refs = list(dict.fromkeys(_Plan(cfg, None).order))
    sources = [open_model(r) for r in refs]
    try:
        configs = [model_config(s) for s in sources]
        _check_architectures(refs, configs)
        _check_layer_ranges(cfg, refs, configs)
        plan = _Plan(cfg, _num_layers(configs[0]))
        by_ref = dict(zip(refs, sources))
        tok_ref = cfg.tokenizer_source
        if tok_ref in (None, "base"):
            tok_ref = cfg.base_model or refs[0]
        if tok_ref not in by_ref:
            if cfg.vocab_mismatch == "source":
                raise MergeError(f"vocab_mismatch: source needs tokenizer_source {tok_ref!r} to be one of the inputs")
            tok_source = open_model(tok_ref)
        else:
            tok_source = by_ref[tok_ref]
        vocab_plan = _vocab_plan(cfg, refs, sources, configs, refs.index(tok_ref) if tok_ref in refs else 0)
        _check_tensors(refs, sources, vocab_plan, dtype is not None)

        layout = _layout(sources[0], vocab_plan, dtype, out_dtype)
        out_vocab = next(iter(vocab_plan.values()))[1] if vocab_plan else None
        tmp = partial_dir(out)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="merge-hash")
        # The reader maps (and pre-faults) the inputs of tensor i+1 while tensor i is merged, as the writer writes
        # tensor i-1: one tensor set in flight each way, so memory stays at about three tensors' worth.
        reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="merge-read")
        writer = ShardedWriter(tmp, layout, cfg.max_shard_size, hash_files=hash_files)
        try:
            for source in sources if hash_files else ():
                source.start_hashing(hasher)
            order = [by_ref[r] for r in plan.order]
            src_index = plan.order.index(tok_ref) if tok_ref in plan.order else 0
            specs = tqdm(layout, desc=f"merging ({cfg.merge_method})", unit="tensor", disable=not show_progress)
            pending = reader.submit(_read_all, order, layout[0].name) if layout else None
            for i, spec in enumerate(specs):
                tensors = pending.result()
                pending = reader.submit(_read_all, order, layout[i + 1].name) if i + 1 < len(layout) else None
                if not allow_non_finite:
                    _check_finite_inputs(plan.order, order, spec.name, tensors)
                merged = _merge_one(plan, spec, tensors, dtype, vocab_plan.get(spec.name), src_index)
                if not allow_non_finite and (bad := _non_finite(merged)):
                    raise NonFiniteError(
                        f"{out}: output tensor {spec.name!r} has {bad} non-finite values from finite inputs (an "
                        f"overflow of out_dtype {spec.dtype}?); not writing it", spec.name
                    )  # fmt: skip
                writer.write(spec.name, merged)
                del tensors, merged
            writer.close()
            final_dtype = out_dtype or dtype or next((t.dtype for t in layout if t.dtype.is_floating_point), None)
            _write_side_files(tmp, sources[0], configs[0], tok_source, final_dtype, out_vocab)
            manifest = {
                "format": "fastslow-merge/1",
                "merge_method": cfg.merge_method,
                "config": cfg.to_dict(),
                "method_defaults": {k: v for k, v in cfg.method.global_params.items() if isinstance(v, (int, float))},
                "inputs": [
                    _input_record(r, "base" if r == cfg.base_model else "model", s, hash_files)
                    for r, s in by_ref.items()
                ],
                "tokenizer_source": str(tok_ref),
                "output": {
                    "dtype": DTYPE_NAMES.get(final_dtype, str(final_dtype)),
                    "num_tensors": len(layout),
                    "total_bytes": sum(t.nbytes for t in layout),
                    "files": writer.hashes if hash_files else dict.fromkeys(name for name, _ in writer.shards),
                },
                "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "seconds": round(time.time() - start, 3),
                "versions": {"torch": torch.__version__},
            }
            (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
            commit_dir(tmp, out, overwrite)
        except BaseException:
            writer.abort()
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            reader.shutdown(wait=True, cancel_futures=True)
            hasher.shutdown(wait=True, cancel_futures=True)
        if tok_ref not in by_ref:
            tok_source.close()
    finally:
        for s in sources:
            s.close()
    logger.info("merged %d models with %s into %s in %.1fs", len(refs), cfg.merge_method, out, time.time() - start)
    return out


def _layout(ref, vocab_plan, dtype, out_dtype) -> list[OutputTensor]:
    """Output tensors in the reference input's storage order (sequential reads), with output dtypes and shapes."""
    layout = []
    for name in ref.names():
        info = ref.info(name)
        shape = (vocab_plan[name][1], *info.shape[1:]) if name in vocab_plan else info.shape
        floating = info.dtype.is_floating_point
        layout.append(OutputTensor(name, (out_dtype or dtype or info.dtype) if floating else info.dtype, shape))
    return layout


def _non_finite(t: torch.Tensor, chunk: int = 1 << 24) -> int:
    """How many NaN/inf values ``t`` holds, counted a slice at a time (no full-size mask of a 7B embedding)."""
    if not t.is_floating_point():
        return 0
    flat = t.reshape(-1)
    return sum(int((~torch.isfinite(part)).sum()) for part in flat.split(chunk))


def _check_finite_inputs(refs: Sequence[str], order, name: str, tensors: Sequence[torch.Tensor]) -> None:
    """Refuse an input tensor with NaN/inf: merged in, it spreads into the output silently."""
    for ref, source, t in zip(refs, order, tensors):
        if bad := _non_finite(t):
            info = getattr(source, "info", None)
            where = info(name).file if info is not None else ref
            raise NonFiniteError(
                f"{where}: tensor {name!r} has {bad} non-finite values (NaN/inf); merging would spread them into "
                "the output. Pass allow_non_finite=True (--allow_non_finite) to merge it anyway", name
            )  # fmt: skip


def _read_all(order, name: str) -> list[torch.Tensor]:
    """The inputs of one tensor, mapped with their pages faulted in (run on the reader thread)."""
    return [s.read(name, prefault=True) for s in order]


def _merge_one(plan: _Plan, spec: OutputTensor, tensors, dtype, vocab_rows, src_index: int) -> torch.Tensor:
    if dtype is not None and tensors[0].is_floating_point():
        tensors = [t.to(dtype) for t in tensors]
    if not tensors[0].is_floating_point():
        if any(not torch.equal(t, tensors[0]) for t in tensors[1:]):
            raise TensorMismatchError(
                f"non-float tensor {spec.name!r} differs between inputs; cannot merge it", spec.name
            )
        return tensors[0]
    if vocab_rows is None:
        return plan.merge(spec.name, tensors, release=True).to(spec.dtype)
    common, out_rows = vocab_rows
    merged = plan.merge(spec.name, [t[:common] for t in tensors], release=True).to(spec.dtype)
    if out_rows > common:
        merged = torch.cat([merged, tensors[src_index][common:out_rows].to(spec.dtype)])
    return merged


def merge_checkpoints(
    method: str,
    models: Sequence[str | Path],
    out_dir: str | Path,
    base_model: str | Path | None = None,
    weights: Sequence[float] | None = None,
    parameters: Mapping[str, Any] | None = None,
    tokenizer_source: str | Path | None = None,
    dtype: str | None = None,
    *,
    densities: Sequence[float] | None = None,
    out_dtype: str | None = None,
    vocab_mismatch: str = "error",
    random_seed: int = 0,
    max_shard_size: int | str = "5GB",
    overwrite: bool = False,
    show_progress: bool = True,
    hash_files: bool = True,
    allow_non_finite: bool = False,
) -> Path:
    """Merge local checkpoints (or adapters) into ``out_dir`` and return it (see :func:`merge_from_config`).

    ``models`` are the inputs besides ``base_model`` (a base listed in ``models`` too is fine). ``weights`` and
    ``densities`` are per model in ``models`` order (weights default to 1.0); ``parameters`` are the method's global
    parameters with mergekit's names (``t``, ``lambda``, ``normalize``, ``rescale``, ``beta``, ...). Examples::

        merge_checkpoints("linear", [a, b], out, weights=[0.7, 0.3])
        merge_checkpoints("ties", [a, b], out, base_model=base, densities=[0.5, 0.5])
        merge_checkpoints("slerp", [b], out, base_model=a, parameters={"t": 0.5})
        merge_checkpoints("ema", [student_k], out, base_model=ema_prev, parameters={"beta": 0.8})
    """
    models = [str(m) for m in models]
    if weights is not None and len(weights) != len(models):
        raise ValueError(f"{len(weights)} weights for {len(models)} models")
    if densities is not None and len(densities) != len(models):
        raise ValueError(f"{len(densities)} densities for {len(models)} models")
    inputs = []
    if method not in METHODS:
        raise ValueError(f"unknown merge method {method!r}; expected one of {sorted(METHODS)}")
    takes_weight = "weight" in METHODS[method].model_params
    for i, m in enumerate(models):
        p: dict[str, Any] = {}
        if takes_weight:
            p["weight"] = float(weights[i]) if weights is not None else 1.0
        elif weights is not None:
            raise ValueError(f"merge method {method!r} takes no per-model weights")
        if densities is not None:
            p["density"] = float(densities[i])
        inputs.append(ModelInput(m, p))
    base = str(base_model) if base_model is not None else None
    cfg = MergeConfig(
        merge_method=method,
        models=inputs,
        base_model=base,
        parameters=_own_parameters(method, parameters or {}),
        dtype=dtype,
        out_dtype=out_dtype,
        tokenizer_source=str(tokenizer_source) if tokenizer_source is not None else None,
        vocab_mismatch=vocab_mismatch,
        random_seed=random_seed,
        max_shard_size=max_shard_size,
    )
    return merge_from_config(cfg, out_dir, overwrite=overwrite, show_progress=show_progress, hash_files=hash_files,
                             allow_non_finite=allow_non_finite)  # fmt: skip


def _own_parameters(method: str, parameters: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters ``method`` uses. Parameters only other methods use are dropped (a caller such as the
    distillation loop passes one set for whichever method is configured); names no method knows are an error."""
    spec = METHODS[method]
    own = set(spec.global_params) | set(spec.model_params)
    known = {k for s in METHODS.values() for k in (*s.global_params, *s.model_params)}
    kept = {}
    for key, value in parameters.items():
        if key in own:
            kept[key] = value
        elif key in known:
            logger.debug("merge method %s does not use parameter %r; ignored", method, key)
        else:
            raise ValueError(f"unknown merge parameter {key!r}; known parameters: {sorted(known)}")
    return kept


def merge_lora(
    base_model: str | Path,
    adapter: str | Path,
    out_dir: str | Path,
    dtype: str | None = None,
    overwrite: bool = False,
    show_progress: bool = True,
) -> Path:
    """Merge a PEFT LoRA adapter into its base (streamed): ``W + scaling * B @ A`` for every adapted weight.

    The output keeps the base's dtype unless ``dtype`` is given; the tokenizer comes from the adapter folder when it
    has one (trl saves it there), else from the base.
    """
    ref = f"{base_model}+{adapter}"
    cfg = MergeConfig(merge_method="linear", models=[ModelInput(ref, {"weight": 1.0})], dtype=dtype)
    return merge_from_config(cfg, out_dir, overwrite=overwrite, show_progress=show_progress)


def merge_state_dicts(
    config: MergeConfig, state_dicts: Mapping[str, Mapping[str, torch.Tensor]], num_layers: int | None = None
) -> dict[str, torch.Tensor]:
    """In-memory merge of whole state dicts keyed by the config's model references (no files, no checks on vocab).

    Same per-tensor arithmetic as the streaming merge; used by the benchmark baseline and handy for tests.
    """
    plan = _Plan(config, num_layers)
    dtype, out_dtype = parse_dtype(config.dtype), parse_dtype(config.out_dtype)
    first = state_dicts[plan.order[0]]
    out = {}
    for name, ref_tensor in first.items():
        tensors = [state_dicts[r][name] for r in plan.order]  # merge() only reads them
        if dtype is not None:
            tensors = [t.to(dtype) for t in tensors]
        out[name] = plan.merge(name, tensors).to(out_dtype or dtype or ref_tensor.dtype)
    return out


__all__ = [
    "MANIFEST_NAME",
    "IncompatibleModelsError",
    "MergeError",
    "TensorMismatchError",
    "NonFiniteError",
    "merge_checkpoints",
    "merge_from_config",
    "merge_lora",
    "merge_state_dicts",
    "open_model",
]
