"""The scale-out kit on a machine without a GPU: scripts/gpu_smoke.sh parses, its plan prints with --dry-run (and runs
nothing), and every recipe step's command-line overrides are keys its recipe accepts; the SLURM template's per-node
launch passes accelerate's validation; the Ascend NPU accelerate config loads."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_smoke.sh"


def dry_run(*args: str, out: Path) -> str:
    done = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--out", str(out), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def plan(text: str) -> dict[str, tuple[str, str, str]]:
    """step name -> (sharding, vllm, command)"""
    steps = re.findall(r"^\[\d+\] (\S+) \(sharding: (\S+), vLLM: (\S+)\)\n    \$ (.*)$", text, flags=re.M)
    return {name: (shard, vllm, cmd) for name, shard, vllm, cmd in steps}


def test_script_parses():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0


def test_dry_run_prints_every_recipe_under_zero3_and_fsdp2_with_and_without_vllm(tmp_path):
    out = tmp_path / "smoke"
    text = dry_run(out=out)
    steps = plan(text)
    assert "dry run: nothing executed" in text and f"{len(steps)} steps" in text
    assert not out.exists()  # nothing built, nothing written
    recipes = {re.search(r"recipes/(\w+)\.py", cmd).group(1) for _, _, cmd in steps.values() if "recipes/" in cmd}
    assert recipes == {"sft", "distill", "grpo", "dual_system", "merge"}
    assert {shard for shard, _, _ in steps.values()} >= {"zero3", "fsdp2", "cpu"}
    assert {name for name, (_, vllm, _) in steps.items() if vllm == "yes"} == {"distill-fsdp2-vllm", "grpo-zero3-vllm"}
    for name, (shard, _, cmd) in steps.items():
        if shard in ("zero3", "fsdp2"):
            assert f"--config_file recipes/accelerate/{shard}.yaml" in cmd and "--max_steps 1" in cmd, name
    # The model is built locally at ~0.45B parameters: 28 x (2*1024*2048 + 2*1024*1024 + 3*1024*3072) = 440M.
    assert "hidden_size=1024, num_hidden_layers=28" in steps["prepare"][2]
    assert "--use_vllm true --vllm_mode colocate" in steps["grpo-zero3-vllm"][2]


def test_filters(tmp_path):
    assert set(plan(dry_run("--no-vllm", out=tmp_path))) == {
        "prepare", "sft-zero3", "sft-fsdp2", "distill-zero3", "grpo-fsdp2", "dual_system-zero3",
        "dual_system-fsdp2", "merge",
    }  # fmt: skip
    assert set(plan(dry_run("--only", "grpo", out=tmp_path))) == {"prepare", "grpo-zero3-vllm", "grpo-fsdp2"}


@pytest.mark.parametrize("name", ["sft-zero3", "distill-fsdp2-vllm", "grpo-zero3-vllm", "dual_system-fsdp2"])
def test_overrides_are_keys_the_recipe_reads(name, tmp_path):
    """Each step's `recipes/<r>.py --config ... --key value` parses with that recipe's own parser on the CPU."""
    from train.core.cli import parse_args

    cmd = shlex.split(plan(dry_run(out=tmp_path))[name][2])
    at = next(i for i, tok in enumerate(cmd) if tok.startswith("recipes/") and tok.endswith(".py"))
    module = load_script(cmd[at])
    argv = [a for a in cmd[at + 1 :]]
    for key in ("--bf16", "--use_vllm"):  # device-bound on a CPU (bf16 mixed precision, vLLM import): checked apart
        if key in argv:
            i = argv.index(key)
            assert argv[i + 1] == "true"
            del argv[i : i + 2]
    parsed = parse_args(module.ARG_CLASSES, argv)
    training = next(p for p in parsed if hasattr(p, "max_steps"))
    assert training.max_steps == 1 and str(training.output_dir).endswith(name)


# ------------------------------------------------------------------------------- the rest of the scale-out kit

SBATCH = ROOT / "scripts" / "slurm" / "train.sbatch"


def per_node_command(node: int, *extra: str) -> list[str]:
    env = {"PATH": "/usr/bin:/bin", "DRY_RUN": "1", "SLURM_NNODES": "2", "SLURM_NODEID": str(node),
           "MASTER_ADDR": "node01", "SLURM_JOB_ID": "1234"}  # fmt: skip
    done = subprocess.run(["bash", str(SBATCH), "grpo", "recipes/configs/embedded-7b/grpo.yaml",
                           "recipes/accelerate/zero3.yaml", *extra], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "rendezvous node01:21234" in done.stdout  # 20000 + job id % 20000: one port per job
    return shlex.split(done.stdout.split("per node: ", 1)[1])


def test_slurm_template_launches_every_node_against_the_first():
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    assert subprocess.run(["bash", "-n", str(SBATCH)], capture_output=True).returncode == 0
    for node in (0, 1):
        cmd = per_node_command(node, "--learning_rate", "5e-6")
        assert cmd[:2] == ["accelerate", "launch"]
        script = cmd.index("recipes/grpo.py")
        assert cmd[script + 1 :] == ["--config", "recipes/configs/embedded-7b/grpo.yaml", "--learning_rate", "5e-6"]
        # accelerate's own validation of the launcher flags over the single-node zero3.yaml
        args, _, _ = _validate_launch_command(launch_command_parser().parse_args(cmd[2 : script + 1]))
        assert (args.num_machines, args.num_processes, args.machine_rank) == (2, 16, node)
        assert (args.main_process_ip, args.main_process_port, args.rdzv_backend) == ("node01", 21234, "static")
        assert args.use_deepspeed


def test_npu_config_is_fsdp2_for_accelerate():
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    path = ROOT / "recipes" / "accelerate" / "npu" / "fsdp2.yaml"
    cfg = load_config_from_file(str(path))
    assert cfg.distributed_type == DistributedType.FSDP and cfg.fsdp_config["fsdp_version"] == 2
    assert (cfg.num_processes, cfg.mixed_precision, cfg.use_cpu) == (8, "bf16", False)
    assert "sdpa" in path.read_text() and "vllm-ascend" in (path.parent / "README.md").read_text()
