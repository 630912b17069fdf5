"""A training step replayed as one CUDA graph.

On a GPU these models' steps are bound by the host, not the kernels: the ~300 kernel
launches of a DCGAN 64x64 step and the Python, dispatcher and autograd work around them
took ~10 ms on an H200 for ~3-4 ms of kernel time (bench/profile_step.py). Capturing the
whole step once (forward, losses, backward, optimizer steps) and replaying it launches it
as one graph, which leaves the kernels' time.

What a replay needs, and how the trainers give it:
- the same addresses every step: the batch is copied into a static input, and parameters,
  gradients and optimizer state stay where they are (Adam with capturable=True keeps its
  step count on the device);
- no host synchronization inside the step: the step returns its losses as tensors, read
  after the replay;
- a few eager steps first, on a side stream (as torch.cuda.graph asks), so the lazy work
  (optimizer state, cuDNN's autotuning) is done before the capture;
- fresh random numbers per replay: PyTorch's CUDA generator gives captured random ops
  graph-safe Philox offsets, which advance per replay; aigc_fast's reparameterize keys its
  kernel with a (seed, offset) pair that a captured torch.randint draws on the device, so
  the replayed randint hands it a fresh pair each time.

A batch of another shape (from a caller's own loop; fit's batches all have one) runs
eagerly; it writes the same parameters and optimizer state, so the graph carries on from it.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

import torch

Losses = Dict[str, torch.Tensor]

WARMUP_STEPS = 3  # eager steps before the capture


class GraphedStep:
    """step(images) -> losses, captured after WARMUP_STEPS eager calls and replayed after."""

    def __init__(self, step: Callable[[torch.Tensor], Losses]):
        self.step = step
        self.reset()

    def reset(self) -> None:
        """Forget the graph (after the parameters or optimizer state were replaced, as
        loading a checkpoint does): the next steps warm up and capture again."""
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.static_images: Optional[torch.Tensor] = None
        self.static_losses: Optional[Losses] = None
        self.eager_steps = 0

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def __call__(self, images: torch.Tensor) -> Losses:
        if self.graph is None and self.eager_steps >= WARMUP_STEPS:
            self._capture(images)
        if self.graph is not None and _same_layout(images, self.static_images):
            self.static_images.copy_(images)
            self.graph.replay()
            return self.static_losses
        return self._eager(images)

    def _eager(self, images: torch.Tensor) -> Losses:
        side = torch.cuda.Stream(images.device)
        side.wait_stream(torch.cuda.current_stream(images.device))
        with torch.cuda.stream(side):
            losses = self.step(images)
        torch.cuda.current_stream(images.device).wait_stream(side)
        self.eager_steps += 1
        return losses

    def _capture(self, images: torch.Tensor) -> None:
        static = torch.empty_strided(images.shape, images.stride(), dtype=images.dtype, device=images.device)
        static.copy_(images)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                losses = self.step(static)
        except Exception as error:
            raise RuntimeError(
                f"capturing the training step as a CUDA graph failed ({type(error).__name__}: {error}); "
                "train without it: cuda_graph=False in the config, or --no-cuda-graph") from error
        self.graph, self.static_images, self.static_losses = graph, static, losses


def _same_layout(a: torch.Tensor, b: Optional[torch.Tensor]) -> bool:
    return b is not None and a.shape == b.shape and a.stride() == b.stride() and a.dtype == b.dtype \
        and a.device == b.device
