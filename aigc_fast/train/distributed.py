"""Data-parallel training under torchrun: one process per GPU (NCCL) or per CPU worker
(gloo). Outside torchrun (no WORLD_SIZE, or 1) everything here is a no-op."""

from __future__ import annotations

import os
import pickle
from typing import Any, Dict, List

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


class Group:
    """This process's place in the run: rank, world size, and the device it trains on."""

    def __init__(self, device: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = 0
        self.device = torch.device(device)
        self._held: tuple = ()  # see _collective
        if self.world == 1:
            return
        cuda = self.device.type == "cuda"
        if not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo")
        self.rank = dist.get_rank()
        if cuda:  # torchrun's LOCAL_RANK picks this process's GPU
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", self.rank)))
            torch.cuda.set_device(self.device)

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """The process that writes files (checkpoints, metrics, samples) and shows progress."""
        return self.rank == 0

    def wrap(self, module: nn.Module) -> nn.Module:
        """DistributedDataParallel around module when distributed (gradients averaged over
        processes in backward; BatchNorm statistics stay per process, as in DCGAN's DDP
        examples, with rank 0's running statistics broadcast at each forward)."""
        if not self.distributed:
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)

    def mean(self, values: Dict[str, float]) -> Dict[str, float]:
        """The mean over processes of each value (a NaN anywhere is a NaN everywhere, so every
        process stops at the same step)."""
        if not self.distributed:
            return values
        t = torch.tensor(list(values.values()), dtype=torch.float64, device=self._comm_device)
        self._collective(dist.all_reduce, t)
        return dict(zip(values, (t / self.world).tolist()))

    def gather(self, obj: Any) -> List[Any]:
        """obj from every process, in rank order (on every process): pickled, as
        all_gather_object does, but through tensors this object keeps (_collective)."""
        if not self.distributed:
            return [obj]
        data = torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8).to(self._comm_device)
        size = torch.tensor([data.numel()], device=self._comm_device)
        sizes = [torch.empty_like(size) for _ in range(self.world)]
        self._collective(dist.all_gather, sizes, size)
        longest = max(int(s) for s in sizes)
        padded = torch.zeros(longest, dtype=torch.uint8, device=self._comm_device)
        padded[:data.numel()] = data
        out = [torch.empty_like(padded) for _ in range(self.world)]
        self._collective(dist.all_gather, out, padded, keep=(size, sizes))
        return [pickle.loads(o[:int(n)].cpu().numpy().tobytes()) for o, n in zip(out, sizes)]

    def _collective(self, op, *tensors, keep: tuple = ()) -> None:
        """op(*tensors), with the tensors referenced from here until the next collective.
        Gloo's worker thread drops its reference to a finished collective after the caller
        has moved on; if that reference were the last, freeing the tensors would need the
        GIL, and a process already exiting then aborts ("terminate called without an
        active exception": 1 run in ~10 of a 2-process job ended so). Held here, the
        tensors are freed by Python itself, long after the worker let go."""
        op(*tensors)
        self._held = (*keep, *tensors)

    def close(self) -> None:
        """Ends the distributed run: the process group this process joined is destroyed
        (torch asks for it before exit). A no-op outside torchrun."""
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()

    @property
    def _comm_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")
