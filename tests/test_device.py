"""A recipe's last call: every process waits for the others, then the process group is torn down."""

import subprocess
import sys
import time

import torch

from train.core.device import close_distributed

RANK = """
import sys, time
import torch.distributed as dist
from train.core.device import close_distributed
rank, store, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
dist.init_process_group("gloo", init_method="file://" + store, rank=rank, world_size=2)
if rank == 0:
    time.sleep(1.5)  # rank 0 still saving
    open(out, "w").write("saved")
close_distributed()
print(f"{rank} {dist.is_initialized()} {time.time()}")
"""


def test_the_first_process_done_waits_for_the_others_and_the_group_is_closed(tmp_path):
    store, out = tmp_path / "store", tmp_path / "saved"
    procs = [subprocess.Popen([sys.executable, "-c", RANK, str(r), str(store), str(out)], stdout=subprocess.PIPE,
                              text=True) for r in (0, 1)]  # fmt: skip
    lines = [p.communicate(timeout=120)[0].split() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert [line[:2] for line in lines] == [["0", "False"], ["1", "False"]]
    assert float(lines[1][2]) >= out.stat().st_mtime - 0.05  # rank 1 left after rank 0 had saved


def test_without_a_process_group_it_does_nothing():
    assert not torch.distributed.is_initialized()
    began = time.perf_counter()
    close_distributed()
    assert time.perf_counter() - began < 1.0
