"""The accelerate configs in recipes/accelerate: accelerate's own launcher accepts them and turns them into the
environment the training processes read, and cpu_ddp.yaml really starts two gloo-connected CPU processes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from unittest import mock

import pytest
import yaml
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

CONFIG_DIR = Path(__file__).resolve().parents[1] / "recipes" / "accelerate"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))
EXPECTED = {
    # name: (distributed_type, num_processes, num_machines, mixed_precision)
    "cpu": (DistributedType.NO, 1, 1, "no"),
    "cpu_ddp": (DistributedType.MULTI_GPU, 2, 1, "no"),
    "ddp": (DistributedType.MULTI_GPU, 8, 1, "bf16"),
    "fsdp2": (DistributedType.FSDP, 8, 1, "bf16"),
    "zero2": (DistributedType.DEEPSPEED, 8, 1, "bf16"),
    "zero3": (DistributedType.DEEPSPEED, 8, 1, "bf16"),
    "multinode": (DistributedType.FSDP, 16, 2, "bf16"),
}
# Keys accelerate's ClusterConfig reads for a local launch; trl's configs carry the same set.
REQUIRED_KEYS = {
    "compute_environment",
    "distributed_type",
    "mixed_precision",
    "num_processes",
    "num_machines",
    "machine_rank",
    "use_cpu",
    "debug",
    "downcast_bf16",
    "rdzv_backend",
    "same_network",
    "main_training_function",
}


def _validated(path: Path, *extra: str):
    """Run accelerate's own launch-argument validation on ``path`` (what `accelerate launch` does first)."""
    args = launch_command_parser().parse_args(["--config_file", str(path), *extra, "script.py"])
    return _validate_launch_command(args)


def test_every_expected_config_exists_and_nothing_else():
    assert {p.stem for p in CONFIGS} == set(EXPECTED)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_has_header_and_required_keys(path: Path):
    text = path.read_text()
    assert text.startswith("#"), f"{path.name}: needs a header comment saying when and how to use it"
    assert "accelerate launch" in text.split("\ncompute_environment")[0], f"{path.name}: header lacks a launch line"
    raw = yaml.safe_load(text)
    missing = REQUIRED_KEYS - set(raw)
    assert not missing, f"{path.name}: missing keys {sorted(missing)}"
    assert raw["num_processes"] % raw["num_machines"] == 0, f"{path.name}: processes not divisible by machines"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_accelerate_accepts_config(path: Path):
    dist_type, nproc, nmachines, precision = EXPECTED[path.stem]
    cfg = load_config_from_file(str(path))
    assert cfg.distributed_type == dist_type
    args, _, _ = _validated(path)
    assert (args.num_processes, args.num_machines, args.mixed_precision) == (nproc, nmachines, precision)
    # the launcher branch accelerate will take: torchrun for these, the single-process launcher for cpu.yaml
    assert args.multi_gpu == (dist_type == DistributedType.MULTI_GPU)
    assert args.use_fsdp == (dist_type == DistributedType.FSDP)
    assert args.use_deepspeed == (dist_type == DistributedType.DEEPSPEED)


@pytest.mark.parametrize("name", ["fsdp2", "multinode"])
def test_fsdp_configs_build_fsdp2_full_shard_plugin(name: str):
    # port 0: pick a free port, so the launcher's port check does not depend on what else runs on this box
    args, _, _ = _validated(CONFIG_DIR / f"{name}.yaml", "--main_process_port", "0")
    env = prepare_multi_gpu_env(args)
    assert env["ACCELERATE_USE_FSDP"] == "true"
    with mock.patch.dict(os.environ, env, clear=True):
        plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2
    assert plugin.reshard_after_forward is True  # FULL_SHARD
    assert plugin.auto_wrap_policy.__name__ == "transformer_auto_wrap_policy"
    assert plugin.state_dict_type.name == "FULL_STATE_DICT"
    assert plugin.cpu_ram_efficient_loading is True


def test_multinode_placeholders_are_overridable_per_node():
    args, _, _ = _validated(CONFIG_DIR / "multinode.yaml")
    assert (args.machine_rank, args.main_process_ip) == (0, "MAIN_NODE_IP")
    node1 = ["--machine_rank", "1", "--main_process_ip", "10.1.2.3", "--main_process_port", "29555"]
    args, _, _ = _validated(CONFIG_DIR / "multinode.yaml", *node1)
    assert (args.machine_rank, args.main_process_ip) == (1, "10.1.2.3")
    env = prepare_multi_gpu_env(args)
    # torchrun gets 8 local workers on node 1 of 2, pointed at the main node
    assert (args.nproc_per_node, args.nnodes, args.node_rank) == ("8", "2", 1)
    assert args.rdzv_endpoint == "10.1.2.3:29555"
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"


@pytest.mark.parametrize("name,stage", [("zero2", "2"), ("zero3", "3")])
def test_deepspeed_configs_set_zero_stage(name: str, stage: str):
    args, defaults, _ = _validated(CONFIG_DIR / f"{name}.yaml", "--main_process_port", "0")
    # set by launch_command() just before it calls the DeepSpeed launcher
    args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
    _, env = prepare_deepspeed_cmd_env(args)
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true"
    assert env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == stage
    if stage == "3":
        assert env["ACCELERATE_DEEPSPEED_ZERO3_INIT"] == "true"
        assert env["ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL"] == "true"


PROBE = textwrap.dedent(
    """
    import sys
    import torch.distributed as dist
    from accelerate import Accelerator
    acc = Accelerator()
    ws = dist.get_world_size() if dist.is_initialized() else 1
    line = f"PROBE rank={acc.process_index} world={acc.num_processes} dist={ws} type={acc.distributed_type.value};"
    sys.stdout.write(line + "\\n")  # one write per process; the two workers share the pipe
    """
)


def _launch(config: str, script: Path, use_cpu_env: bool) -> list[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}
    if use_cpu_env:
        env["ACCELERATE_USE_CPU"] = "true"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIG_DIR / config), str(script)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # workers' output may interleave without newlines between them, hence the ';' terminator
    return sorted(re.findall(r"PROBE [^;]*", proc.stdout))


@pytest.fixture(scope="module")
def probe_script(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("probe") / "probe.py"
    path.write_text(PROBE)
    return path


def test_cpu_ddp_launches_two_gloo_processes(probe_script: Path):
    lines = _launch("cpu_ddp.yaml", probe_script, use_cpu_env=True)
    assert lines == [
        "PROBE rank=0 world=2 dist=2 type=MULTI_CPU",
        "PROBE rank=1 world=2 dist=2 type=MULTI_CPU",
    ]


def test_cpu_ddp_without_cpu_flag_is_not_data_parallel(probe_script: Path):
    # The pitfall the cpu_ddp.yaml header warns about: torchrun starts two workers, but without ACCELERATE_USE_CPU
    # each Accelerator falls back to a single-process view. If this starts failing, accelerate forwards `use_cpu`
    # now and the header's warning can go.
    lines = _launch("cpu_ddp.yaml", probe_script, use_cpu_env=False)
    assert lines == ["PROBE rank=0 world=1 dist=2 type=NO"] * 2


def test_cpu_config_launches_one_cpu_process(probe_script: Path):
    assert _launch("cpu.yaml", probe_script, use_cpu_env=False) == ["PROBE rank=0 world=1 dist=1 type=NO"]
