"""DistributedDataParallel under torchrun, 2 CPU processes on gloo: the processes keep
identical weights, rank 0 alone writes the run directory, and a run stopped and resumed
under torchrun reaches the weights of an uninterrupted one."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from aigc_fast.train.distributed import _wait_until_released

WORKER = Path(__file__).with_name("ddp_worker.py")

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")


def torchrun(out, max_steps, resume=False):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(WORKER), str(out), str(max_steps), "resume" if resume else "fresh"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_two_gloo_processes_train_one_model_and_resume_exactly(tmp_path):
    whole = torchrun(tmp_path / "whole", 10)  # 40 images, global batch 8: 5 steps per epoch, 2 epochs
    assert [r["world"] for r in whole] == [2, 2] and whole[0]["step"] == 10
    assert whole[0]["weights"] == whole[1]["weights"]  # gradients averaged, same update everywhere
    rows = (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == list(range(1, 11))  # one writer: rank 0
    torchrun(tmp_path / "split", 3)
    resumed = torchrun(tmp_path / "split", 10, resume=True)
    assert resumed[0]["weights"] == whole[0]["weights"] and resumed[1]["weights"] == whole[1]["weights"]


def test_the_command_under_torchrun_trains_and_exits_cleanly(tmp_path):
    """`torchrun -m aigc_fast train` as the README shows it: both processes exit 0 (the
    command destroys the process group at the end), rank 0 alone reports and writes."""
    pytest.importorskip("sklearn")  # the "digits" data
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "aigc_fast",
           "train", "gan", "--data", "digits", "--image-size", "16", "--batch-size", "8", "--ngf", "4", "--ndf", "4",
           "--nz", "8", "--max-steps", "3", "--log-every", "1", "--sample-every", "1000", "--no-progress",
           "--out-dir", str(out)]
    # Run from tmp_path: from the repository root, python -m would put the source tree
    # (no compiled kernels) ahead of the installed package.
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=tmp_path, capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("run directory:") == 1  # printed by rank 0 only
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [1, 2, 3]


def test_close_waits_until_no_cpp_code_holds_the_last_collectives_tensors():
    """What Group.close() does before destroying the process group (an exiting process
    whose gloo thread let go of a tensor later aborted, 1 run in ~10): here autograd's
    graph stands in for the collective's work item that holds the tensors in C++."""
    probe = torch.empty(1)
    before = sys.getrefcount(probe)
    view = probe.view(-1)  # holds its base in C++
    if sys.getrefcount(probe) == before:
        pytest.skip(f"torch {torch.__version__}'s reference counts do not show C++ holders (nothing to wait for)")
    del view
    held = [torch.randn(3, requires_grad=True), torch.randn(3)]
    assert _wait_until_released(held)
    product = held[0] * held[1]  # the graph keeps both factors for the backward
    assert not _wait_until_released(held, timeout_s=0.05)
    del product
    assert _wait_until_released(held) and len(held) == 2
