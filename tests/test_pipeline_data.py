"""The pipeline on real data and real hardware settings: a data section entry naming a data set is written once into
the run and handed to its stage, every stage follows the pipeline's seed and trust_remote_code, the evaluation is
cached by its settings, and config mistakes are errors naming the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

import train.pipeline.data as pipeline_data
import train.pipeline.evaluate as pipeline_eval
from train.core.data import DataError, read_records, write_jsonl
from train.pipeline.config import EvalConfig, PipelineConfigError, from_mapping, load_pipeline
from train.pipeline.data import data_source_file, prepare_data
from train.pipeline.plan import build_plan

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes/configs/tiny/pipeline.yaml"
RECIPES = ROOT / "recipes"

GSM8K = [
    {"question": "Janet has 3 apples and buys 2 more. How many apples?", "answer": "3 + 2 = <<3+2=5>>5\n#### 5"},
    {"question": "A shop sold 1,200 pens and 300 more. How many?", "answer": "1200 + 300 = 1500\n#### 1,500"},
    {"question": "What is 6 times 7?", "answer": "6 * 7 = 42\n#### 42"},
]


def tiny_raw(**changes) -> dict:
    raw = yaml.safe_load(TINY.read_text())
    raw.pop("quick")
    raw.update(changes)
    return raw


def with_gsm8k(tmp_path: Path, **source) -> dict:
    """The tiny config with GRPO's prompts read from a GSM8K-schema file through its preset."""
    path = write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K)
    raw = tiny_raw(data={"gsm": {"dataset_name": str(path), "dataset_preset": "gsm8k", **source}})
    next(s for s in raw["stages"] if s["name"] == "grpo")["data"] = {"train_files": "gsm"}
    return raw


# ----------------------------------------------------------------------------------------------- data sets in


def test_a_data_set_entry_is_written_once_into_the_run_and_handed_to_its_stage(tmp_path, monkeypatch):
    cfg = from_mapping(with_gsm8k(tmp_path), "pipeline.yaml")
    run = tmp_path / "run"
    grpo = next(s for s in build_plan(cfg, run, RECIPES) if s.name == "grpo")
    (data_input,) = [i for i in grpo.inputs if i.key == "train_files"]
    assert data_input.value == str(run / "data/gsm.jsonl") and not data_input.ready
    assert data_input.producer == f"data ({tmp_path / 'gsm8k.jsonl'})" and data_input.unprovided == []
    assert grpo.command[grpo.command.index("--train_files") + 1] == str(run / "data/gsm.jsonl")

    written = prepare_data(cfg.data, run)
    records = read_records(written["gsm"])
    assert [r["answer"] for r in records] == ["5", "1500", "42"]  # the preset's #### answers, thousands unsplit
    assert all(r["task"] == "math" and r["prompt"].endswith("\\boxed{}.") for r in records)
    meta = json.loads(data_source_file(run, "gsm").with_suffix(".source.json").read_text())
    assert meta["records"] == 3 and meta["provenance"]["source"]["dataset_preset"] == "gsm8k"

    # A rerun with the same entry reads nothing; another entry behind the same name is read again.
    monkeypatch.setattr(pipeline_data, "load_source_from", lambda *a, **k: pytest.fail("read again"))
    prepare_data(cfg.data, run)
    monkeypatch.undo()
    changed = from_mapping(with_gsm8k(tmp_path, max_samples=2), "pipeline.yaml")
    assert len(read_records(prepare_data(changed.data, run)["gsm"])) == 2
    # ... and a stage finished on the first data set is not handed on as if it had trained on the second.
    assert build_plan(changed, run, RECIPES)[2].settings["data_sources"]["gsm"]["max_samples"] == 2


def test_a_column_mapping_naming_a_missing_column_names_the_column_and_the_file(tmp_path):
    cfg = from_mapping(with_gsm8k(tmp_path, column_mapping={"question": "query"}), "pipeline.yaml")
    with pytest.raises(DataError, match=r"gsm8k\.jsonl.*'query'"):
        prepare_data(cfg.data, tmp_path / "run")
    assert not (tmp_path / "run/data/gsm.jsonl").exists()  # nothing half-written


def test_data_entries_are_checked_key_by_key(tmp_path):
    raw = with_gsm8k(tmp_path)
    raw["data"]["gsm"]["dataset_nme"] = raw["data"]["gsm"].pop("dataset_name")
    with pytest.raises(
        PipelineConfigError, match=r"data\.gsm: unknown key 'dataset_nme'; did you mean 'dataset_name'"
    ):
        from_mapping(raw, "pipeline.yaml")
    with pytest.raises(PipelineConfigError, match=r"data\.gsm: expected a path, a list of paths or a data set"):
        from_mapping(tiny_raw(data={"gsm": 3}), "pipeline.yaml")


# ------------------------------------------------------------------------------------- seeds and remote code


def test_every_stage_follows_the_pipelines_seed_and_trust_remote_code(tmp_path):
    cfg = load_pipeline(TINY, seed=3, trust_remote_code=True)
    steps = build_plan(cfg, tmp_path, RECIPES)
    for step in steps:
        assert step.command[step.command.index("--seed") + 1] == "3"
        assert step.command[step.command.index("--trust_remote_code") + 1] == "true"
    distill = next(s for s in steps if s.name == "distill")
    assert distill.command[distill.command.index("--selection_seed") + 1] == "3"  # distillation's own draw too
    raw = tiny_raw()
    next(s for s in raw["stages"] if s["name"] == "distill")["overrides"]["selection_seed"] = 5
    with pytest.raises(PipelineConfigError, match=r"stage 'distill', key 'overrides.selection_seed': set by the"):
        build_plan(from_mapping(raw, "pipeline.yaml"), tmp_path, RECIPES)


# -------------------------------------------------------------------------------------------- config errors


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"preflight": {"device_gbs": 80}}, r"preflight: unknown key 'device_gbs'; did you mean 'device_gb'"),
        ({"evaluation": {"data": "heldout"}}, r"key 'evaluation.data': no data named 'heldout'"),
        ({"evaluation": {"check": "fuzzy"}}, r"key 'evaluation.check': 'fuzzy'; one of"),
    ],
)
def test_a_bad_preflight_or_evaluation_key_is_named(change, message):
    with pytest.raises(PipelineConfigError, match=message):
        from_mapping(tiny_raw(**change), "pipeline.yaml")


def test_a_merge_stage_is_refused_saying_where_merges_are_configured():
    raw = tiny_raw()
    raw["stages"].append({"name": "soup", "recipe": "merge", "config": "recipes/configs/tiny/merge_ties.yaml"})
    with pytest.raises(PipelineConfigError, match=r"'merge' is not a pipeline stage: distillation merges its"):
        from_mapping(raw, "pipeline.yaml")


# --------------------------------------------------------------------------------------------- evaluation


def test_the_evaluation_cache_is_keyed_by_its_settings_too(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(pipeline_eval, "stage_sampler", lambda *a: None)

    def fake_evaluate(model, tok, records, modes, **kw):
        calls.append(kw["max_new_tokens"])
        return {"modes": {m: {"avg@1": 1.0} for m in modes}, "prompts": {}}

    monkeypatch.setattr(pipeline_eval, "evaluate", fake_evaluate)
    monkeypatch.setattr(pipeline_eval, "write_results", lambda results, out, name: None)
    test = write_jsonl(tmp_path / "test.jsonl", [{"prompt": "Compute 1+1.", "task": "math", "answer": "2"}])

    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"1")

    def run(cfg: EvalConfig, modes: tuple[str, ...] = ("fast",)) -> dict:
        out = pipeline_eval.evaluate_stage("grpo", str(model), list(modes), str(test), cfg, tmp_path / "eval", seed=0)
        (tmp_path / "eval/grpo.generations.jsonl").touch()  # the replies the real evaluation writes
        return out

    run(EvalConfig(max_new_tokens=96))
    run(EvalConfig(max_new_tokens=96))  # the same model and settings: the cached scores
    run(EvalConfig(max_new_tokens=48))  # another budget: scored again, not the old numbers
    assert calls == [96, 48]
    write_jsonl(test, [{"prompt": "Compute 2+2.", "task": "math", "answer": "4"}])  # the same path, other records
    run(EvalConfig(max_new_tokens=48))
    assert calls == [96, 48, 48]


def test_the_summary_says_how_the_held_out_set_splits_over_levels():
    from train.pipeline.report import level_counts

    assert level_counts(["1"] * 100 + ["2"] * 100 + ["3"] * 100) == "equal parts per level"  # the tiny world's
    assert level_counts(["5", "1", "2", "2", "5", "5"]) == "per level: 1: 1, 2: 2, 5: 3"  # MATH-500's are not


@pytest.mark.parametrize(
    ("sampler_args", "message"),
    [
        (
            {"backend": "vllm", "tensor_parallel": 2},
            r"unknown key 'tensor_parallel'; did you mean 'tensor_parallel_size'",
        ),
        ({"model": "/elsewhere"}, r"'model' is set by the pipeline"),
        ({"backend": "sglang"}, r"sampler backend 'sglang'"),
    ],
)
def test_the_evaluations_sampler_keys_are_checked_before_anything_runs(sampler_args, message):
    with pytest.raises(PipelineConfigError, match=r"evaluation.sampler_args'?: " + message):
        from_mapping(tiny_raw(evaluation={"sampler_args": sampler_args}), "pipeline.yaml")


# --------------------------------------------------------------------------- the stages' own data set options

OPENR1 = {
    "problem": "Find $x$ if $2x + 3 = 13$.", "answer": "5", "solution": "$x = \\boxed{5}$", "uuid": "r1",
    "generations": ["<think>long, long way</think> $\\boxed{5}$", "<think>x=5</think> $\\boxed{5}$"],
    "correctness_math_verify": [True, True], "is_reasoning_complete": [True, True],
}  # fmt: skip


def test_distillation_reads_its_pool_and_held_out_split_from_a_data_set(tmp_path):
    """Distillation's ``dataset_name`` (the pool, through a preset) and ``dataset_eval_split`` (the held-out split of
    the same data set folder)."""
    from train.distill.config import DistillConfig
    from train.distill.stage import eval_records, read_pool

    folder = tmp_path / "openr1"
    write_jsonl(folder / "train.jsonl", [OPENR1, {**OPENR1, "uuid": "r2", "problem": "Find $y$ if $y - 1 = 4$."}])
    write_jsonl(folder / "test.jsonl", [{**OPENR1, "uuid": "t1", "problem": "Find $z$ if $3z = 15$."}])
    cfg = DistillConfig(dataset_name=str(folder), dataset_preset="openr1-math", dataset_eval_split="test")
    pool = read_pool(cfg)
    assert [r["id"] for r in pool] == ["r1", "r2"]
    assert pool[0]["response"] == OPENR1["generations"][1]  # the shortest verified teacher reply
    (held,) = eval_records(cfg)
    assert held["id"] == "t1" and held["answer"] == "5"
    mapped = DistillConfig(dataset_name=str(folder), dataset_preset="openr1-math", column_mapping={"problem": "q"})
    with pytest.raises(DataError, match=r"openr1.*'q'"):
        read_pool(mapped)


def test_the_dual_system_stage_reads_its_prompts_from_a_data_set(tmp_path):
    """Stage 2's ``dataset_name``: the prompts to label, only ``max_prompts`` rows read when it is the only source."""
    from train.dual_system.config import DualSystemConfig
    from train.dual_system.phases import prompt_records

    path = write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K)
    args = DualSystemConfig(dataset_name=str(path), dataset_preset="gsm8k", max_prompts=2)
    records = prompt_records(args)
    assert [r["answer"] for r in records] == ["5", "1500"]


def test_the_evaluation_cache_knows_the_modes_and_a_model_retrained_in_place(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(pipeline_eval, "stage_sampler", lambda *a: None)
    monkeypatch.setattr(pipeline_eval, "write_results", lambda results, out, name: None)

    def fake_evaluate(model, tok, records, modes, **kw):
        calls.append(tuple(modes))
        return {"modes": {m: {"avg@1": 1.0} for m in modes}, "prompts": {}}

    monkeypatch.setattr(pipeline_eval, "evaluate", fake_evaluate)
    test = write_jsonl(tmp_path / "test.jsonl", [{"prompt": "Compute 1+1.", "task": "math", "answer": "2"}])
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"1")

    def run(modes):
        pipeline_eval.evaluate_stage("s", str(model), modes, str(test), EvalConfig(), tmp_path / "eval", seed=0)
        (tmp_path / "eval/s.generations.jsonl").touch()

    run(["slow"])
    run(["fast", "slow"])  # a mode more: scored again, not the cached scores without it
    (model / "model.safetensors").write_bytes(b"22")  # retrained into the same folder
    run(["fast", "slow"])
    run(["fast", "slow"])
    assert calls == [("slow",), ("fast", "slow"), ("fast", "slow")]


def test_a_data_sets_replies_are_rewritten_into_the_base_models_think_format(tmp_path):
    """OpenR1's DeepSeek-R1 traces (<think>) for an openPangu base ([unused16]/[unused17]); a row whose only reply
    is the reference solution (no think block) is no teacher trace and is dropped."""
    from train.core.modes import PANGU_THINK

    no_trace = {**OPENR1, "uuid": "r2", "problem": "Find $y$.", "correctness_math_verify": [False, False]}
    nested = {**OPENR1, "uuid": "r3", "problem": "Find $z$.", "generations": ["<think>a<think>b</think></think> 5"],
              "correctness_math_verify": [True], "is_reasoning_complete": [True]}  # fmt: skip
    path = write_jsonl(tmp_path / "openr1.jsonl", [OPENR1, no_trace, nested])
    source = {"dataset_name": str(path), "dataset_preset": "openr1-math", "think_format": "qwen3"}
    cfg = from_mapping(tiny_raw(data={"pool2": source}), "pipeline.yaml")
    with pytest.raises(ValueError, match="think_format needs the base model's think format"):
        prepare_data(cfg.data, tmp_path / "run")
    (record,) = read_records(prepare_data(cfg.data, tmp_path / "run", PANGU_THINK)["pool2"])
    assert record["id"] == "r1" and record["response"] == "[unused16]x=5[unused17] $\\boxed{5}$"
    with pytest.raises(PipelineConfigError, match=r"data\.pool2\.think_format: 'r1'"):
        from_mapping(tiny_raw(data={"pool2": {**source, "think_format": "r1"}}), "pipeline.yaml")


def test_an_edited_local_data_file_is_read_again(tmp_path):
    cfg = from_mapping(with_gsm8k(tmp_path), "pipeline.yaml")
    assert len(read_records(prepare_data(cfg.data, tmp_path / "run")["gsm"])) == 3
    write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K[:1])  # the same entry, the file edited
    assert len(read_records(prepare_data(cfg.data, tmp_path / "run")["gsm"])) == 1


def test_config_booleans_and_the_evaluation_backend_are_checked():
    with pytest.raises(PipelineConfigError, match=r"trust_remote_code: expected bool, got 'false'"):
        from_mapping(tiny_raw(trust_remote_code="false"), "pipeline.yaml")  # a quoted YAML false is truthy
    with pytest.raises(PipelineConfigError, match=r"backend 'endpoint' cannot load each stage's model"):
        from_mapping(tiny_raw(evaluation={"sampler_args": {"backend": "endpoint"}}), "pipeline.yaml")
    with pytest.raises(PipelineConfigError, match=r"dtype 'bf16'; one of"):
        from_mapping(tiny_raw(evaluation={"sampler_args": {"dtype": "bf16"}}), "pipeline.yaml")


def test_the_tiny_evaluation_runs_on_the_cpu_in_float32_on_any_machine(tiny_model_dir, monkeypatch):
    """Its stages train on the CPU (ACCELERATE_USE_CPU); a GPU present must not change its numbers."""
    import train.core.loading as loading

    monkeypatch.setattr(loading, "accelerator_device", lambda: pytest.fail("the evaluation asked for the accelerator"))
    sampler = pipeline_eval.stage_sampler(str(tiny_model_dir), load_pipeline(TINY).evaluation)
    param = next(sampler.model.parameters())
    assert (param.device.type, param.dtype) == ("cpu", torch.float32)


def test_a_stage_naming_other_think_delimiters_than_the_base_is_refused():
    """The 7B stages name openPangu's delimiters; a base whose tokenizer uses <think> would train and reward another
    format than the data was rewritten into."""
    from train.core.modes import PANGU_THINK, QWEN3_THINK
    from train.pipeline.data import check_stage_think

    stages = load_pipeline(ROOT / "recipes/configs/embedded-7b/pipeline.yaml").stages
    check_stage_think(stages, PANGU_THINK, ROOT)  # openPangu's tokenizer: every stage agrees
    with pytest.raises(ValueError, match=r"stage 'distill' .*'\[unused16\]'/'\[unused17\]', but the base"):
        check_stage_think(stages, QWEN3_THINK, ROOT)
