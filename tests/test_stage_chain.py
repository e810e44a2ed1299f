"""Every embedded-7b stage reads a model and data that an earlier stage writes, or that the user brings
(train/core/chain.py, shared with scripts/preflight.py)."""

from __future__ import annotations

from pathlib import Path

import yaml

from train.core.chain import ORDERS, SCRIPT_STEPS, Step, check_chain, load_chain, recipe_outputs
from train.distill.loop import iteration_dir

ROOT = Path(__file__).resolve().parents[1]
SCALE = ROOT / "recipes" / "configs" / "embedded-7b"


def test_every_embedded_7b_input_is_written_by_an_earlier_stage_or_is_the_users():
    steps = load_chain(SCALE)
    assert [s.name for s in steps] == list(ORDERS["embedded-7b"])
    links = check_chain(steps)
    broken = [f"{ln.step}.{ln.key} = {ln.path}: {ln.problem}" for ln in links if ln.problem]
    assert not broken, "\n".join(broken)
    # Only the first model-reading stage starts from outside the chain (the user's base), and it is SFT's.
    user_models = [ln for ln in links if ln.kind == "model" and ln.producer is None]
    assert [(ln.step, ln.path) for ln in user_models] == [("sft", "/models/base-7b")]
    # Everything under outputs/ is produced; the user's data are prompt sets under data/.
    for ln in links:
        assert ln.producer or not ln.path.startswith("outputs/"), ln
        assert ln.producer or ln.kind == "model" or ln.path.startswith("data/"), ln
    by = {(ln.step, ln.key): ln.producer for ln in links}
    assert by[("distill", "model_name_or_path")] == "sft"
    assert by[("grpo", "model_name_or_path")] == by[("grpo_async", "model_name_or_path")] == "distill"
    assert by[("dual_system", "model_name_or_path")] == "grpo"
    assert by[("dual_system", "fusion_file")] == "fusion" and by[("sft", "train_files")] == "verify"


def test_distills_final_model_is_the_folder_the_recipe_writes(tmp_path):
    cfg = yaml.safe_load((SCALE / "distill.yaml").read_text())
    final = recipe_outputs("distill", cfg)[0]
    # recipes/distill.py writes final.json {"model": iteration_dir(output_dir, iterations - 1) / "model"}.
    assert final == str(iteration_dir(Path(cfg["output_dir"]), cfg["iterations"] - 1) / "model")
    grpo = yaml.safe_load((SCALE / "grpo.yaml").read_text())
    assert grpo["model_name_or_path"] == final
    # A LoRA run's downstream model is the merged folder; merge writes its `out`.
    assert recipe_outputs("sft", {"output_dir": "o", "use_peft": True}) == ["o/merged"]
    assert recipe_outputs("sft", {"output_dir": "o", "use_peft": True, "merge_lora": False}) == ["o"]
    assert recipe_outputs("merge", {"out": "o/merged"}) == ["o/merged"]
    merge = next(s for s in load_chain(SCALE) if s.name == "merge")
    assert merge.models_out == ["outputs/embedded-7b/merged-iter2"]  # its header's --out
    assert "--out outputs/embedded-7b/merged-iter2" in (SCALE / "merge.yaml").read_text()


def test_the_broken_chains_of_the_issue_are_caught():
    """The two paths issue #13 found: grpo from distill's output_dir, dual_system from a stage1 nobody writes."""
    distill = Step("distill", "distill", None, {"model_name_or_path": "/models/base"}, {},
                   recipe_outputs("distill", {"output_dir": "outputs/x/distill", "iterations": 3}))  # fmt: skip
    grpo = Step("grpo", "grpo", None, {"model_name_or_path": "outputs/x/distill"}, {}, ["outputs/x/grpo"])
    dual = Step("dual_system", "dual_system", None, {"model_name_or_path": "outputs/x/stage1"}, {}, ["outputs/x/d"])
    hub = Step("late", "sft", None, {"model_name_or_path": "org/another-model"}, {}, ["outputs/x/late"])
    problems = {ln.step: ln.problem for ln in check_chain([distill, grpo, dual, hub]) if ln.problem}
    assert problems["grpo"] == (
        "written by no earlier step (not a model folder; distill writes outputs/x/distill/iteration_2/model)"
    )
    assert problems["dual_system"] == "written by no earlier step"
    assert problems["late"] == "a model from outside the chain after the user's base"
    # Order matters: a stage cannot read what a later stage writes.
    early = Step("early", "sft", None, {}, {"train_files": ["outputs/x/grpo"]}, [])
    assert [ln.problem for ln in check_chain([distill, early, grpo]) if ln.step == "early"] == [
        "written by no earlier step"
    ]


def test_script_steps_match_the_commands_in_the_yaml_headers():
    """The data-building scripts have no YAML; their paths in chain.py are the ones the headers tell users to run."""
    headers = "\n".join(p.read_text() for p in SCALE.glob("*.yaml"))
    for step in SCRIPT_STEPS["embedded-7b"].values():
        assert step.command.split()[0] in headers, step.name
        for path in [*step.models_in.values(), *(p for ps in step.data_in.values() for p in ps), *step.data_out]:
            folder = path.rsplit("/", 1)[0] if path.endswith("fusion.jsonl") else path  # --out names the folder
            assert folder in headers, (step.name, path)
