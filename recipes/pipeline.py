"""The whole pipeline from one YAML: base model -> Stage 1a distillation -> Stage 1b GRPO -> Stage 2 dual system.

    python recipes/pipeline.py --config recipes/configs/tiny/pipeline.yaml              # what `make demo` runs
    python recipes/pipeline.py --config recipes/configs/tiny/pipeline.yaml --quick      # a smoke run of the plumbing
    python recipes/pipeline.py --config recipes/configs/embedded-7b/pipeline.yaml --dry-run
    python recipes/pipeline.py --config ... --from grpo        # that stage and the ones after it
    python recipes/pipeline.py --config ... --only dual_system

Each stage is the real recipe (``recipes/<recipe>.py``) run under ``accelerate launch`` with the accelerate config
the pipeline names, its own YAML and the pipeline's overrides; its model is the previous stage's, read from that
stage's manifest (``final.json``, the saved folder), never typed twice (:mod:`train.pipeline.plan`). A finished
stage (``<run_dir>/<stage>/pipeline_stage.json``) is skipped; an interrupted one is rerun with the same command
and resumes from its own partial output (docs/reliability.md). A tiny config builds the arithmetic world first
(:mod:`train.pipeline.world`). After the stages: every stage's model is evaluated (cached in ``eval/``), and
``summary.md``/``summary.json`` (the same bytes for two runs with the same seed), ``report.md`` (plus wall times,
plots and commands) and the final model's ``README.md`` (a model card) are written. ``--dry-run`` prints the plan
(commands, inputs, outputs, the memory preflight where one exists) and runs nothing. Keys: docs/pipeline.md.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import torch

from train.core.cli import setup_logging
from train.core.data import read_records
from train.eval.evaluation import bucket
from train.pipeline.card import write_model_card
from train.pipeline.config import PipelineConfig, load_pipeline
from train.pipeline.data import base_think, check_stage_think, needs_think, prepare_data
from train.pipeline.evaluate import evaluate_stage
from train.pipeline.plan import base_model, build_plan, data_files, run_step, select
from train.pipeline.preflight import describe_plan
from train.pipeline.report import summary_text, write_report, write_summary
from train.pipeline.world import ensure_world

logger = logging.getLogger("recipes.pipeline")
RECIPES = Path(__file__).resolve().parent

# The config dataclass (also read by the config-validation test, with validate_config).
ARG_CLASSES = (PipelineConfig,)


def validate_config(path: str | Path) -> PipelineConfig:
    """Read and check a pipeline YAML, its --quick variant, and that every stage's recipe config exists."""
    for quick in (False, True):
        cfg = load_pipeline(path, quick=quick)
        for stage in cfg.stages:
            if not Path(stage.config).exists():
                raise FileNotFoundError(f"{path}: stage {stage.name!r}, key 'config': no file {stage.config}")
    return load_pipeline(path)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="pipeline YAML (recipes/configs/<scale>/pipeline.yaml)")
    p.add_argument("--dry-run", action="store_true", help="print the plan (commands, inputs, outputs) only")
    p.add_argument("--from", dest="start_from", metavar="STAGE", help="run this stage and the ones after it")
    p.add_argument("--only", metavar="STAGE", help="run this stage only (its inputs must exist)")
    p.add_argument("--quick", action="store_true", help="lay the config's quick: section over it (a smoke run)")
    p.add_argument("--run_dir", help="run folder (default: the config's run_dir)")
    p.add_argument("--think_format", choices=["qwen3", "pangu"], help="think delimiters of the world (tiny runs)")
    p.add_argument("--seed", type=int, help="the pipeline's seed (default: the config's)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    setup_logging()
    overrides = dict(run_dir=args.run_dir, think_format=args.think_format, seed=args.seed)
    cfg = load_pipeline(args.config, quick=args.quick, **overrides)
    run_dir = Path(cfg.run_dir).resolve()
    steps = select(build_plan(cfg, run_dir, RECIPES), args.start_from, args.only)

    # 1. The plan; a dry run stops here.
    print(describe_plan(cfg, steps, run_dir))
    if args.dry_run:
        return {"steps": [s.name for s in steps]}
    # This process evaluates, on the stages' threads. Its OpenMP runtime was loaded with torch, before the config was
    # read, so settings read only at load time (OMP_WAIT_POLICY) reach the stage processes, not this one.
    os.environ.update({k: str(v) for k, v in cfg.env.items()})
    torch.set_num_threads(int(cfg.env.get("OMP_NUM_THREADS", torch.get_num_threads())))

    # 2. Data: the arithmetic world of a tiny run (built once, seeded from the pipeline's seed), and the records of
    # every data set the data section names (read once, written to <run_dir>/data/).
    world_seconds = None
    if cfg.world is not None:
        world_seconds = ensure_world(run_dir / "world", cfg.world, cfg.think_format or "qwen3", cfg.seed)
    think = base_think(base_model(cfg, run_dir), cfg.trust_remote_code) if needs_think(cfg.data) else None
    if think is not None:
        check_stage_think(cfg.stages, think, RECIPES.parent)
    prepare_data(cfg.data, run_dir, think)

    # 3. The stages, each from the manifest of the one before (the plan is rebuilt as manifests appear).
    for name in [s.name for s in steps]:
        step = next(s for s in build_plan(cfg, run_dir, RECIPES) if s.name == name)
        run_step(step, Path.cwd())

    # 4. Evaluation of every finished stage, the summary, the report and the final model's card.
    steps = build_plan(cfg, run_dir, RECIPES)
    files = data_files(cfg, run_dir)
    test_file, stages = files[cfg.evaluation.data], {}
    for step in steps:
        if step.done is not None and step.stage.eval_modes:
            modes = step.stage.eval_modes
            stages[step.name] = evaluate_stage(step.name, step.done["model"], modes, test_file, cfg.evaluation,
                                               run_dir / "eval", cfg.seed, cfg.trust_remote_code)  # fmt: skip
    summary = summary_text(cfg, stages, [bucket(r) for r in read_records(test_file)])
    write_summary(run_dir, summary, stages, cfg)
    report = write_report(cfg, steps, stages, run_dir, summary, world_seconds)
    final = steps[-1]
    if final.done is not None:
        card = write_model_card(cfg, steps, Path(final.done["model"]), summary, base_model(cfg, run_dir), files)
        logger.info("model card: %s", card)
    print("\n" + summary + f"\nreport: {report}")
    return {"stages": stages, "summary": summary}


if __name__ == "__main__":
    main()
