"""Streaming merges of tiny saved checkpoints: loadable output, identities, refusals, atomicity, adapters, recipe."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import load_script
from safetensors.torch import load_file, save_file

from train.merging import (
    MANIFEST_NAME,
    IncompatibleModelsError,
    MergeConfig,
    MergeError,
    TensorMismatchError,
    merge_checkpoints,
    merge_from_config,
    merge_lora,
    merge_state_dicts,
)
from train.merging import api as merge_api
from train.merging import methods as M
from train.merging.io import weight_files

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tok():
    from train.core.modes import QWEN3_THINK
    from train.world.tiny import build_tokenizer

    return build_tokenizer(think=QWEN3_THINK)


def save_model(tok, path: Path, seed: int, size: str = "nano", **kw) -> Path:
    from train.world.tiny import build_model

    model = build_model(tok, size=size, seed=seed, **kw)
    model.save_pretrained(path, max_shard_size=kw.pop("max_shard_size", "50GB"))
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def ckpts(tok, tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("merge-ckpts")
    return [save_model(tok, root / f"m{i}", seed=i) for i in range(3)]


def state(path: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in weight_files(path):
        out.update(load_file(f))
    return out


def load_and_generate(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    ids = tokenizer("12+7=", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape == (1, ids.shape[1] + 4)
    return model


def test_linear_of_three_loads_generates_and_has_the_expected_weights(ckpts, tmp_path):
    out = merge_checkpoints("linear", ckpts, tmp_path / "lin", weights=[0.5, 0.3, 0.2], show_progress=False)
    model = load_and_generate(out)
    sds = [state(p) for p in ckpts]
    merged = state(out)
    assert set(merged) == set(sds[0])
    for name, t in merged.items():
        expected = (0.5 * sds[0][name] + 0.3 * sds[1][name] + 0.2 * sds[2][name]) / 1.0
        assert torch.allclose(t, expected, atol=1e-6), name
    loaded = dict(model.named_parameters())["model.layers.1.mlp.up_proj.weight"]
    assert torch.equal(loaded.detach(), merged["model.layers.1.mlp.up_proj.weight"])
    for f in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", MANIFEST_NAME):
        assert (out / f).is_file(), f


def test_ties_and_slerp_on_tiny_checkpoints_match_the_pure_functions(ckpts, tmp_path):
    base, a, b = ckpts
    out = merge_checkpoints(
        "ties",
        [a, b],
        tmp_path / "ties",
        base_model=base,
        weights=[1.0, 0.5],
        densities=[0.5, 0.7],
        show_progress=False,
    )
    load_and_generate(out)
    sb, sa, s2, merged = state(base), state(a), state(b), state(out)
    name = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(merged[name], M.ties(sb[name], [sa[name], s2[name]], [1.0, 0.5], [0.5, 0.7]))
    out = merge_checkpoints(
        "slerp", [a], tmp_path / "slerp", base_model=base, parameters={"t": 0.3}, show_progress=False
    )
    load_and_generate(out)
    assert torch.equal(state(out)[name], M.slerp(sb[name], sa[name], 0.3))


def test_streaming_equals_in_memory_merge_for_dare(ckpts, tmp_path):
    base, a, b = ckpts
    cfg = MergeConfig.from_dict(
        {
            "merge_method": "dare_ties",
            "base_model": str(base),
            "models": [
                {"model": str(a), "parameters": {"weight": 0.6, "density": 0.4}},
                {"model": str(b), "parameters": {"weight": 0.4, "density": 0.6}},
            ],
            "random_seed": 7,
        }
    )
    out = merge_from_config(cfg, tmp_path / "dare", show_progress=False)
    in_memory = merge_state_dicts(cfg, {str(p): state(p) for p in ckpts}, num_layers=2)
    merged = state(out)
    assert all(torch.equal(merged[k], in_memory[k]) for k in merged)
    again = merge_from_config(cfg, tmp_path / "dare2", show_progress=False)  # seeded: reproducible
    assert all(torch.equal(merged[k], v) for k, v in state(again).items())


@pytest.mark.parametrize(
    "method, params",
    [
        ("linear", {}),
        ("ema", {"beta": 0.5}),
        ("task_arithmetic", {"lambda": 1.7}),
        ("ties", {}),
        ("dare_ties", {}),
        ("dare_linear", {}),
        ("slerp", {"t": 0.4}),
    ],
)
def test_merging_a_model_with_itself_returns_it_unchanged(ckpts, tmp_path, method, params):
    twin = tmp_path / "twin"
    shutil.copytree(ckpts[0], twin)
    densities = [0.3] if method in ("ties", "dare_ties", "dare_linear") else None
    if method in ("linear", "ema"):
        out = merge_checkpoints(method, [ckpts[0], twin], tmp_path / "out", parameters=params, show_progress=False)
    else:
        out = merge_checkpoints(
            method, [twin], tmp_path / "out", base_model=ckpts[0], parameters=params, densities=densities,
            show_progress=False,
        )  # fmt: skip
    original, merged = state(ckpts[0]), state(out)
    assert set(original) == set(merged)
    assert all(torch.equal(original[k], merged[k]) for k in original), method


def test_manifest_records_inputs_hashes_method_and_parameters(ckpts, tmp_path):
    out = merge_checkpoints(
        "task_arithmetic", ckpts[1:], tmp_path / "ta", base_model=ckpts[0], parameters={"lambda": 0.5},
        show_progress=False,
    )  # fmt: skip
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["merge_method"] == "task_arithmetic"
    assert manifest["config"]["parameters"] == {"lambda": 0.5}
    assert [i["role"] for i in manifest["inputs"]] == ["base", "model", "model"]
    first = manifest["inputs"][0]
    (path, digest), *_ = first["files"].items()
    assert digest == hashlib.sha256(Path(path).read_bytes()).hexdigest()
    assert (
        manifest["output"]["files"]["model.safetensors"]
        == hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    )


def test_sharded_inputs_and_sharded_output(tok, ckpts, tmp_path):
    sharded = save_model(tok, tmp_path / "sharded", seed=1, max_shard_size="20KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    out = merge_checkpoints(
        "linear", [ckpts[0], sharded], tmp_path / "out", max_shard_size="30KB", show_progress=False
    )
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    load_and_generate(out)
    a, b, merged = state(ckpts[0]), state(ckpts[1]), state(out)
    assert all(torch.allclose(merged[k], (a[k] + b[k]) / 2, atol=1e-7) for k in a)


def test_prefaulted_reads_and_intermediate_syncs_change_nothing(ckpts, tmp_path, monkeypatch):
    from train.merging import io as merge_io

    src = merge_io.SafetensorsCheckpoint(ckpts[0])
    for name in src.names():
        assert torch.equal(src.read(name, prefault=True), src.read(name))
    src.close()

    # a data sync after every tensor (instead of every 64 MB) writes the same bytes and the same manifest hashes
    def merge(out: Path) -> Path:
        return merge_checkpoints(
            "ties", ckpts[1:], out, base_model=ckpts[0], densities=[0.5, 0.5], weights=[1, 1], show_progress=False
        )

    a = merge(tmp_path / "a")
    monkeypatch.setattr(merge_io, "SYNC_EVERY", 1)
    b = merge(tmp_path / "b")
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    files = [json.loads((p / MANIFEST_NAME).read_text())["output"]["files"] for p in (a, b)]
    assert (
        files[0]
        == files[1]
        == {"model.safetensors": hashlib.sha256((a / "model.safetensors").read_bytes()).hexdigest()}
    )


def test_dtype_cast_and_out_dtype(ckpts, tmp_path):
    out = merge_checkpoints("linear", ckpts[:2], tmp_path / "bf16", dtype="bfloat16", show_progress=False)
    assert all(t.dtype == torch.bfloat16 for t in state(out).values())
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    load_and_generate(out)


# -- refusals ----------------------------------------------------------------------------------------------------


def test_different_shapes_name_the_tensor(tok, ckpts, tmp_path):
    wide = save_model(tok, tmp_path / "wide", seed=0, intermediate_size=48)
    with pytest.raises(TensorMismatchError, match=r"tensor 'model\.layers\.0\.mlp\.down_proj\.weight' has shape") as e:
        merge_checkpoints("linear", [ckpts[0], wide], tmp_path / "out", show_progress=False)
    assert e.value.tensor == "model.layers.0.mlp.down_proj.weight"
    assert not (tmp_path / "out").exists()


def test_missing_tensor_and_dtype_mismatch_name_the_tensor(ckpts, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(ckpts[1], broken)
    sd = state(broken)
    del sd["model.norm.weight"]
    save_file(sd, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(TensorMismatchError, match=r"'model\.norm\.weight' is in .* but not in .*broken"):
        merge_checkpoints("linear", [ckpts[0], broken], tmp_path / "out", show_progress=False)

    half = tmp_path / "half"
    shutil.copytree(ckpts[1], half)
    save_file({k: v.half() for k, v in state(ckpts[1]).items()}, half / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(TensorMismatchError, match=r"torch\.float32 in .* but torch\.float16 in .*set dtype"):
        merge_checkpoints("linear", [ckpts[0], half], tmp_path / "out", show_progress=False)
    out = merge_checkpoints("linear", [ckpts[0], half], tmp_path / "out", dtype="float32", show_progress=False)
    assert state(out)["model.norm.weight"].dtype == torch.float32


def test_different_architectures_are_refused(ckpts, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(ckpts[1], other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["architectures"] = ["LlamaForCausalLM"]
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(IncompatibleModelsError, match="different architectures"):
        merge_checkpoints("linear", [ckpts[0], other], tmp_path / "out", show_progress=False)


def test_vocab_mismatch_refused_unless_an_option_says_how(tok, ckpts, tmp_path):
    big = save_model(tok, tmp_path / "big", seed=1, vocab_size=len(tok) + 5)
    with pytest.raises(TensorMismatchError, match=r"'model\.embed_tokens\.weight' has different vocabulary sizes"):
        merge_checkpoints("linear", [ckpts[0], big], tmp_path / "out", show_progress=False)
    small, large = state(ckpts[0]), state(big)
    name = "model.embed_tokens.weight"

    out = merge_checkpoints(
        "linear", [ckpts[0], big], tmp_path / "trunc", vocab_mismatch="truncate", show_progress=False
    )
    assert json.loads((out / "config.json").read_text())["vocab_size"] == len(tok)
    assert torch.allclose(state(out)[name], (small[name] + large[name][: len(tok)]) / 2)
    load_and_generate(out)

    out = merge_checkpoints(
        "linear", [ckpts[0], big], tmp_path / "src", vocab_mismatch="source", tokenizer_source=big, show_progress=False
    )
    merged = state(out)[name]
    assert merged.shape[0] == len(tok) + 5
    assert torch.allclose(merged[: len(tok)], (small[name] + large[name][: len(tok)]) / 2)
    assert torch.equal(merged[len(tok) :], large[name][len(tok) :])  # rows only the source has are kept as they are


def test_existing_output_is_refused_without_overwrite(ckpts, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="overwrite"):
        merge_checkpoints("linear", ckpts[:2], out, show_progress=False)
    merge_checkpoints("linear", ckpts[:2], out, overwrite=True, show_progress=False)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()


# -- atomicity ---------------------------------------------------------------------------------------------------


def test_interrupted_merge_leaves_no_output_and_keeps_the_old_one(ckpts, tmp_path, monkeypatch):
    real = merge_api._merge_one
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("simulated Ctrl-C mid-merge")
        return real(*args, **kwargs)

    monkeypatch.setattr(merge_api, "_merge_one", flaky)
    with pytest.raises(KeyboardInterrupt):
        merge_checkpoints("linear", ckpts, tmp_path / "out", show_progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no output, no partial folder

    monkeypatch.setattr(merge_api, "_merge_one", real)
    good = merge_checkpoints("linear", ckpts[:2], tmp_path / "out", show_progress=False)
    before = (good / "model.safetensors").read_bytes()
    calls["n"] = 0
    monkeypatch.setattr(merge_api, "_merge_one", flaky)
    with pytest.raises(KeyboardInterrupt):
        merge_checkpoints("linear", ckpts, tmp_path / "out", overwrite=True, show_progress=False)
    assert (good / "model.safetensors").read_bytes() == before  # the previous output survives a failed overwrite
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_killed_merge_leaves_no_output_and_the_next_run_cleans_up(ckpts, tmp_path):
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        from train.merging import api, io
        real = io.ShardedWriter.write
        n = {{"i": 0}}
        def write(self, name, tensor):
            n["i"] += 1
            if n["i"] == 4:
                os.kill(os.getpid(), signal.SIGKILL)  # no cleanup handlers run
            return real(self, name, tensor)
        io.ShardedWriter.write = write
        api.merge_checkpoints("linear", {[str(p) for p in ckpts]!r}, {str(tmp_path / "out")!r}, show_progress=False)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert "out" not in leftovers and len(leftovers) == 1 and leftovers[0].startswith(".out.partial-")
    merge_checkpoints("linear", ckpts, tmp_path / "out", show_progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # the stale partial folder of the dead run is gone


# -- adapters ----------------------------------------------------------------------------------------------------


def make_adapter(base: Path, out: Path, seed: int, **lora_kw) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    for k, v in lora_kw.items():
        setattr(cfg, k, v)
    peft_model = get_peft_model(model, cfg)
    peft_model.save_pretrained(out)
    return out


def peft_merged_state(base: Path, adapter: Path) -> dict[str, torch.Tensor]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).merge_and_unload()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("lora_kw", [{}, {"use_rslora": True}])
def test_lora_merge_matches_peft_merge_and_unload(ckpts, tmp_path, lora_kw):
    adapter = make_adapter(ckpts[0], tmp_path / "ad", seed=1, **lora_kw)
    out = merge_lora(ckpts[0], adapter, tmp_path / "merged", show_progress=False)
    load_and_generate(out)
    ours, reference = state(out), peft_merged_state(ckpts[0], adapter)
    name = "model.layers.1.self_attn.q_proj.weight"
    assert not torch.equal(ours[name], state(ckpts[0])[name])  # the adapter really changed the weight
    for k, v in ours.items():
        assert torch.allclose(v, reference[k], atol=1e-6), k


def test_several_adapters_merge_with_any_method(ckpts, tmp_path):
    a1 = make_adapter(ckpts[0], tmp_path / "a1", seed=1)
    a2 = make_adapter(ckpts[0], tmp_path / "a2", seed=2)
    refs = [f"{ckpts[0]}+{a1}", f"{ckpts[0]}+{a2}"]
    out = merge_checkpoints(
        "ties", refs, tmp_path / "ties", base_model=ckpts[0], densities=[0.5, 0.5], show_progress=False
    )
    load_and_generate(out)
    base = state(ckpts[0])
    m1, m2 = peft_merged_state(ckpts[0], a1), peft_merged_state(ckpts[0], a2)
    name = "model.layers.0.mlp.down_proj.weight"
    expected = M.ties(base[name], [m1[name], m2[name]], [1, 1], [0.5, 0.5])
    assert torch.allclose(state(out)[name], expected, atol=1e-6)
    untouched = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(state(out)[untouched], base[untouched])


# -- recipe and shipped configs ----------------------------------------------------------------------------------


def test_recipe_runs_a_mergekit_config_unchanged(ckpts, tmp_path):
    main = load_script("recipes/merge.py").main

    config = tmp_path / "mergekit.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            slices:
              - sources:
                  - model: {ckpts[0]}
                    layer_range: [0, 2]
                  - model: {ckpts[1]}
                    layer_range: [0, 2]
            merge_method: slerp
            base_model: {ckpts[0]}
            parameters:
              t:
                - filter: self_attn
                  value: [0, 0.5, 0.3, 0.7, 1]
                - filter: mlp
                  value: [1, 0.5, 0.7, 0.3, 0]
                - value: 0.5
            dtype: float32
            """
        )
    )
    out = main(["--config", str(config), "--out", str(tmp_path / "out"), "--no_show_progress"])
    load_and_generate(out)
    a, b, merged = state(ckpts[0]), state(ckpts[1]), state(out)
    # layer 1 of 2 is t=1: self_attn takes the last gradient value (1 -> model b), mlp the last of its own (0 -> a)
    assert torch.allclose(
        merged["model.layers.1.self_attn.q_proj.weight"], b["model.layers.1.self_attn.q_proj.weight"]
    )
    assert torch.allclose(merged["model.layers.1.mlp.up_proj.weight"], a["model.layers.1.mlp.up_proj.weight"])
    name = "model.norm.weight"
    assert torch.allclose(merged[name], M.slerp(a[name], b[name], 0.5))
    # command-line overrides of a config key
    models = f"[{{model: {ckpts[0]}, parameters: {{weight: 1}}}}, {{model: {ckpts[1]}, parameters: {{weight: 3}}}}]"
    out2 = main(
        ["--config", str(config), "--out", str(tmp_path / "o2"), "--merge_method", "linear", "--base_model", "null",
         "--models", models, "--slices", "null", "--parameters", "{}", "--no_show_progress"]
    )  # fmt: skip
    assert torch.allclose(state(out2)[name], (a[name] + 3 * b[name]) / 4)


@pytest.mark.parametrize("path", sorted((ROOT / "recipes/configs").glob("*/merge*.yaml")), ids=lambda p: p.name)
def test_shipped_merge_configs_parse(path):
    cfg = MergeConfig.from_yaml(path)
    assert cfg.merge_method and cfg.models
    assert "How to run" in path.read_text() or "recipes/merge.py" in path.read_text()


def test_api_drops_parameters_of_other_methods_but_refuses_typos(ckpts, tmp_path):
    # the distillation loop passes one parameter set ({beta, lambda, density}) whatever the method
    params = {"beta": 0.5, "lambda": 1.0, "density": 1.0}
    out = merge_checkpoints("ema", ckpts[:2], tmp_path / "ema", parameters=params, show_progress=False)
    a, b = state(ckpts[0]), state(ckpts[1])
    assert all(torch.allclose(v, 0.5 * a[k] + 0.5 * b[k]) for k, v in state(out).items())
    with pytest.raises(ValueError, match="unknown merge parameter 'lamda'"):
        merge_checkpoints("ema", ckpts[:2], tmp_path / "x", parameters={"lamda": 1.0}, show_progress=False)


# -- a kill in the commit window; non-finite tensors -------------------------------------------------------------


def _strays(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != "out")


@pytest.mark.parametrize("kill", ["before_first_rename", "after_first_rename", "while_removing_old"])
def test_killed_commit_is_recovered_or_removed_at_the_next_start(ckpts, tmp_path, kill):
    """An overwrite swaps out -> .out.old-PID, .out.partial-PID -> out, then removes the old one. A kill at each
    point leaves the old output (restored) or the new one (kept), never neither; the next start removes the rest."""
    out = tmp_path / "out"
    old = (merge_checkpoints("linear", ckpts[:2], out, show_progress=False) / "model.safetensors").read_bytes()
    script = textwrap.dedent(
        f"""
        import os, shutil
        from train.merging import api
        renames, real_rename, real_rmtree = [0], os.rename, shutil.rmtree
        def rename(src, dst):
            renames[0] += 1
            if {kill!r} == "before_first_rename" or ({kill!r} == "after_first_rename" and renames[0] == 2):
                os._exit(137)  # no cleanup handlers run
            return real_rename(src, dst)
        def rmtree(path, *a, **k):
            if {kill!r} == "while_removing_old" and ".old-" in str(path):
                os.remove(os.path.join(path, "config.json"))  # half removed
                os._exit(137)
            return real_rmtree(path, *a, **k)
        os.rename, shutil.rmtree = rename, rmtree
        api.merge_checkpoints("linear", {[str(p) for p in ckpts]!r}, {str(out)!r}, overwrite=True, show_progress=False)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 137, proc.stderr
    assert _strays(tmp_path)  # the kill left something behind
    # The next start, before it refuses to replace the output, restores or removes the leftovers.
    with pytest.raises(FileExistsError, match="overwrite"):
        merge_checkpoints("linear", ckpts, out, show_progress=False)
    assert _strays(tmp_path) == []
    survivor = (out / "model.safetensors").read_bytes()
    assert survivor == old if kill != "while_removing_old" else survivor != old  # complete either way
    assert json.loads((out / "merge_manifest.json").read_text())["merge_method"] == "linear"
    new = merge_checkpoints("linear", ckpts, out, overwrite=True, show_progress=False)
    assert _strays(tmp_path) == [] and (new / "model.safetensors").is_file()


def _with_nan(src: Path, dst: Path, name: str, value: float = float("nan")) -> Path:
    shutil.copytree(src, dst)
    sd = state(dst)
    sd[name] = sd[name].clone()
    sd[name].view(-1)[3] = value
    save_file(sd, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def test_non_finite_inputs_are_refused_unless_allowed(ckpts, tmp_path):
    name = "model.layers.0.mlp.up_proj.weight"
    bad = _with_nan(ckpts[1], tmp_path / "bad", name)
    message = rf"{bad}.*model\.safetensors.*tensor '{name}' has 1 non-finite.*allow_non_finite"
    with pytest.raises(MergeError, match=message):
        merge_checkpoints("linear", [ckpts[0], bad], tmp_path / "out", show_progress=False)
    assert _strays(tmp_path) == ["bad"]  # nothing written
    out = merge_checkpoints("linear", [ckpts[0], bad], tmp_path / "out", allow_non_finite=True, show_progress=False)
    assert torch.isnan(state(out)[name]).sum() == 1


def test_non_finite_output_is_refused(ckpts, tmp_path):
    """Finite inputs can still give an infinite output (a cast that overflows): the merge checks what it writes."""
    name = "model.norm.weight"
    big = _with_nan(ckpts[1], tmp_path / "big", name, value=1e6)  # finite in float32, inf in float16
    with pytest.raises(MergeError, match=rf"output tensor '{name}'.*non-finite"):
        merge_checkpoints("linear", [ckpts[0], big], tmp_path / "out", out_dtype="float16", show_progress=False)
    assert not (tmp_path / "out").exists()


def test_merge_recipe_fails_on_nan_input(ckpts, tmp_path):
    bad = _with_nan(ckpts[1], tmp_path / "bad", "model.norm.weight")
    script = ROOT / "recipes" / "merge.py"
    models = f"[{{model: {ckpts[0]}, parameters: {{weight: 0.5}}}}, {{model: {bad}, parameters: {{weight: 0.5}}}}]"
    args = ["--merge_method", "linear", "--models", models, "--out", str(tmp_path / "out"), "--show_progress", "false"]
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode != 0 and "non-finite" in proc.stderr and not (tmp_path / "out").exists()
    proc = subprocess.run([sys.executable, str(script), *args, "--allow_non_finite", "true"], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)  # fmt: skip
    assert proc.returncode == 0 and torch.isnan(state(tmp_path / "out")["model.norm.weight"]).any()
