"""Data-parallel training under torchrun: one process per GPU (NCCL) or per CPU worker
(gloo). Outside torchrun (no WORLD_SIZE, or 1) everything here is a no-op."""

from __future__ import annotations

import atexit
import os
import pickle
import sys
import time
import warnings
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
        self._held: List[torch.Tensor] = []  # see _collective
        if self.world == 1:
            return
        cuda = self.device.type == "cuda"
        if not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo")
        self.rank = dist.get_rank()
        # A script that ends with destroy_process_group() alone, or with nothing, gets the
        # wait of close() too, before the interpreter shuts down (this keeps the Group, a
        # few small tensors, until then).
        atexit.register(self._wait_for_backend)
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
        """op(*tensors). The tensors of the latest collective (and keep) stay referenced
        here, set before the call so that one that raises is covered too: close() (or, at
        exit, the atexit hook) waits until the backend has let go of them. They stay
        referenced after that, so that with an older torch, whose reference counts do not
        show C++ holders, the backend's thread still never frees their Python objects."""
        flat = [t for item in (*keep, *tensors) for t in (item if isinstance(item, list) else [item])]
        self._held = list({id(t): t for t in flat}.values())
        op(*tensors)

    def close(self) -> None:
        """Ends the distributed run: once the backend's threads have let go of the last
        collective's tensors (_wait_until_released), the process group this process joined
        is destroyed (torch asks for it before exit). A no-op outside torchrun."""
        if self.distributed and dist.is_initialized():
            self._wait_for_backend()
            dist.destroy_process_group()

    def _wait_for_backend(self) -> None:
        if self._held and not _wait_until_released(self._held):
            warnings.warn("aigc_fast: the distributed backend still held the last collective's tensors after 5 s; "
                          "if this process aborts at exit ('terminate called without an active exception'), "
                          "that is why", RuntimeWarning, stacklevel=2)

    @property
    def _comm_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")


def _wait_until_released(tensors: List[torch.Tensor], timeout_s: float = 5.0) -> bool:
    """Waits (at most timeout_s) until no C++ code holds the tensors any more; True if none
    does. tensors: distinct tensors that this list alone references in Python (another
    reference, or a tensor twice, reads as held: the wait then runs to the timeout).

    Why: in recent torch (2.13 and 2.14 here) a tensor that C++ holds (gloo's worker thread
    keeps a finished collective's work item a moment after the caller has moved on) holds
    a reference to its Python object, and the thread that lets go last drops that
    reference under the GIL. If the process has begun to shut down by then (past its atexit callbacks), Python
    ends that thread inside C++ code and the process aborts: "terminate called without an
    active exception" (1 run in ~10 of a 2-process job; the stack went
    ProcessGroupGloo::runLoop, TensorImpl::decref_pyobject, PyEval_AcquireThread). So a
    tensor is still held while its reference count is above that of a fresh tensor held
    the same way (an entry of the list, the call's argument). Where the counts do not show
    C++ holders (older torch) this returns at once; the tensors there only need to stay
    referenced from Python, as Group keeps them."""
    tensors.append(torch.empty(0))  # the baseline: no collective touched it
    try:
        deadline = time.monotonic() + timeout_s
        while any(sys.getrefcount(tensors[i]) > sys.getrefcount(tensors[-1]) for i in range(len(tensors) - 1)):
            if time.monotonic() > deadline:
                return False
            time.sleep(1e-4)  # without the GIL, so the thread can take it
        return True
    finally:
        tensors.pop()
