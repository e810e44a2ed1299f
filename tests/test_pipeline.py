"""recipes/pipeline.py: the plan chains each stage's inputs from the manifests of the stages before it, a finished
stage is skipped, --from/--only pick stages, a bad config is an error naming file and key; one quick end-to-end run
writes the summary, the report and a model card, and its final model loads and renders all three modes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml
from conftest import load_script

from train.pipeline.config import PipelineConfigError, WorldConfig, load_pipeline
from train.pipeline.manifests import STAGE_MANIFEST
from train.pipeline.plan import build_plan, cli_args, run_step, select
from train.pipeline.world import ensure_world

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes/configs/tiny/pipeline.yaml"
EMBEDDED = ROOT / "recipes/configs/embedded-7b/pipeline.yaml"
STAGES = ["base", "distill", "grpo", "dual_system"]


@pytest.fixture(scope="module")
def pipeline():
    return load_script("recipes/pipeline.py")


def dry_run(pipeline, capsys, *args: str) -> str:
    pipeline.main(["--dry-run", *args])
    return capsys.readouterr().out


def inputs_of(plan: str) -> dict[str, dict[str, str]]:
    """Stage name -> {recipe key: printed value} from the printed plan."""
    out: dict[str, dict[str, str]] = {}
    stage = None
    for line in plan.splitlines():
        if line.startswith("[") and "] " in line:
            stage = line.split("] ", 1)[1].split(" ")[0]
            out[stage] = {}
        elif line.strip().startswith("input ") and stage:
            key, rest = line.strip()[len("input") :].strip().split(" = ", 1)
            out[stage][key] = rest.split("  <- ")[0]
    return out


# ----------------------------------------------------------------------------------------------------- the plan


def test_tiny_dry_run_chains_every_stage_from_the_one_before(pipeline, capsys, tmp_path):
    plan = dry_run(pipeline, capsys, "--config", str(TINY), "--run_dir", str(tmp_path))
    inputs = inputs_of(plan)
    assert list(inputs) == STAGES
    assert inputs["base"]["model_name_or_path"] == str(tmp_path / "world" / "model")
    assert inputs["distill"]["model_name_or_path"] == str(tmp_path / "base")
    assert inputs["grpo"]["model_name_or_path"] == f"{tmp_path / 'distill'}/final.json -> model"
    assert inputs["dual_system"]["model_name_or_path"] == str(tmp_path / "grpo")
    assert inputs["distill"]["train_file"] == str(tmp_path / "world/data/pool.jsonl")
    assert "(not found here)" not in plan  # every input is the world's or an earlier stage's
    # Stages 1a/1b and the base on one process; Stage 2 on two data-parallel CPU processes (its own config).
    assert plan.count("accelerate.commands.launch --config_file recipes/accelerate/cpu.yaml") == 3
    dual = next(line for line in plan.splitlines() if "recipes/dual_system.py" in line)
    assert "--config_file recipes/accelerate/cpu_ddp.yaml" in dual and "ACCELERATE_USE_CPU=true" in dual
    assert "--per_device_train_batch_size 32" in dual  # 2 x 32: the global batch of 64
    grpo = next(line for line in plan.splitlines() if "recipes/grpo.py" in line)
    assert "--config recipes/configs/tiny/grpo_arithmetic.yaml" in grpo and "--max_steps" not in grpo  # tuned 60
    # One process of two threads before Stage 2 (the stage's env over the pipeline's); two of one thread in it.
    launches = [line for line in plan.splitlines() if "accelerate.commands.launch" in line]
    assert ["OMP_NUM_THREADS=2" in line for line in launches] == [True, True, True, False]
    assert "OMP_NUM_THREADS=1" in dual and "PYTHONHASHSEED=0" in dual
    assert not any(tmp_path.iterdir())  # a dry run writes nothing


def test_embedded_dry_run_prints_the_full_chained_plan(pipeline, capsys):
    plan = dry_run(pipeline, capsys, "--config", str(EMBEDDED))
    inputs = inputs_of(plan)
    run = ROOT / "outputs/embedded-7b/pipeline"
    assert list(inputs) == ["distill", "grpo", "dual_system"]
    assert inputs["distill"]["model_name_or_path"] == "FreedomIntelligence/openPangu-Embedded-7B"
    assert inputs["grpo"]["model_name_or_path"] == f"{run / 'distill'}/final.json -> model"
    assert inputs["dual_system"]["model_name_or_path"] == str(run / "grpo")
    assert plan.count("--config_file recipes/accelerate/zero3.yaml") == 3
    assert "--fusion_file ''" in plan  # the recipe labels with the GRPO model, not a prebuilt file
    assert plan.count("    memory ") == 3 and plan.count("    output ") == 3
    # The data: the hub sets are written into the run by its data step; only the user's RL files are not made.
    assert inputs["distill"]["train_file"] == str(run / "data/pool.jsonl")
    assert "(made by data (open-r1/OpenR1-Math-220k))" in plan and "(made by data (HuggingFaceH4/MATH-500))" in plan
    assert plan.splitlines()[-1] == (
        "To provide before running (no stage or data set makes them): data/rl/code.jsonl, data/rl/general.jsonl"
    )
    # openPangu's own modelling code, and the pipeline's seed for distillation's draw, reach every stage.
    assert plan.count("--trust_remote_code true") == 3 and plan.count("--selection_seed 0") == 1


def test_embedded_dry_run_estimates_every_stage_for_the_base_models_config(pipeline, capsys, tmp_path):
    """With the base model's config.json (openPangu-Embedded-7B's shape, by hand) the plan carries the memory
    preflight of every stage: its recipe YAML with the pipeline's overrides, under zero3 on 8 x 80 GB. (The
    verdicts are the estimator's: distillation's transformers evaluation batch, 64 x 9,216 tokens of KV cache,
    does not fit as configured.)"""
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_type": "pangu_embedded", "num_hidden_layers": 34, "hidden_size": 4096,
                                  "intermediate_size": 12800, "num_attention_heads": 32, "num_key_value_heads": 8,
                                  "vocab_size": 153376, "tie_word_embeddings": False}))  # fmt: skip
    raw = yaml.safe_load(EMBEDDED.read_text())
    raw["preflight"]["model_config"] = str(config)
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(raw))
    plan = dry_run(pipeline, capsys, "--config", str(path))
    memory = [line for line in plan.splitlines() if line.startswith("    memory ")]
    assert len(memory) == 3 and all(" fits (peak " in m or "DOES NOT FIT" in m for m in memory), memory
    assert plan.count("8.03B parameters, 8 device(s) of 80 GB") == 3 and plan.count("verdict: ") == 3
    assert "| **training peak** |" in plan


def test_from_and_only_pick_stages(pipeline, capsys, tmp_path):
    plan = dry_run(pipeline, capsys, "--config", str(TINY), "--run_dir", str(tmp_path), "--from", "grpo")
    assert list(inputs_of(plan)) == ["grpo", "dual_system"]
    plan = dry_run(pipeline, capsys, "--config", str(TINY), "--run_dir", str(tmp_path), "--only", "distill")
    assert list(inputs_of(plan)) == ["distill"]
    with pytest.raises(PipelineConfigError, match="no stage 'rl'; stages: base, distill, grpo, dual_system"):
        pipeline.main(["--config", str(TINY), "--dry-run", "--only", "rl"])


def test_quick_lays_its_overrides_over_the_stages(tmp_path):
    cfg = load_pipeline(TINY, quick=True)
    assert cfg.world.n_train == 300 and cfg.run_dir == "outputs/demo-quick"
    assert cfg.stage("grpo").overrides["max_steps"] == 2
    assert cfg.stage("grpo").config == "recipes/configs/tiny/grpo_arithmetic.yaml"  # kept, not replaced
    assert cfg.stage("base").overrides["disable_tqdm"] is True  # mappings merge key by key
    assert "max_steps" not in load_pipeline(TINY).stage("grpo").overrides  # the full run: the YAML's tuned 60
    # the quick env merges over the pipeline's: one thread everywhere, the rest kept, Stage 2's own env still applied
    envs = [step.env for step in build_plan(cfg, tmp_path, ROOT / "recipes")]
    assert [e["OMP_NUM_THREADS"] for e in envs] == ["1"] * 4
    assert all(e["OMP_WAIT_POLICY"] == "passive" and e["ACCELERATE_USE_CPU"] == "true" for e in envs)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c.update(seeds=1), r"unknown key 'seeds'; did you mean 'seed'\?"),
        (lambda c: c["stages"][1].update(start="grpo"), r"stage 'distill', key 'start': 'grpo' is not an earlier"),
        (lambda c: c["stages"][2]["data"].update(train_files="prompts"), r"key 'data.train_files': no data named"),
        (lambda c: c["stages"][0].update(recipe="dpo"), r"stage 'base', key 'recipe': 'dpo' is not one of"),
        (lambda c: c["world"].update(n_train="many"), r"world.n_train: expected int"),
        (lambda c: c["stages"][0].pop("config"), r"stages\[0\]: missing required key 'config'"),
    ],
)
def test_a_bad_config_names_the_file_and_the_key(tmp_path, edit, message):
    raw = yaml.safe_load(TINY.read_text())
    edit(raw)
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(PipelineConfigError, match=message) as err:
        load_pipeline(path)
    assert str(path) in str(err.value)


def test_overrides_go_on_the_command_line_as_the_recipes_parse_them():
    assert cli_args("use_peft", True) == ["--use_peft", "true"]
    assert cli_args("train_files", ["a", "b"]) == ["--train_files", "a", "b"]
    assert cli_args("mars", {"normalize": False}) == ["--mars", '{"normalize": false}']
    assert cli_args("fusion_file", None) == ["--fusion_file", ""]
    assert cli_args("learning_rate", 1e-3) == ["--learning_rate", "0.001"]


# ------------------------------------------------------------------------------------ manifests and skipping


def test_a_finished_stage_is_skipped_and_hands_its_model_on(tmp_path, tiny_model_dir):
    cfg = load_pipeline(TINY, run_dir=str(tmp_path))
    # base finished (a saved model and the pipeline's manifest); distill finished (final.json names iteration 1).
    shutil.copytree(tiny_model_dir, tmp_path / "base")
    (tmp_path / "base" / STAGE_MANIFEST).write_text(json.dumps({"model": str(tmp_path / "base"), "seconds": 1.0}))
    merged = tmp_path / "distill" / "iteration_1" / "model"
    shutil.copytree(tiny_model_dir, merged)
    (tmp_path / "distill" / "final.json").write_text(json.dumps({"model": str(merged), "iterations": 2}))
    (tmp_path / "distill" / STAGE_MANIFEST).write_text(json.dumps({"model": str(merged), "seconds": 2.0}))
    steps = build_plan(cfg, tmp_path, ROOT / "recipes")
    assert [s.done is not None for s in steps] == [True, True, False, False]
    grpo = steps[2]
    assert grpo.inputs[0].value == str(merged) and grpo.inputs[0].ready
    assert grpo.command[grpo.command.index("--model_name_or_path") + 1] == str(merged)
    steps[0].command = ["false"]  # would fail if it ran
    assert run_step(steps[0], tmp_path)["seconds"] == 1.0
    assert [s.name for s in select(steps, "grpo", None)] == ["grpo", "dual_system"]


def test_a_finished_stage_with_other_settings_is_refused_not_skipped(tmp_path, tiny_model_dir):
    cfg = load_pipeline(TINY, run_dir=str(tmp_path))
    settings = build_plan(cfg, tmp_path, ROOT / "recipes")[0].settings
    shutil.copytree(tiny_model_dir, tmp_path / "base")
    manifest = {"model": str(tmp_path / "base"), "seconds": 1.0, "settings": settings}
    (tmp_path / "base" / STAGE_MANIFEST).write_text(json.dumps(manifest))
    assert build_plan(cfg, tmp_path, ROOT / "recipes")[0].done is not None  # same settings: skipped
    cfg.stages[0].overrides["max_steps"] = 301
    with pytest.raises(PipelineConfigError, match=r"base/pipeline_stage.json: stage 'base' .*\(overrides changed"):
        build_plan(cfg, tmp_path, ROOT / "recipes")
    del manifest["settings"]  # a manifest from before settings were recorded is not checked
    (tmp_path / "base" / STAGE_MANIFEST).write_text(json.dumps(manifest))
    assert build_plan(cfg, tmp_path, ROOT / "recipes")[0].done is not None


def test_a_world_built_with_another_config_is_refused(tmp_path):
    manifest = tmp_path / "world.json"
    recorded = {"files": {}, "think_format": "qwen3", "seed": 0, "seconds": 3.0}
    manifest.write_text(json.dumps({**recorded, "config": asdict(WorldConfig(word_tokens=True))}))
    assert ensure_world(tmp_path, WorldConfig(word_tokens=True), "qwen3", 0) == 3.0
    with pytest.raises(ValueError, match=r"world.json: this run's world was built with word_tokens True, not False"):
        ensure_world(tmp_path, WorldConfig(), "qwen3", 0)
    with pytest.raises(ValueError, match="n_train 6000, not 10"):
        ensure_world(tmp_path, WorldConfig(word_tokens=True, n_train=10), "qwen3", 0)
    manifest.write_text(json.dumps(recorded))  # recorded before the config was: one token per character
    assert ensure_world(tmp_path, WorldConfig(), "qwen3", 0) == 3.0
    with pytest.raises(ValueError, match="word_tokens False, not True"):
        ensure_world(tmp_path, WorldConfig(word_tokens=True), "qwen3", 0)


def test_a_stage_whose_recipe_saved_nothing_is_not_finished(tmp_path, tiny_model_dir):
    cfg = load_pipeline(TINY, run_dir=str(tmp_path))
    shutil.copytree(tiny_model_dir, tmp_path / "world" / "model")
    (tmp_path / "world" / "data").mkdir()
    (tmp_path / "world" / "data" / "warmup.jsonl").write_text("")
    step = build_plan(cfg, tmp_path, ROOT / "recipes")[0]
    step.command = [sys.executable, "-c", "pass"]  # exits 0 without saving a model
    with pytest.raises(RuntimeError, match="exited without saving a model"):
        run_step(step, tmp_path)
    assert not (tmp_path / "base" / STAGE_MANIFEST).exists()


# --------------------------------------------------------------------------------------- one quick run, end to end


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("pipeline-quick")
    cmd = [sys.executable, "recipes/pipeline.py", "--config", str(TINY), "--quick", "--run_dir", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, proc.stdout


def test_quick_run_chains_the_stages_through_their_manifests(quick_run):
    out, _ = quick_run
    manifests = {s: json.loads((out / s / STAGE_MANIFEST).read_text()) for s in STAGES}
    assert manifests["distill"]["model"] == json.loads((out / "distill" / "final.json").read_text())["model"]
    for before, after in zip(STAGES, STAGES[1:]):
        assert manifests[after]["inputs"]["model_name_or_path"] == manifests[before]["model"]
        assert manifests[after]["seconds"] > 0
    assert manifests["grpo"]["inputs"]["train_files"] == str(out / "world/data/rl_prompts.jsonl")
    assert manifests["dual_system"]["settings"]["overrides"]["phase2_steps"] == 2  # --quick's, recorded
    assert json.loads((out / "world/world.json").read_text())["config"]["word_tokens"] is True


def test_quick_run_writes_the_summary_report_and_model_card(quick_run):
    out, stdout = quick_run
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["stages"]) == STAGES
    assert set(summary["stages"]["dual_system"]["modes"]) == {"fast", "slow", "auto"}
    assert set(summary["stages"]["grpo"]["modes"]) == {"slow"}  # slow-only models: no wasted fast/auto runs
    assert summary["stages"]["grpo"]["sampled_hard"]["k"] == 2
    assert {c["claim"].split(" (")[0] for c in summary["claims"]} >= {"/no_think compliance >= 99%"}
    table = (out / "summary.md").read_text()
    assert "| 2 dual system |" in table and "slow L3 sampled" in table and " s |" not in table  # no wall time
    assert table in stdout
    report = (out / "report.md").read_text()
    for section in ("## Summary", "## Wall time per stage", "## Accuracy and mean tokens per mode and difficulty",
                    "## Accuracy against tokens", "## Training curves", "## Commands"):  # fmt: skip
        assert section in report, section
    assert (out / "accuracy_tokens.png").stat().st_size > 0 and (out / "training_curves.png").stat().st_size > 0
    card = (out / "dual_system" / "README.md").read_text()
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["library_name"] == "transformers" and "dual-system" in meta["tags"]
    for section in ("## Modes", "## Evaluation", "## Data and configs", "/no_think", "/auto_think", "<think>"):
        assert section in card, section
    assert "recipes/configs/tiny/grpo_arithmetic.yaml" in card


def test_quick_run_writes_every_reply_of_its_evaluations(quick_run):
    out, _ = quick_run
    summary = json.loads((out / "summary.json").read_text())
    n_test = len((out / "world" / "data" / "test.jsonl").read_text().splitlines())
    for stage in STAGES:
        rows = [json.loads(line) for line in (out / "eval" / f"{stage}.generations.jsonl").read_text().splitlines()]
        modes = set(summary["stages"][stage]["modes"])
        assert sorted({r["mode"] for r in rows}) == sorted(modes) and len(rows) == n_test * len(modes)
        assert {"prompt", "reference", "text", "num_tokens", "truncated", "correct", "reply_mode"} <= set(rows[0])
        sampled = (out / "eval" / f"{stage}.sampled.jsonl").read_text().splitlines()
        assert len(sampled) == 2 * n_test // 3  # k = 2 replies to each level-3 problem, a third of the test set


@pytest.mark.parametrize("stage", STAGES)
def test_every_stages_model_loads_and_renders_every_mode(quick_run, stage):
    """Every model folder the pipeline hands on (the manifests' ``model``), not only the final one, is a plain
    transformers checkpoint whose template renders the three modes."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _ = quick_run
    folder = Path(json.loads((out / stage / STAGE_MANIFEST).read_text())["model"])
    model = AutoModelForCausalLM.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    assert model.config.vocab_size >= len(tok)
    for tag in ("/no_think", "/think", "/auto_think"):
        text = tok.apply_chat_template([{"role": "user", "content": f"Compute 1+2. {tag}"}], tokenize=False,
                                       add_generation_prompt=True)  # fmt: skip
        assert text.rstrip().endswith("assistant") or "<think>" in text, text
        assert tag in text
        assert tag in tok.convert_ids_to_tokens(tok(text)["input_ids"])  # the world's word_tokens: one token
    fast = tok.apply_chat_template([{"role": "user", "content": "Compute 1+2."}], tokenize=False,
                                   add_generation_prompt=True, enable_thinking=False)  # fmt: skip
    assert "<think>\n\n</think>" in fast


def test_a_rerun_skips_every_stage_and_prints_the_same_summary(quick_run):
    out, _ = quick_run
    before = {p: p.stat().st_mtime_ns for p in out.rglob("model.safetensors")}
    scored = {p: p.stat().st_mtime_ns for p in (out / "eval").glob("*.json") if p.stem != "base"}
    table = (out / "summary.md").read_text()
    (out / "eval" / "base.generations.jsonl").unlink()  # scores without their replies: evaluated again
    cmd = [sys.executable, "recipes/pipeline.py", "--config", str(TINY), "--quick", "--run_dir", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stderr.count("skip (done)") == 4
    assert {p: p.stat().st_mtime_ns for p in out.rglob("model.safetensors")} == before
    assert (out / "summary.md").read_text() == table
    assert (out / "eval" / "base.generations.jsonl").exists()
    # The other stages' scores are reused: the model card written into the final folder is not a new model.
    assert {p: p.stat().st_mtime_ns for p in scored} == scored and len(scored) == 3
    refused = subprocess.run(cmd + ["--think_format", "pangu"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and "built with think_format 'qwen3'" in refused.stderr
